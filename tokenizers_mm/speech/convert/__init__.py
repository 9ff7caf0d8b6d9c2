"""Import published codecs in the ``transformers`` layout into :class:`~tokenizers_mm.speech.codec.SpeechCodec`
and write them back (``tokenizers-mm import`` / ``export --format transformers``).

One module per source architecture (``encodec``, ``dac``, ``mimi``, ``xcodec2``), each giving: ``MODEL_TYPE`` (``config.json``'s
``model_type``), ``codec_arch`` (reference config -> our constructor arguments), ``pairs`` (tensor correspondences,
:mod:`.common`), ``codebook_tensors`` / ``reference_codebooks`` (the quantizer's codebooks each way) and
``reference_config`` (our arch -> reference config). Our codec runs its own modules with the mapped weights.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

from .common import (
    ConversionError,
    check_unused,
    load_into,
    read_reference,
    to_ours,
    to_reference,
    used_names,
)

# name given to --from / --format -> module implementing it
CONVERTERS = {"encodec": "tokenizers_mm.speech.convert.encodec", "dac": "tokenizers_mm.speech.convert.dac",
              "mimi": "tokenizers_mm.speech.convert.mimi", "xcodec2": "tokenizers_mm.speech.convert.xcodec2"}
# architectures named in the issue that no converter covers yet
PLANNED: tuple[str, ...] = ()


def converter(name: str) -> ModuleType:
    """The converter module of ``name`` (one-line error for an unknown or not yet supported architecture)."""
    if name in PLANNED:
        raise ConversionError(f"--from {name}: importing {name} is not implemented yet; available: {sorted(CONVERTERS)}")
    if name not in CONVERTERS:
        raise ConversionError(f"unknown codec architecture {name!r}; available: {sorted(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name])




def import_reference(name: str, folder: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(SpeechCodec in eval mode, the reference config.json)`` of the ``transformers`` folder ``folder``."""
    from ..codec import SpeechCodec

    conv = converter(name)
    ref_cfg, state = read_reference(folder, conv.MODEL_TYPE)
    if hasattr(conv, "normalize_reference_state"):
        state = conv.normalize_reference_state(state)
    arch = conv.codec_arch(ref_cfg, folder)
    # a converter whose architecture is not a SpeechCodec builds its own codec class (X-Codec 2)
    codec = conv.build_codec(arch) if hasattr(conv, "build_codec") else SpeechCodec(**arch)
    pairs = conv.pairs(arch)
    try:
        tensors = to_ours(pairs, state)
        books, used = conv.codebook_tensors(state, arch)
    except ConversionError as exc:
        raise ConversionError(f"{folder}: {exc}") from exc
    check_unused(state, used_names(pairs, state) | used, folder)
    load_into(codec, {**tensors, **books}, folder)
    return codec.eval(), ref_cfg


def reference_state(name: str, codec: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config dict, tensors)`` of ``codec`` in the ``transformers`` layout of architecture ``name``."""
    conv = converter(name)
    arch = codec.arch
    ref_cfg = conv.reference_config(arch)
    ours = {k: v.detach().float() if v.is_floating_point() else v for k, v in codec.state_dict().items()}
    tensors = to_reference(conv.pairs(arch), ours)
    tensors.update(conv.reference_codebooks(ours, arch))
    return ref_cfg, tensors


__all__ = ["CONVERTERS", "ConversionError", "converter", "import_reference", "reference_state"]
