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

class ExportError(ValueError):
    """An export folder is missing, malformed, from a newer format, or of an unexpected modality."""


def codec_class(architecture: str) -> type[nn.Module]:
    """The codec class of ``architecture`` (a registry entry's; ``ExportError`` for an unknown name)."""
    from .registry import codec_paths, load_attr

    codecs = codec_paths()
    if architecture not in codecs:
        raise ExportError(f"unknown architecture {architecture!r}; this version of tokenizers-mm knows "
                          f"{sorted(codecs)}")
    return load_attr(codecs[architecture])


def input_spec(codec: nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
    """The ``inputs`` entry of an export of ``codec``: its modality's (registry) input spec."""
    from .registry import spec

    return spec(codec.modality).input_spec(codec, data_hparams)


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
    from .registry import canonical

    tokens = dict(codec.token_spec())
    bits = _bits(tokens["codebook_sizes"])
    tokens["bits_per_token"] = round(bits, 4)
    if tokens.get("per") == "second":  # streams (audio): the rate per second of all codebooks
        tokens["bytes_per_second"] = round(tokens["tokens_per_sample"] * bits / 8, 3)
        tokens["kbps"] = round(tokens["tokens_per_sample"] * bits / 1000, 4)
    else:
        tokens["bytes_per_sample"] = math.ceil(tokens["tokens_per_sample"] * bits / 8)
    cfg = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "modality": canonical(codec.modality),
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
    """Write ``codec`` (an ``nn.Module`` of an architecture in :mod:`tokenizers_mm.registry`) as an export folder;
    returns its config.

    ``overwrite`` replaces an ``out`` that holds anything but an earlier export (see :func:`write_dir_atomic`);
    ``sources``: the files it was made from, which ``out`` may not replace.
    """
    from safetensors.torch import save

    from .io import file_fingerprint
    from .registry import codec_paths

    if getattr(codec, "architecture", None) not in codec_paths():
        raise ExportError(f"{type(codec).__name__} is not an exportable codec (known: {sorted(codec_paths())})")
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in codec.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "architecture": codec.architecture})
    sha = hashlib.sha256(blob).hexdigest()
    cfg = build_config(codec, inputs, training or {}, sha, evaluation)
    card = model_card(cfg)
    made_by = {"modality": cfg["modality"], "model": {"sha256": sha, "architecture": codec.architecture},
               "inputs": {"checkpoint": (training or {}).get("checkpoint"), "fingerprint": file_fingerprint(sources)},
               "settings": {"weights": (training or {}).get("weights")}}
    write_dir_atomic(out, {WEIGHTS_FILE: blob, CONFIG_FILE: (json.dumps(cfg, indent=2) + "\n").encode(),
                           CARD_FILE: card.encode()}, made_by, overwrite=overwrite, sources=sources)
    return cfg


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
    from .data.samples import OPTIONS_SECTION
    from .registry import canonical, spec

    raw = read_checkpoint(ckpt)
    model = rebuild_checkpoint_model(raw, ckpt)
    try:
        codec = model.inference_codec(use_ema)
    except (AttributeError, NotImplementedError) as exc:
        raise ExportError(f"{raw.get(CLASS_KEY)} in {ckpt!r} has no exportable codec") from exc
    has_ema = getattr(model, "ema", None) is not None
    data_hp = raw.get("datamodule_hyper_parameters") or {}
    modality = spec(codec.modality)
    if "modality" in data_hp and not modality.trains_on_data(data_hp["modality"]):
        raise ExportError(f"{ckpt!r} trained a {modality.name} codec on {data_hp['modality']} data")
    hp = dict(raw.get("hyper_parameters") or {})
    training = {
        "module": raw.get(CLASS_KEY), "checkpoint": os.path.abspath(ckpt), "global_step": raw.get("global_step"),
        "epoch": raw.get("epoch"), "weights": "ema" if has_ema and use_ema else "raw",
        "optimizer": hp.get("optimizer"), "loss": hp.get("loss", hp.get("pixel_loss")),
        "ema_decay": hp.get("ema_decay"),
        # the data layer's settings: its general ones and the options section of the modality it read
        "data": {k: data_hp.get(k) for k in ("modality", "train_urls", "val_urls", "batch_size",
                                             OPTIONS_SECTION.get(canonical(str(data_hp.get("modality"))))) if k in data_hp},
    }
    evaluation = _evaluation_from_report(report) if report else None
    return export_codec(codec, out, modality.input_spec(codec, data_hp), training, evaluation,
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
    from .registry import canonical

    if modality is not None and canonical(cfg["modality"]) != canonical(modality):
        raise ExportError(f"{path!r} is an export of a {canonical(cfg['modality'])} tokenizer; expected a "
                          f"{canonical(modality)} "
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
    from .registry import spec

    tr = cfg.get("training") or {}
    lines = [f"# {cfg['modality']} tokenizer ({cfg['architecture']})", "",
             f"Exported by {cfg['created']['by']} (torch {cfg['created']['torch']}) on {cfg['created']['time']}.",
             "Files: `config.json` (architecture, token layout, input convention), `model.safetensors` "
             f"({cfg['weights']['parameters']:,} parameters, {tr.get('weights', 'raw')} weights, sha256 "
             f"`{cfg['weights']['sha256'][:16]}...`), this card. Nothing is pickled.", "",
             *spec(cfg["modality"]).card_lines(cfg), "", "## Training", ""]
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
