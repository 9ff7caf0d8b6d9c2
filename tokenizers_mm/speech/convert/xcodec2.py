"""X-Codec 2 (``transformers`` ``Xcodec2Model``) <-> :class:`~tokenizers_mm.speech.xcodec2_codec.XCodec2Codec`.

Our codec keeps the reference's module names except ``quantizer.project_in/out`` (vector-quantize-pytorch's
``fsq.project_in/out``) and ``acoustic_decoder`` (``decoder``); FSQ has no learned codebook, so every tensor is a
plain copy. The semantic encoder (w2v-BERT 2.0) maps onto :class:`~tokenizers_mm.speech.w2v_bert.W2VBertEncoder`.

Supported: ``num_key_value_heads == num_attention_heads``, no attention bias, SiLU, ``quantization_dim ==
hidden_size + semantic hidden size``, 16 kHz with a hop of 320 samples (the reference's own constraints); a
semantic encoder with relative-key positions, no adapter and no intermediate feed-forward (as published).
The reference's rotary embedding is dropped (see :mod:`tokenizers_mm.speech.vocos_decoder`), so any rope setting
imports.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import ConversionError, Pair

MODEL_TYPE = "xcodec2"
# our module prefix -> the reference's
RENAMES = (("fsq.project_in.", "quantizer.project_in."), ("fsq.project_out.", "quantizer.project_out."),
           ("decoder.", "acoustic_decoder."))


def _defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import Xcodec2Config

    full = Xcodec2Config().to_dict()
    full.update(cfg)
    return full


# W2VBertConfig fields read from the reference's semantic_model_config
SEMANTIC_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "feature_projection_input_dim", "hidden_act", "layer_norm_eps", "left_max_position_embeddings",
                   "right_max_position_embeddings", "conv_depthwise_kernel_size")


def _semantic_arch(sem_cfg: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """:class:`W2VBertConfig` arguments of a ``semantic_model_config`` (one-line errors for other layouts)."""
    from transformers import Wav2Vec2BertConfig

    s = Wav2Vec2BertConfig().to_dict()
    s.update(sem_cfg or {})
    refuse = [(s.get("model_type") != "wav2vec2-bert", f"a {s.get('model_type')!r} semantic model"),
              (s["position_embeddings_type"] != "relative_key",
               f"semantic position_embeddings_type {s['position_embeddings_type']!r}"),
              (bool(s["add_adapter"]), "a semantic adapter stack (add_adapter)"),
              (bool(s["use_intermediate_ffn_before_adapter"]), "use_intermediate_ffn_before_adapter"),
              (s["hidden_act"] not in ("swish", "silu", "gelu", "relu"), f"semantic hidden_act {s['hidden_act']!r}"),
              (s["hidden_size"] % s["num_attention_heads"] != 0, "semantic heads that do not divide its width")]
    for bad, what in refuse:
        if bad:
            raise ConversionError(f"{source}: this X-Codec 2 has {what}; tokenizers-mm imports X-Codec 2 models "
                                  "shaped like the published one")
    out = {k: s[k] for k in SEMANTIC_FIELDS}
    out["masked_spec_embed"] = s["mask_time_prob"] > 0 or s["mask_feature_prob"] > 0
    return out


def codec_arch(ref_cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``XCodec2Codec`` constructor arguments of an X-Codec 2 ``config.json``."""
    c = _defaults(ref_cfg)
    sem = _semantic_arch(c.get("semantic_model_config"), source)
    sem_hidden = sem["hidden_size"]
    refuse = [(c["num_key_value_heads"] != c["num_attention_heads"], "grouped-query attention"),
              (bool(c["attention_bias"]), "attention biases"),
              (c["hidden_act"] != "silu", f"hidden_act {c['hidden_act']!r}"),
              (c["quantization_dim"] != c["hidden_size"] + sem_hidden,
               f"quantization_dim {c['quantization_dim']} != hidden_size + semantic hidden size "
               f"{c['hidden_size'] + sem_hidden}"),
              (c["sampling_rate"] != 16000 or math.prod(c["downsampling_ratios"]) != 320,
               f"sampling_rate {c['sampling_rate']} with hop {math.prod(c['downsampling_ratios'])} (16000 / 320 only)"),
              (c["hidden_size"] % 32 != 0, f"hidden_size {c['hidden_size']} (GroupNorm of 32 groups)")]
    for bad, what in refuse:
        if bad:
            raise ConversionError(f"{source}: this X-Codec 2 has {what}; tokenizers-mm imports X-Codec 2 models "
                                  "shaped like the published one")
    return {"sample_rate": 16000, "channels": c["encoder_hidden_size"], "ratios": list(c["downsampling_ratios"]),
            "hidden": c["hidden_size"], "semantic": sem, "layers": c["num_hidden_layers"],
            "heads": c["num_attention_heads"], "head_dim": c["head_dim"], "intermediate": c["intermediate_size"],
            "rms_eps": c["rms_norm_eps"], "levels": list(c["quantization_levels"]),
            "dropout": c["activation_dropout"]}


def build_codec(arch: dict[str, Any]) -> torch.nn.Module:
    from ..xcodec2_codec import XCodec2Codec

    return XCodec2Codec(**arch)


def _ref_name(ours: str) -> str:
    for a, b in RENAMES:
        if ours.startswith(a):
            return b + ours[len(a):]
    return ours


def pairs(arch: dict[str, Any]) -> list[Pair]:
    """One plain copy per tensor of the codec ``arch`` builds (listed from a codec on the meta device)."""
    with torch.device("meta"):
        names = list(build_codec(arch).state_dict())
    return [Pair(n, _ref_name(n)) for n in names]


def codebook_tensors(state: dict[str, torch.Tensor], arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """FSQ's codebook is implicit (its levels): nothing to read."""
    return {}, set()


def reference_codebooks(ours: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {}


def reference_config(arch: dict[str, Any]) -> dict[str, Any]:
    """An ``Xcodec2Config`` dict describing our codec ``arch`` (``XCodec2Codec.arch``); refuses other codecs."""
    needed = ("channels", "ratios", "hidden", "semantic", "levels")
    if any(k not in arch for k in needed):
        raise ConversionError("not an X-Codec 2 codec (its arch lacks " + ", ".join(k for k in needed if k not in arch) + ")")
    sem = {k: arch["semantic"][k] for k in SEMANTIC_FIELDS}
    sem.update(model_type="wav2vec2-bert", position_embeddings_type="relative_key", add_adapter=False,
               use_intermediate_ffn_before_adapter=False, mask_feature_prob=0.0,
               mask_time_prob=0.05 if arch["semantic"]["masked_spec_embed"] else 0.0)
    return {"model_type": MODEL_TYPE, "architectures": ["Xcodec2Model"], "sampling_rate": arch["sample_rate"],
            "encoder_hidden_size": arch["channels"], "downsampling_ratios": list(arch["ratios"]),
            "hidden_size": arch["hidden"], "semantic_model_config": sem, "num_hidden_layers": arch["layers"],
            "num_attention_heads": arch["heads"], "num_key_value_heads": arch["heads"], "head_dim": arch["head_dim"],
            "intermediate_size": arch["intermediate"], "rms_norm_eps": arch["rms_eps"], "hidden_act": "silu",
            "attention_bias": False, "quantization_levels": list(arch["levels"]),
            "quantization_dim": arch["hidden"] + sem["hidden_size"], "activation_dropout": arch["dropout"]}
