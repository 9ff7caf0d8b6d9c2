"""Reading a ``transformers`` codec folder and moving tensors between its names and :class:`SpeechCodec`'s.

A converter describes its architecture as a list of :class:`Pair` s (our name, the reference's name, how the tensor
is stored on each side); :func:`to_ours` and :func:`to_reference` apply that list in either direction, so import and
``export --format transformers`` share one table. Every problem is a one-line ``ValueError`` / ``FileNotFoundError``
naming the folder, file or tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ConversionError(ValueError):
    """A reference folder that cannot be imported, or a codec that cannot be written in a reference layout."""


@dataclass(frozen=True)
class Pair:
    """One tensor group: ``ours`` / ``ref`` are module prefixes (``conv*`` kinds) or full tensor names (``tensor``).

    kinds: ``tensor`` (copied as is), ``conv_wn`` (weight-normalized conv on both sides: ``.parametrizations.weight
    .original0/1`` and ``.bias``), ``conv_plain`` (our weight-normalized conv, the reference's plain ``.weight``
    and ``.bias``), ``linear_conv`` (our ``nn.Linear``, the reference's 1x1 ``Conv1d``: weight ``[out, in, 1]``),
    ``squeeze`` (full tensor names: our bias-free ``Linear`` weight, the reference's 1x1 conv weight).
    """

    ours: str
    ref: str
    kind: str = "tensor"


def read_reference(folder: str, model_type: str, flag: str = "--weights") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json as a dict, tensors of model.safetensors)`` of a ``transformers`` folder of ``model_type``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {folder!r} is not a folder; expected a transformers model folder "
                                f"(config.json + model.safetensors) of a {model_type} model")
    cfg_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise ConversionError(f"{flag} {folder!r} has no {CONFIG_FILE}; expected a transformers model folder "
                              f"(config.json + model.safetensors) of a {model_type} model")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except ValueError as exc:
        raise ConversionError(f"{cfg_path} is not valid JSON: {exc}") from exc
    found = cfg.get("model_type") if isinstance(cfg, dict) else None
    if found != model_type:
        raise ConversionError(f"{cfg_path} describes a {found!r} model (model_type); --from {model_type} expects "
                              f"model_type {model_type!r}")
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        other = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".safetensors", ".json")) and n != CONFIG_FILE)
        raise ConversionError(f"{flag} {folder!r} has no {WEIGHTS_FILE} (found {other or 'nothing else'}); save the "
                              "model with save_pretrained(..., safe_serialization=True) into one file")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise ConversionError(f"{weights} is not a readable safetensors file: {exc}") from exc
    return cfg, state


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Weight-norm magnitude ``g`` of ``v`` along dim 0 (torch's default for convolutions): ``[out, 1, 1]``."""
    return torch.norm_except_dim(v, 2, 0)


def _ref_weight(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The effective weight of reference conv ``prefix``, stored plain or weight-normalized (either API)."""
    if f"{prefix}.weight" in state:
        return state[f"{prefix}.weight"]
    for g_name, v_name in ((f"{prefix}.parametrizations.weight.original0", f"{prefix}.parametrizations.weight.original1"),
                           (f"{prefix}.weight_g", f"{prefix}.weight_v")):
        if g_name in state and v_name in state:
            v = state[v_name]
            return v * (state[g_name] / _norm(v))
    raise ConversionError(f"the reference weights lack {prefix}.weight (plain or weight-normalized)")


def _take(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in state:
        raise ConversionError(f"the reference weights lack the tensor {name!r}")
    return state[name]


def to_ours(pairs: list[Pair], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors (name -> tensor) from reference ``state`` along ``pairs``."""
    out: dict[str, torch.Tensor] = {}
    for p in pairs:
        if p.kind == "tensor":
            out[p.ours] = _take(state, p.ref)
        elif p.kind in ("conv_wn", "conv_plain"):
            g, v = f"{p.ref}.parametrizations.weight.original0", f"{p.ref}.parametrizations.weight.original1"
            if g in state and v in state:
                out[f"{p.ours}.parametrizations.weight.original0"] = state[g]
                out[f"{p.ours}.parametrizations.weight.original1"] = state[v]
            else:
                w = _ref_weight(state, p.ref)
                out[f"{p.ours}.parametrizations.weight.original0"] = _norm(w)
                out[f"{p.ours}.parametrizations.weight.original1"] = w
            out[f"{p.ours}.bias"] = _take(state, f"{p.ref}.bias")
        elif p.kind == "squeeze":
            w = _take(state, p.ref)
            if w.ndim != 3 or w.shape[-1] != 1:
                raise ConversionError(f"the reference tensor {p.ref} is {list(w.shape)}; expected [out, in, 1]")
            out[p.ours] = w[..., 0]
        elif p.kind == "linear_conv":
            w = _ref_weight(state, p.ref)
            if w.ndim != 3 or w.shape[-1] != 1:
                raise ConversionError(f"the reference tensor {p.ref}.weight is {list(w.shape)}; expected a 1x1 "
                                      "convolution [out, in, 1]")
            out[f"{p.ours}.weight"] = w[..., 0]
            out[f"{p.ours}.bias"] = _take(state, f"{p.ref}.bias")
        else:
            raise ValueError(f"unknown pair kind {p.kind!r}")
    return out


def to_reference(pairs: list[Pair], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference tensors from our ``state_dict`` along ``pairs`` (the inverse of :func:`to_ours`)."""
    out: dict[str, torch.Tensor] = {}
    for p in pairs:
        if p.kind == "tensor":
            out[p.ref] = ours[p.ours]
        elif p.kind == "conv_wn":
            out[f"{p.ref}.parametrizations.weight.original0"] = ours[f"{p.ours}.parametrizations.weight.original0"]
            out[f"{p.ref}.parametrizations.weight.original1"] = ours[f"{p.ours}.parametrizations.weight.original1"]
            out[f"{p.ref}.bias"] = ours[f"{p.ours}.bias"]
        elif p.kind == "conv_plain":
            g = ours[f"{p.ours}.parametrizations.weight.original0"]
            v = ours[f"{p.ours}.parametrizations.weight.original1"]
            out[f"{p.ref}.weight"] = v * (g / _norm(v))
            out[f"{p.ref}.bias"] = ours[f"{p.ours}.bias"]
        elif p.kind == "squeeze":
            out[p.ref] = ours[p.ours].unsqueeze(-1)
        elif p.kind == "linear_conv":
            out[f"{p.ref}.weight"] = ours[f"{p.ours}.weight"].unsqueeze(-1)
            out[f"{p.ref}.bias"] = ours[f"{p.ours}.bias"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def load_into(codec: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``codec``: every one of its tensors must be given, with its shape (one-line errors
    naming the first tensor that is missing or has another shape)."""
    own = codec.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ConversionError(f"{source}: nothing in the reference weights maps onto {missing[0]} "
                              f"({len(missing)} tensors unmapped)")
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ConversionError(f"{source}: mapped tensor {extra[0]} has no place in the configured codec")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise ConversionError(f"{source}: {name} is {list(t.shape)} in the reference weights, "
                                  f"{list(own[name].shape)} in the codec its config.json describes")
    codec.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)


def check_unused(state: dict[str, torch.Tensor], used: set[str], source: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse reference weights with tensors no pair reads (a different architecture than its config says)."""
    left = sorted(k for k in state if k not in used and not k.endswith(ignore))
    if left:
        raise ConversionError(f"{source}: the reference tensor {left[0]} has no counterpart in the codec "
                              f"({len(left)} tensors unused); the weights do not match their config.json")


def used_names(pairs: list[Pair], state: dict[str, torch.Tensor]) -> set[str]:
    """Reference tensor names that ``pairs`` read from ``state``."""
    names: set[str] = set()
    for p in pairs:
        if p.kind in ("tensor", "squeeze"):
            names.add(p.ref)
        else:
            names |= {k for k in state if k.startswith(p.ref + ".") and
                      k[len(p.ref) + 1:] in ("weight", "bias", "weight_g", "weight_v",
                                             "parametrizations.weight.original0", "parametrizations.weight.original1")}
    return names
