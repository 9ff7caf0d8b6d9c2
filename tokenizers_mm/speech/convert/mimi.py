"""Mimi (``transformers`` ``MimiModel``) <-> :class:`SpeechCodec` with a latent stage.

Mimi is a causal SEANet codec (plain convolutions padded with zeros, each completing its own last window; no LSTM,
identity skips) whose latent passes a causal sliding-window transformer, is downsampled by a strided convolution
(25 -> 12.5 Hz for the published model) and quantized by a split RVQ: ``num_semantic_quantizers`` codebooks (the
one distilled from WavLM) and the acoustic rest quantize the same latent behind bias-free 1x1 projections. The
decoder mirrors it (depthwise transposed convolution, transformer, SEANet decoder).
Codebooks are EMA statistics: code = ``embed_sum / max(cluster_usage, 1e-5)``, which is vector-quantize-pytorch's
``embed_avg / cluster_size``.

Supported: mono, ``num_key_value_heads == num_attention_heads``, default RoPE, no attention bias, GELU, a codebook
dim equal to ``vector_quantization_hidden_dimension`` and a depthwise upsampling (``upsample_groups ==
hidden_size``).
"""

from __future__ import annotations

from typing import Any

import torch

from .common import ConversionError, Pair

MODEL_TYPE = "mimi"
EPS = 1e-5


def _defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import MimiConfig

    full = MimiConfig().to_dict()
    full.update(cfg)
    return full


def _stride(c: dict[str, Any]) -> int:
    import math

    hop = math.prod(c["upsampling_ratios"])
    encodec_rate = math.ceil(c["sampling_rate"] / hop)
    # MimiConfig.frame_rate: the recorded one, else the SEANet rate halved by the downsampling
    rate = c.get("_frame_rate") or c.get("frame_rate") or c["sampling_rate"] / (hop * 2)
    return int(encodec_rate / rate)


def codec_arch(ref_cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``SpeechCodec`` constructor arguments of a Mimi ``config.json``."""
    c = _defaults(ref_cfg)
    rope = c.get("rope_parameters") or {}
    refuse = [(c["audio_channels"] != 1, f"audio_channels {c['audio_channels']} (mono only)"),
              (c["num_key_value_heads"] != c["num_attention_heads"], "grouped-query attention"),
              (rope.get("rope_type", "default") != "default", f"rope_type {rope.get('rope_type')!r}"),
              (bool(c["attention_bias"]), "attention biases"),
              (c["hidden_act"] != "gelu", f"hidden_act {c['hidden_act']!r}"),
              (c["codebook_dim"] != c["vector_quantization_hidden_dimension"],
               "codebook_dim != vector_quantization_hidden_dimension"),
              (c["vector_quantization_hidden_dimension"] == c["hidden_size"], "no quantizer projection"),
              (_stride(c) > 1 and c["upsample_groups"] != c["hidden_size"], "a non-depthwise upsampling"),
              (c["trim_right_ratio"] != 1.0, f"trim_right_ratio {c['trim_right_ratio']}"),
              (c["pad_mode"] not in ("constant", "reflect"), f"pad_mode {c['pad_mode']!r}"),
              (not c["use_causal_conv"], "non-causal convolutions")]
    for bad, what in refuse:
        if bad:
            raise ConversionError(f"{source}: this Mimi has {what}; tokenizers-mm imports Mimi models shaped like the "
                                  "published one")
    seanet = {"channels": c["num_filters"], "dim": c["hidden_size"], "ratios": list(c["upsampling_ratios"]),
              "kernel_size": c["kernel_size"], "last_kernel_size": c["last_kernel_size"],
              "residual_kernel_size": c["residual_kernel_size"], "num_residual": c["num_residual_layers"],
              "dilation_base": c["dilation_growth_rate"], "compress": c["compress"], "activation": "elu",
              "causal": True, "bottleneck": "none", "weight_norm": True,
              "pad_mode": "reflect" if c["pad_mode"] == "reflect" else "constant",
              "shortcut": "conv" if c["use_conv_shortcut"] else "identity"}
    latent = {"layers": c["num_hidden_layers"], "heads": c["num_attention_heads"],
              "intermediate": c["intermediate_size"], "head_dim": c["head_dim"],
              "rope_theta": float(rope.get("rope_theta", 10000.0)), "sliding_window": c["sliding_window"],
              "layer_scale": c["layer_scale_initial_scale"], "norm_eps": c["norm_eps"], "stride": _stride(c)}
    rvq = {"num_quantizers": c["num_quantizers"], "codebook_size": c["codebook_size"],
           "codebook_dim": c["codebook_dim"], "cosine": False, "projection": "split",
           "semantic_quantizers": c["num_semantic_quantizers"], "decay": 0.99, "kmeans_init": False,
           "threshold_ema_dead_code": 2.0, "commitment_weight": 1.0, "quantizer_dropout": 0.5,
           "residual_gradient": 1.0, "rotation_trick": False}
    return {"sample_rate": int(c["sampling_rate"]), "seanet": seanet, "rvq": rvq, "latent": latent}


# flat names of saved Mimi checkpoints (hub files, save_pretrained) -> MimiModel's module names
FLAT_PREFIXES = (("encoder_transformer.", "encoder.encoder_transformer."), ("downsample.", "encoder.downsample."),
                 ("upsample.", "decoder.upsample."), ("decoder_transformer.", "decoder.decoder_transformer."),
                 ("encoder.layers.", "encoder.encoder_seanet.layers."), ("decoder.layers.", "decoder.decoder_seanet.layers."))


def normalize_reference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saved Mimi files use flat names (``encoder.layers.*``, ``encoder_transformer.*``, ``downsample.*``); the
    pairs use ``MimiModel``'s module names (``encoder.encoder_seanet.layers.*`` ...). Either layout is accepted."""
    out = {}
    for name, t in state.items():
        for flat, nested in FLAT_PREFIXES:
            if name.startswith(flat):
                name = nested + name[len(flat):]
                break
        out[name] = t
    return out


def _transformer(ours: str, ref: str, layers: int) -> list[Pair]:
    out = []
    for k in range(layers):
        for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "input_layernorm.weight",
                     "input_layernorm.bias", "post_attention_layernorm.weight", "post_attention_layernorm.bias",
                     "self_attn_layer_scale.scale", "mlp_layer_scale.scale"):
            out.append(Pair(f"{ours}.layers.{k}.{name}", f"{ref}.layers.{k}.{name}"))
    return out


def pairs(arch: dict[str, Any]) -> list[Pair]:
    """Tensor correspondences of our codec ``arch`` (the codebooks: :func:`codebook_tensors`)."""
    seanet, latent = arch["seanet"], arch.get("latent")
    nres, shortcut = seanet["num_residual"], seanet["shortcut"] == "conv"
    out: list[Pair] = []

    def resblock(ours: str, ref: str) -> None:
        out.extend([Pair(f"{ours}.block.1.conv", f"{ref}.block.1.conv", "conv_plain"),
                    Pair(f"{ours}.block.3.conv", f"{ref}.block.3.conv", "conv_plain")])
        if shortcut:
            out.append(Pair(f"{ours}.shortcut.conv", f"{ref}.shortcut.conv", "conv_plain"))

    enc = "encoder.encoder_seanet.layers"
    out.append(Pair("encoder.front.0.conv", f"{enc}.0.conv", "conv_plain"))
    i = 1
    for _ in seanet["ratios"]:
        for _ in range(nres):
            resblock(f"encoder.front.{i}", f"{enc}.{i}")
            i += 1
        out.append(Pair(f"encoder.front.{i + 1}.conv", f"{enc}.{i + 1}.conv", "conv_plain"))
        i += 2
    out.append(Pair("encoder.back.1.conv", f"{enc}.{i + 1}.conv", "conv_plain"))
    dec = "decoder.decoder_seanet.layers"
    out.append(Pair("decoder.first.conv", f"{dec}.0.conv", "conv_plain"))
    i = 1
    for _ in seanet["ratios"]:
        out.append(Pair(f"decoder.ups.{i}.conv", f"{dec}.{i + 1}.conv", "conv_plain"))
        i += 2
        for _ in range(nres):
            resblock(f"decoder.ups.{i - 1}", f"{dec}.{i}")
            i += 1
    out.append(Pair(f"decoder.ups.{i}.conv", f"{dec}.{i + 1}.conv", "conv_plain"))
    lat = latent or {}
    layers = lat.get("layers", 0)
    out += _transformer("latent.encoder_transformer", "encoder.encoder_transformer", layers)
    out += _transformer("latent.decoder_transformer", "decoder.decoder_transformer", layers)
    if lat.get("stride", 1) > 1:
        out += [Pair("latent.downsample.conv.weight", "encoder.downsample.conv.weight"),
                Pair("latent.upsample.conv.weight", "decoder.upsample.conv.weight")]
    for part in ("semantic", "acoustic"):
        ref = f"quantizer.{part}_residual_vector_quantizer"
        out += [Pair(f"rvq.{part}_in.weight", f"{ref}.input_proj.weight", "squeeze"),
                Pair(f"rvq.{part}_out.weight", f"{ref}.output_proj.weight", "squeeze")]
    return out


def _split_counts(arch: dict[str, Any]) -> list[tuple[str, str, int]]:
    n_q, semantic = arch["rvq"]["num_quantizers"], arch["rvq"].get("semantic_quantizers", 1)
    return [("semantic", "semantic", semantic), ("acoustic", "acoustic", n_q - semantic)]


def codebook_tensors(state: dict[str, torch.Tensor], arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our two ``ResidualVQ`` s' buffers from Mimi's EMA statistics; also the names read."""
    out, used = {}, set()
    for ours_part, ref_part, count in _split_counts(arch):
        for q in range(count):
            ref = f"quantizer.{ref_part}_residual_vector_quantizer.layers.{q}.codebook"
            for name in ("embed_sum", "cluster_usage", "initialized"):
                if f"{ref}.{name}" not in state:
                    raise ConversionError(f"the reference weights lack the tensor '{ref}.{name}'")
                used.add(f"{ref}.{name}")
            usage = state[f"{ref}.cluster_usage"].float()
            embed_sum = state[f"{ref}.embed_sum"].float()
            ours = f"rvq.{ours_part}.layers.{q}._codebook"
            out[f"{ours}.embed"] = (embed_sum / usage.clamp(min=EPS)[:, None]).unsqueeze(0)
            out[f"{ours}.embed_avg"] = embed_sum.unsqueeze(0)
            out[f"{ours}.cluster_size"] = usage.unsqueeze(0)
            out[f"{ours}.initted"] = torch.tensor(True)
    return out, used


def reference_codebooks(ours: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Mimi's codebook statistics from ours: ``embed_sum`` = our codes, ``cluster_usage`` = 1 (exact codes)."""
    out = {}
    for part, _, count in _split_counts(arch):
        for q in range(count):
            embed = ours[f"rvq.{part}.layers.{q}._codebook.embed"][0]
            ref = f"quantizer.{part}_residual_vector_quantizer.layers.{q}.codebook"
            out[f"{ref}.embed_sum"] = embed.clone()
            out[f"{ref}.cluster_usage"] = torch.ones(embed.shape[0])
            out[f"{ref}.initialized"] = torch.tensor([1.0])
    return out


def reference_config(arch: dict[str, Any]) -> dict[str, Any]:
    """A ``MimiConfig`` dict describing our codec ``arch``; refuses codecs that are not Mimi-shaped."""
    import math

    s, q, lat = arch["seanet"], arch["rvq"], arch.get("latent")
    if lat is None or q.get("projection") != "split":
        raise ConversionError("a Mimi export needs a latent stage (latent:) and a split quantizer (rvq.projection "
                              "'split')")
    if s.get("activation") != "elu" or s.get("bottleneck") != "none" or not s.get("causal") or s.get("output_tanh"):
        raise ConversionError("a Mimi export needs a causal ELU SEANet without bottleneck or tanh")
    if s.get("pad_mode") not in ("constant", "reflect") or s.get("decoder_channels") not in (None, s["channels"]):
        raise ConversionError("a Mimi export needs seanet.pad_mode 'constant' (or 'reflect') and one channel width")
    if s.get("decoder_last_kernel_size") not in (None, s["last_kernel_size"]):
        raise ConversionError("a Mimi export needs one last kernel size for encoder and decoder")
    hop = math.prod(s["ratios"])
    encodec_rate = math.ceil(arch["sample_rate"] / hop)
    return {"model_type": MODEL_TYPE, "architectures": ["MimiModel"], "sampling_rate": arch["sample_rate"],
            "audio_channels": 1, "hidden_size": s["dim"], "num_filters": s["channels"],
            "num_residual_layers": s["num_residual"], "upsampling_ratios": list(s["ratios"]),
            "kernel_size": s["kernel_size"], "last_kernel_size": s["last_kernel_size"],
            "residual_kernel_size": s["residual_kernel_size"], "dilation_growth_rate": s["dilation_base"],
            "use_causal_conv": True, "pad_mode": s["pad_mode"], "compress": s["compress"], "trim_right_ratio": 1.0,
            "codebook_size": q["codebook_size"], "codebook_dim": q["codebook_dim"],
            "num_quantizers": q["num_quantizers"], "use_conv_shortcut": s.get("shortcut") == "conv",
            "vector_quantization_hidden_dimension": q["codebook_dim"],
            "num_semantic_quantizers": q.get("semantic_quantizers", 1), "upsample_groups": s["dim"],
            "num_hidden_layers": lat["layers"], "intermediate_size": lat["intermediate"],
            "num_attention_heads": lat["heads"], "num_key_value_heads": lat["heads"],
            "head_dim": lat.get("head_dim") or s["dim"] // lat["heads"], "hidden_act": "gelu",
            "norm_eps": lat["norm_eps"], "rope_parameters": {"rope_type": "default", "rope_theta": lat["rope_theta"]},
            "sliding_window": lat["sliding_window"], "layer_scale_initial_scale": lat["layer_scale"],
            "attention_bias": False, "frame_rate": encodec_rate / lat["stride"]}
