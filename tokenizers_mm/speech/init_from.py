"""Start speech training from an export (``init_from: EXPORT``): encoder, quantizer and decoder with its weights.

The architecture comes from the export's ``config.json``; a config that also states ``sample_rate``, ``seanet`` or
``latent`` must state the export's values (a mismatch is an error naming the first differing entry). In ``rvq`` only the
training settings may differ (:data:`TRAINING_RVQ`: dropout, EMA decay, dead-code threshold, commitment weight,
gradient routing); the codebooks themselves come from the export. Discriminators and distillation heads are not in
an export: they start fresh.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import as_config, plain
from .codec import RVQConfig, SpeechCodec
from .latent_transformer import LatentConfig
from .seanet import SEANetConfig

TRAINING_RVQ = ("quantizer_dropout", "decay", "threshold_ema_dead_code", "commitment_weight", "residual_gradient",
                "rotation_trick")


def _first_difference(given: dict[str, Any], export: dict[str, Any], skip: tuple[str, ...] = ()) -> str | None:
    for key in sorted(set(given) | set(export)):
        if key in skip:
            continue
        if given.get(key) != export.get(key):
            return f"{key}: {given.get(key)!r} in the config, {export.get(key)!r} in the export"
    return None


def codec_from_export(path: str, sample_rate: int | None, seanet: SEANetConfig | dict | None,
                      rvq: RVQConfig | dict | None, latent: LatentConfig | dict | None = None) -> torch.nn.Module:
    """The export's :class:`SpeechCodec` in training mode, with the training settings of ``rvq`` applied; an X-Codec 2
    export (``speech/xcodec2``) as it is (``seanet``, ``rvq`` and ``latent`` do not describe it: they must be left
    out)."""
    from ..export import ExportError, load_codec
    from .xcodec2_codec import XCodec2Codec

    try:
        loaded, cfg = load_codec(path, modality="audio")
    except ExportError as exc:
        raise ValueError(f"init_from: {exc}") from exc
    if isinstance(loaded, XCodec2Codec):
        given = [name for name, v in (("seanet", seanet), ("rvq", rvq), ("latent", latent)) if v is not None]
        if given:
            raise ValueError(f"init_from: {path!r} holds an X-Codec 2 codec, which {given[0]} does not describe; "
                             f"leave {', '.join(given)} out")
        if sample_rate is not None and int(sample_rate) != loaded.sample_rate:
            raise ValueError(f"init_from: sample_rate {sample_rate} in the config, {loaded.sample_rate} in {path!r}")
        return loaded.train()
    if not isinstance(loaded, SpeechCodec):
        raise ValueError(f"init_from: {path!r} holds a {cfg['architecture']} codec; speech training starts from a "
                         f"{SpeechCodec.architecture} or {XCodec2Codec.architecture} export")
    arch = plain(loaded.arch)
    if sample_rate is not None and int(sample_rate) != arch["sample_rate"]:
        raise ValueError(f"init_from: sample_rate {sample_rate} in the config, {arch['sample_rate']} in {path!r}")
    if seanet is not None:
        diff = _first_difference(plain(as_config(SEANetConfig, seanet)), arch["seanet"])
        if diff:
            raise ValueError(f"init_from: seanet differs from the export {path!r} ({diff}); leave seanet out to take "
                             "the export's architecture")
    if latent is not None:
        diff = _first_difference(plain(as_config(LatentConfig, latent)), arch.get("latent") or {})
        if diff:
            raise ValueError(f"init_from: latent differs from the export {path!r} ({diff})")
    if rvq is None:
        return loaded.train()
    given = plain(as_config(RVQConfig, rvq))
    diff = _first_difference(given, arch["rvq"], skip=TRAINING_RVQ)
    if diff:
        raise ValueError(f"init_from: rvq differs from the export {path!r} ({diff}); only {list(TRAINING_RVQ)} may "
                         "change when fine-tuning")
    merged = {**arch["rvq"], **{k: given[k] for k in TRAINING_RVQ}}
    codec = SpeechCodec(**{**arch, "rvq": merged})
    codec.load_state_dict(loaded.state_dict(), strict=True)
    return codec.train()
