"""``tokenizers-mm export --format transformers``: a speech codec trained or imported here -> a ``transformers`` folder
that ``EncodecModel`` / ``DacModel`` / ``MimiModel`` / ``Xcodec2Model`` ``.from_pretrained`` load, for code that does not use this package.

The reference model is built from the converted config, loaded with the converted tensors (every tensor must find
its place: a codec the reference cannot express is refused before anything is written) and saved with its own
``save_pretrained`` into a staging folder that is swapped in when complete.
"""

from __future__ import annotations

import argparse
import os

import torch

from . import CONVERTERS, ConversionError, reference_state

# converter name -> (config class, model class) in transformers
REFERENCE_CLASSES = {"encodec": ("EncodecConfig", "EncodecModel"), "dac": ("DacConfig", "DacModel"),
                     "mimi": ("MimiConfig", "MimiModel"), "xcodec2": ("Xcodec2Config", "Xcodec2Model")}
# our codec architecture -> the converters that may express it
ARCHITECTURE_CONVERTERS = {"speech/rvq": ("encodec", "dac", "mimi"), "speech/xcodec2": ("xcodec2",)}


def pick_architecture(codec: torch.nn.Module) -> str:
    """The one reference architecture that can express ``codec`` (its arch decides), or a one-line error."""
    import importlib

    reasons = []
    for name in ARCHITECTURE_CONVERTERS[codec.architecture]:
        try:
            importlib.import_module(CONVERTERS[name]).reference_config(codec.arch)
            return name
        except ConversionError as exc:
            reasons.append(f"{name}: {exc}")
    raise ConversionError("this codec matches no transformers architecture (" + "; ".join(reasons) + ")")


def reference_model(name: str, codec: torch.nn.Module) -> torch.nn.Module:
    """The ``transformers`` model of architecture ``name`` holding ``codec``'s weights (eval mode)."""
    import transformers

    ref_cfg, tensors = reference_state(name, codec)
    cfg_cls, model_cls = (getattr(transformers, n) for n in REFERENCE_CLASSES[name])
    kwargs = {k: v for k, v in ref_cfg.items() if k not in ("model_type", "architectures")}
    model = model_cls(cfg_cls(**kwargs))
    result = model.load_state_dict(tensors, strict=False)
    own_persistent = set(model.state_dict())
    missing = sorted(set(result.missing_keys) & own_persistent)
    if missing or result.unexpected_keys:
        raise ConversionError(f"the {name} model does not take this codec's weights: missing {missing[:3]}, "
                              f"unexpected {sorted(result.unexpected_keys)[:3]}")
    return model.eval()


def export_transformers(codec: torch.nn.Module, out: str, name: str | None = None, overwrite: bool = False,
                        sources: list[str] | tuple[str, ...] = ()) -> str:
    """Write ``codec`` as a ``transformers`` folder ``out``; returns the architecture name used."""
    from ...io import OutputError, OutputFolder

    if getattr(codec, "architecture", None) not in ARCHITECTURE_CONVERTERS:
        raise ConversionError(f"--format transformers writes speech codecs; this is a {getattr(codec, 'architecture', type(codec).__name__)}")
    allowed = ARCHITECTURE_CONVERTERS[codec.architecture]
    if name is not None and name not in allowed:
        raise ConversionError(f"a {codec.architecture} codec is written as {' / '.join(allowed)}, not {name}")
    name = name or pick_architecture(codec)
    model = reference_model(name, codec)
    try:
        folder = OutputFolder(out, {"command": "export", "format": "transformers", "architecture": name},
                              overwrite=overwrite, identity=("command", "format"), inputs=sources).check()
    except OutputError as exc:
        raise ConversionError(str(exc)) from exc
    try:
        model.save_pretrained(folder.path)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    return name


def run_cli(a: argparse.Namespace) -> int:
    """``export --format transformers``: ``--ckpt`` is a training checkpoint or an export folder."""
    from ...export import is_export_dir, load_codec, read_export_config, rebuild_checkpoint_model

    if os.path.isdir(a.ckpt) and is_export_dir(a.ckpt):
        read_export_config(a.ckpt, modality="speech")
        codec, _ = load_codec(a.ckpt, modality="speech")
        sources = [os.path.join(a.ckpt, "model.safetensors")]
    else:
        from ...checkpointing import checkpoint_file, read_checkpoint

        ckpt = checkpoint_file(a.ckpt)
        model = rebuild_checkpoint_model(read_checkpoint(ckpt), ckpt)
        if not hasattr(model, "inference_codec"):
            raise ConversionError(f"{ckpt!r} holds no exportable codec")
        codec = model.inference_codec(not a.no_ema)
        sources = [ckpt]
    name = export_transformers(codec, a.out, a.architecture, overwrite=a.overwrite, sources=sources)
    cls = REFERENCE_CLASSES[name][1]
    print(f"wrote a transformers {cls} folder to {a.out} (load it with transformers.{cls}.from_pretrained)")
    return 0
