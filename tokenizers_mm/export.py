"""Exported tokenizers: a self-describing folder that loads without Lightning or the training code.

An export folder holds four files:

- ``config.json``: format name and version, modality, architecture name and its constructor arguments
  (quantizer spec included), the token layout (tokens per sample, codebook sizes, bits and bytes), the
  input convention (resolution or sample rate, value range, preprocessing), how it was trained and the
  sha256 of the weights;
- ``model.safetensors``: the codec's ``state_dict`` (EMA weights when the run kept an EMA): encoder,
  quantizer and decoder only; no optimizer, discriminator or loss network;
- ``README.md``: a model card (what it is, how to use it, how it was trained, its evaluation numbers);
- ``made_by.json``: what wrote the folder (:mod:`tokenizers_mm.io`), so a later export replaces it only when it
  holds nothing else.

Nothing in an export is pickled. :func:`export_checkpoint` reads a Lightning checkpoint with
``weights_only=True``; :func:`load_codec` rebuilds the codec from JSON and safetensors and always verifies the
weights against the config.

A folder is written next to its final name and renamed into place, so an interrupted export never
leaves a half-written folder under the final name; an earlier export there stays intact until the
new one is complete, and a folder holding anything else is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from typing import Any

import torch
from torch import nn

FORMAT_NAME = "tokenizers-mm-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)

# architecture name -> "module:Class" of the nn.Module that an export of it rebuilds
CODECS = {
    "image/onedim": "tokenizers_mm.image.codec1d:OneDImageCodec",
    "image/grid": "tokenizers_mm.image.grid_codec:GridImageCodec",
    "image/flow": "tokenizers_mm.image.flow_codec:FlowImageCodec",
    "shape/occupancy": "tokenizers_mm.shape.codec:ShapeCodec",
    "speech/rvq": "tokenizers_mm.speech.codec:SpeechCodec",
    "speech/xcodec2": "tokenizers_mm.speech.xcodec2_codec:XCodec2Codec",
    "prior/ar": "tokenizers_mm.prior.model:TokenPrior",
}


class ExportError(ValueError):
    """An export folder is missing, malformed, from a newer format, or of an unexpected modality."""


def codec_class(architecture: str) -> type[nn.Module]:
    """The codec class of ``architecture`` (``ExportError`` for an unknown name)."""
    if architecture not in CODECS:
        raise ExportError(f"unknown architecture {architecture!r}; this version of tokenizers-mm knows "
                          f"{sorted(CODECS)}")
    module_name, _, cls_name = CODECS[architecture].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def decode_options(codec: nn.Module) -> set[str]:
    """Names of the keyword options a codec's ``decode`` accepts besides the ids (e.g. ``steps``, ``seed``)."""
    import inspect

    params = inspect.signature(codec.decode).parameters
    return {n for n, p in params.items() if n != "ids" and p.kind is not p.VAR_KEYWORD}


# ---- writing --------------------------------------------------------------------------------------
def is_export_dir(path: str) -> bool:
    """True when ``path`` holds a ``config.json`` of this export format."""
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            return json.load(f).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _legacy_export(path: str) -> bool:
    """An export written before ``made_by.json`` existed, holding nothing but its own files."""
    from .io import list_files

    return is_export_dir(path) and set(list_files(path)) <= set(EXPORT_FILES)


def write_dir_atomic(out: str, files: dict[str, bytes], made_by: dict[str, Any] | None = None,
                     overwrite: bool = False, sources: list[str] | tuple[str, ...] = ()) -> str:
    """Write ``files`` (name -> bytes) as export folder ``out``: staging folder beside it, fsync, swap.

    An existing ``out`` is replaced only when it holds an earlier export and nothing else (or is empty), or when
    ``overwrite`` is set; anything else raises ``ExportError`` and is left untouched. An ``out`` that is or holds one
    of ``sources`` (the checkpoint, the report) is refused even with ``overwrite``.
    """
    from .io import OutputError, OutputFolder, write_bytes_atomic

    try:
        folder = OutputFolder(out, {"command": "export", **(made_by or {})}, overwrite=overwrite,
                              legacy=_legacy_export, identity=("command",), inputs=sources).check()
    except OutputError as exc:
        raise ExportError(str(exc)) from exc
    try:
        for name, data in files.items():
            write_bytes_atomic(os.path.join(folder.path, name), data)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    return folder.out


def _bits(codebook_sizes: list[int]) -> float:
    return sum(math.log2(n) for n in codebook_sizes)


def build_config(codec: nn.Module, inputs: dict[str, Any], training: dict[str, Any],
                 weights_sha256: str, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of an export of ``codec`` (see the module docstring)."""
    from . import __version__

    tokens = dict(codec.token_spec())
    bits = _bits(tokens["codebook_sizes"])
    tokens["bits_per_token"] = round(bits, 4)
    if tokens.get("per") == "second":  # streams (audio): the rate per second of all codebooks
        tokens["bytes_per_second"] = round(tokens["tokens_per_sample"] * bits / 8, 3)
        tokens["kbps"] = round(tokens["tokens_per_sample"] * bits / 1000, 4)
    else:
        tokens["bytes_per_sample"] = math.ceil(tokens["tokens_per_sample"] * bits / 8)
    cfg = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "modality": codec.modality,
        "architecture": codec.architecture, "arch": codec.arch, "tokens": tokens, "inputs": inputs,
        "training": training, "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256,
                                          "parameters": sum(p.numel() for p in codec.parameters()),
                                          "dtype": "float32"},
        "created": {"by": f"tokenizers-mm {__version__}", "torch": torch.__version__,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    if evaluation:
        cfg["evaluation"] = evaluation
    return cfg


def export_codec(codec: nn.Module, out: str, inputs: dict[str, Any], training: dict[str, Any] | None = None,
                 evaluation: dict[str, Any] | None = None, overwrite: bool = False,
                 sources: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Write ``codec`` (an ``nn.Module`` registered in :data:`CODECS`) as an export folder; returns its config.

    ``overwrite`` replaces an ``out`` that holds anything but an earlier export (see :func:`write_dir_atomic`);
    ``sources``: the files it was made from, which ``out`` may not replace.
    """
    from safetensors.torch import save

    from .io import file_fingerprint

    if getattr(codec, "architecture", None) not in CODECS:
        raise ExportError(f"{type(codec).__name__} is not an exportable codec (known: {sorted(CODECS)})")
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in codec.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "architecture": codec.architecture})
    sha = hashlib.sha256(blob).hexdigest()
    cfg = build_config(codec, inputs, training or {}, sha, evaluation)
    card = model_card(cfg)
    made_by = {"modality": codec.modality, "model": {"sha256": sha, "architecture": codec.architecture},
               "inputs": {"checkpoint": (training or {}).get("checkpoint"), "fingerprint": file_fingerprint(sources)},
               "settings": {"weights": (training or {}).get("weights")}}
    write_dir_atomic(out, {WEIGHTS_FILE: blob, CONFIG_FILE: (json.dumps(cfg, indent=2) + "\n").encode(),
                           CARD_FILE: card.encode()}, made_by, overwrite=overwrite, sources=sources)
    return cfg


def _image_inputs(codec: nn.Module, data_hp: dict[str, Any]) -> dict[str, Any]:
    img = data_hp.get("image") or {}
    size = int(codec.image_size)
    return {"kind": "image", "channels": 3, "image_size": size, "layout": "[B, 3, H, W]",
            "range": [-1.0, 1.0], "from_uint8": "x / 127.5 - 1",
            "preprocess": {"resize_shorter_side": int(img.get("val_resize") or size), "crop": "center"}}


def _mesh_inputs(codec: nn.Module, data_hp: dict[str, Any]) -> dict[str, Any]:
    mesh = data_hp.get("mesh") or {}
    return {"kind": "mesh", "num_surface": int(mesh.get("num_surface", 2048)), "layout": "[B, N, 6] xyz + unit normal",
            "normalize": {"padding": 0.05, "frame": "centered, longest side scaled into [-1 + padding, 1 - padding]"},
            "repair": "trimesh repair of small holes; meshes that stay open are an error",
            "surface_sampling": "area-uniform points on the normalized mesh, seed 0"}


def _audio_inputs(codec: nn.Module, data_hp: dict[str, Any]) -> dict[str, Any]:
    audio = data_hp.get("audio") or {}
    return {"kind": "audio", "sample_rate": int(codec.sample_rate), "channels": 1, "layout": "[B, 1, T]",
            "range": [-1.0, 1.0], "hop_length": int(codec.hop_length), "causal": bool(codec.causal),
            "preprocess": {"mono": "mean of the channels", "resample": "torchaudio sinc interpolation",
                           "loudness_lufs": audio.get("loudness_lufs")}}


def _prior_inputs(codec: nn.Module, data_hp: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "tokens", "layout": codec.layout, "tokenizer": codec.tokenizer,
            "frames": "[B, F, D]: 1D / multi-scale ids are F frames of one code, RVQ ids [n_q, F] are F frames of n_q"}


INPUT_SPECS = {"image": _image_inputs, "mesh": _mesh_inputs, "audio": _audio_inputs, "prior": _prior_inputs}


def _evaluation_from_report(path: str) -> dict[str, Any]:
    """The ``evaluation`` entry of config.json from a report.json (a version-1 report is converted)."""
    from .eval.report import evaluation_for_export, read_report

    return evaluation_for_export(read_report(path, "--report"), path)


def rebuild_checkpoint_model(raw: dict[str, Any], ckpt: str) -> nn.Module:
    """The tokenizer module of an already read checkpoint; one-line ``ValueError`` naming ``ckpt`` when this version
    of the code cannot rebuild it (unknown hyperparameters, or weights that do not fit the model they describe)."""
    from .checkpointing import build_tokenizer

    try:
        return build_tokenizer(raw, ckpt)
    except (TypeError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ValueError(f"checkpoint {ckpt!r} does not rebuild with this tokenizers-mm "
                         f"({type(exc).__name__}: {detail})") from exc


def export_checkpoint(ckpt: str, out: str, report: str | None = None, use_ema: bool = True,
                      overwrite: bool = False) -> dict[str, Any]:
    """Export the tokenizer of Lightning checkpoint ``ckpt`` into folder ``out``; returns its config.

    ``report``: a ``report.json`` of ``tokenizers-mm evaluate`` to record in the config and model card.
    ``use_ema``: export the EMA weights when the run kept them (the default), else the raw weights.
    ``overwrite``: replace an ``out`` that holds anything but an earlier export.
    """
    from .checkpointing import CLASS_KEY, read_checkpoint

    raw = read_checkpoint(ckpt)
    model = rebuild_checkpoint_model(raw, ckpt)
    if not hasattr(model, "inference_codec"):
        raise ExportError(f"{raw.get(CLASS_KEY)} in {ckpt!r} has no exportable codec")
    has_ema = getattr(model, "ema", None) is not None
    codec = model.inference_codec(use_ema)
    data_hp = raw.get("datamodule_hyper_parameters") or {}
    if data_hp.get("modality", codec.modality) != ("tokens" if codec.modality == "prior" else codec.modality):
        raise ExportError(f"{ckpt!r} trained a {codec.modality} codec on {data_hp['modality']} data")
    hp = dict(raw.get("hyper_parameters") or {})
    training = {
        "module": raw.get(CLASS_KEY), "checkpoint": os.path.abspath(ckpt), "global_step": raw.get("global_step"),
        "epoch": raw.get("epoch"), "weights": "ema" if has_ema and use_ema else "raw",
        "optimizer": hp.get("optimizer"), "loss": hp.get("loss", hp.get("pixel_loss")),
        "ema_decay": hp.get("ema_decay"),
        "data": {k: data_hp.get(k) for k in ("modality", "train_urls", "val_urls", "batch_size", "image", "mesh", "audio")
                 if k in data_hp and (k not in ("image", "mesh", "audio") or data_hp.get("modality") == k)},
    }
    evaluation = _evaluation_from_report(report) if report else None
    return export_codec(codec, out, INPUT_SPECS[codec.modality](codec, data_hp), training, evaluation,
                        overwrite=overwrite, sources=[ckpt, *([report] if report else [])])


# ---- reading --------------------------------------------------------------------------------------
def read_export_config(path: str, modality: str | None = None) -> dict[str, Any]:
    """Read and validate ``config.json`` of export folder ``path``.

    Raises ``ExportError`` naming what is wrong: not a folder, no ``config.json`` (not an export), another
    file format, a format version newer than this code reads, an unknown architecture, or a modality other
    than ``modality`` when one is expected.
    """
    if not os.path.isdir(path):
        raise ExportError(f"{path!r} is not a folder; expected an export folder written by "
                          "`tokenizers-mm export` (config.json + model.safetensors)")
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        hint = " (it looks like a training run: export a checkpoint with `tokenizers-mm export`)" \
            if os.path.isdir(os.path.join(path, "checkpoints")) else ""
        raise ExportError(f"{path!r} is not a tokenizers-mm export: it has no {CONFIG_FILE}{hint}")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except ValueError as exc:
        raise ExportError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT_NAME:
        raise ExportError(f"{cfg_path} is not a tokenizers-mm export config (expected \"format\": "
                          f"\"{FORMAT_NAME}\", got {cfg.get('format') if isinstance(cfg, dict) else cfg!r})")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ExportError(f"{path!r} has export format version {version!r}; this tokenizers-mm reads versions "
                          f"1..{FORMAT_VERSION}: upgrade tokenizers-mm to load it")
    for key in ("modality", "architecture", "arch", "tokens", "inputs"):
        if key not in cfg:
            raise ExportError(f"{cfg_path} lacks the required entry {key!r}")
    codec_class(cfg["architecture"])  # unknown architecture -> ExportError
    if modality is not None and cfg["modality"] != modality:
        raise ExportError(f"{path!r} is an export of a {cfg['modality']} tokenizer; expected a {modality} "
                          "tokenizer")
    return cfg


def load_codec(path: str, modality: str | None = None, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the codec of export folder ``path`` in eval mode on ``device``; returns ``(codec, config)``.

    Always verified: the weights' sha256 must equal the config's (a damaged or swapped file is an error), the
    config's ``arch`` must build its architecture, and every tensor must match the built codec in name and shape.
    Every failure is an ``ExportError`` naming the file and the entry.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    cfg = read_export_config(path, modality)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ExportError(f"{path!r} has no {WEIGHTS_FILE}")
    with open(weights, "rb") as f:
        blob = f.read()
    want = (cfg.get("weights") or {}).get("sha256") if isinstance(cfg.get("weights"), dict) else None
    if not isinstance(want, str) or len(want) != 64:
        raise ExportError(f"{os.path.join(path, CONFIG_FILE)} records no sha256 of its weights (weights.sha256); "
                          "an export cannot be verified without it")
    if hashlib.sha256(blob).hexdigest() != want:
        raise ExportError(f"{weights} does not match the sha256 recorded in {CONFIG_FILE} (damaged or replaced)")
    try:
        state = load(blob)
    except SafetensorError as exc:
        raise ExportError(f"{weights} is not a readable safetensors file: {exc}") from exc
    if not isinstance(cfg["arch"], dict):
        raise ExportError(f"{os.path.join(path, CONFIG_FILE)}: 'arch' must be an object of constructor arguments, "
                          f"got {type(cfg['arch']).__name__}")
    try:
        codec = codec_class(cfg["architecture"])(**cfg["arch"])
    except ExportError:
        raise
    except Exception as exc:  # any constructor failure means the config does not describe a codec
        raise ExportError(f"{os.path.join(path, CONFIG_FILE)}: 'arch' does not build {cfg['architecture']} "
                          f"({type(exc).__name__}: {exc})") from exc
    own = codec.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ExportError(f"{weights} does not fit architecture {cfg['architecture']} of {CONFIG_FILE}: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ExportError(f"{weights} does not fit the 'arch' of {CONFIG_FILE}: {name} is "
                              f"{list(tensor.shape)} in the weights, {list(own[name].shape)} in the configured model")
    codec.load_state_dict(state, strict=True)
    return codec.to(device).eval(), cfg


# ---- model card -----------------------------------------------------------------------------------
def model_card(cfg: dict[str, Any]) -> str:
    """Markdown model card of an export config."""
    t, tr, inp = cfg["tokens"], cfg.get("training") or {}, cfg["inputs"]
    lines = [f"# {cfg['modality']} tokenizer ({cfg['architecture']})", "",
             f"Exported by {cfg['created']['by']} (torch {cfg['created']['torch']}) on {cfg['created']['time']}.",
             "Files: `config.json` (architecture, token layout, input convention), `model.safetensors` "
             f"({cfg['weights']['parameters']:,} parameters, {tr.get('weights', 'raw')} weights, sha256 "
             f"`{cfg['weights']['sha256'][:16]}...`), this card. Nothing is pickled.", "",
             "## Tokens", "",
             (f"- {t['num_quantizers']} codebooks of {t['codebook_sizes'][0]} codes at {t['frame_rate']:g} frames/s: "
              f"{t['kbps']} kbps with all of them. Any first n codebooks decode (bitrate chosen at decode time): "
              f"{t['bitrates_kbps']} kbps." if t.get("per") == "second" else
              f"- {t['tokens_per_sample']} tokens per sample, codebook size {t['codebook_sizes']}, "
              f"{t['bits_per_token']:.2f} bits per token: {t['bytes_per_sample']} bytes per sample."),
             (None if t.get("per") == "second" else
              "- Any prefix of 1..K tokens decodes (quality rises with the number kept)." if t.get("prefix_decodable")
              else "- Every token is needed to decode (a grid of tokens).")]
    lines = [line for line in lines if line is not None]
    if inp.get("kind") == "mesh":
        lines.append(f"- Input: meshes (obj / ply / stl / glb / off), normalized into [-1, 1]^3, {inp['num_surface']} surface "
                     "points with normals. Any whole number of scales decodes: "
                     f"{t.get('prefix_lengths')} tokens.")
    if inp.get("kind") == "audio":
        lines.append(f"- Input: mono audio `[B, 1, T]` in [-1, 1] at {inp['sample_rate']} Hz (files are mixed to mono "
                     f"and resampled); {'causal: long files are encoded in chunks with the tokens of one pass' if inp.get('causal') else 'non-causal'}.")
    if inp.get("kind") == "image":
        pre = inp["preprocess"]
        lines.append(f"- Input: RGB images `[B, 3, {inp['image_size']}, {inp['image_size']}]` in [-1, 1] "
                     f"(uint8 `x / 127.5 - 1`). Files are resized to a shorter side of {pre['resize_shorter_side']} "
                     f"and center-cropped to {inp['image_size']}.")
    load_line = "tok = pipelines.load(\"THIS_FOLDER\")  # cpu; device=\"cuda\", dtype=torch.bfloat16 also work"
    if inp.get("kind") == "audio":
        lines += ["", "## Use", "", "```python", "import pipelines", "", load_line,
                  "ids = tok.encode(\"clip.wav\")       # int64 [1, n_q, F]; num_tokens=n keeps the first n codebooks",
                  "wave = tok.decode(ids)             # [1, 1, F * hop] in [-1, 1]", "```", "",
                  "```bash", "tokenizers-mm encode --model THIS_FOLDER a.wav b.flac --out tokens.npz --num-tokens 4",
                  "tokenizers-mm decode --model THIS_FOLDER tokens.npz --out recon/", "```", "", "## Training", ""]
    else:
        lines += ["", "## Use", "", "```python", "import pipelines", "", load_line,
                  "ids = tok.encode(images)            # int64 [B, K]; num_tokens=k keeps a prefix",
                  "recon = tok.decode(ids)             # [B, 3, S, S] in [-1, 1]", "```", "",
                  "```bash", "tokenizers-mm encode --model THIS_FOLDER a.png b.jpg --out tokens.npz",
                  "tokenizers-mm decode --model THIS_FOLDER tokens.npz --out recon/",
                  "tokenizers-mm tokenize --model THIS_FOLDER --data shards/ --out token_shards/", "```", "",
                  "## Training", ""]
    if tr.get("imported_from"):
        src = tr["imported_from"]
        lines += [f"- Not trained here: imported by `tokenizers-mm import --from {src.get('architecture')}` from the "
                  f"`transformers` folder `{src.get('folder')}` (model_type `{src.get('model_type')}`, transformers "
                  f"{src.get('transformers_version')}). The same waveform gives the reference model's codes."]
    elif tr:
        lines += [f"- Module `{tr.get('module')}`, {tr.get('global_step')} optimizer steps ({tr.get('epoch')} epochs), "
                  f"{tr.get('weights')} weights.",
                  f"- Data: {json.dumps(tr.get('data'))}",
                  f"- Optimizer: {json.dumps(tr.get('optimizer'))}",
                  f"- Loss: {json.dumps(tr.get('loss'))}",
                  f"- Source checkpoint: `{tr.get('checkpoint')}`"]
    else:
        lines.append("- Not recorded.")
    lines += ["", "## Evaluation", ""]
    ev = cfg.get("evaluation")
    if ev:
        from .eval.report import model_card_section

        lines += model_card_section(ev)
    else:
        lines.append("No evaluation recorded (pass `--report report.json` of `tokenizers-mm evaluate` to export).")
    return "\n".join(lines) + "\n"
