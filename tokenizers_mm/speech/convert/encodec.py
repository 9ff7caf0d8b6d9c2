"""EnCodec (``transformers`` ``EncodecModel``) <-> :class:`SpeechCodec`.

EnCodec is a SEANet codec: weight-normalized convolutions padded by reflection (causal or not), residual units with
a 1x1 convolution as skip path, a 2-layer LSTM with a skip after the encoder's last downsampling and after the
decoder's first convolution, and a residual VQ of Euclidean codebooks updated by EMA (no projection). The number of
codebooks at a bandwidth ``b`` kbps is ``floor(b * 1000 / (frame_rate * log2(codebook_size)))``.

Supported: mono models with ``norm_type: weight_norm`` and neither ``normalize`` nor chunking (the 24 kHz model and
models configured like it); the 48 kHz model (stereo, time group norm, normalized chunks) is refused by name.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import ConversionError, Pair

MODEL_TYPE = "encodec"


def num_quantizers(cfg: dict[str, Any]) -> int:
    """Codebooks of an EnCodec config (its largest bandwidth), as ``EncodecConfig.num_quantizers`` computes them."""
    hop = math.prod(cfg["upsampling_ratios"])
    frame_rate = math.ceil(cfg["sampling_rate"] / hop)
    return int(1000 * cfg["target_bandwidths"][-1] // (frame_rate * math.ceil(math.log2(cfg["codebook_size"]))))


def codebooks_at(cfg: dict[str, Any], bandwidth: float) -> int:
    """Codebooks EnCodec uses at ``bandwidth`` kbps."""
    hop = math.prod(cfg["upsampling_ratios"])
    bw_per_q = math.log2(cfg["codebook_size"]) * math.ceil(cfg["sampling_rate"] / hop)
    return int(max(1, math.floor(bandwidth * 1000 / bw_per_q)))


def _defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import EncodecConfig

    full = EncodecConfig().to_dict()
    full.update(cfg)
    return full


def codec_arch(ref_cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``SpeechCodec`` constructor arguments of an EnCodec ``config.json`` (one-line errors for unsupported ones)."""
    c = _defaults(ref_cfg)
    refuse = [(c["audio_channels"] != 1, f"audio_channels {c['audio_channels']} (mono only)"),
              (c["norm_type"] != "weight_norm", f"norm_type {c['norm_type']!r} (weight_norm only)"),
              (bool(c["normalize"]), "normalize: true (the 48 kHz model's loudness normalization)"),
              (c["chunk_length_s"] is not None, f"chunk_length_s {c['chunk_length_s']} (chunked models)"),
              (c["trim_right_ratio"] != 1.0, f"trim_right_ratio {c['trim_right_ratio']} (1.0 only)"),
              (c["num_lstm_layers"] < 1, "num_lstm_layers 0"),
              (c["codebook_dim"] not in (None, c["hidden_size"]),
               f"codebook_dim {c['codebook_dim']} != hidden_size {c['hidden_size']}"),
              (c["pad_mode"] not in ("reflect", "constant"), f"pad_mode {c['pad_mode']!r} (reflect or constant)")]
    for bad, what in refuse:
        if bad:
            raise ConversionError(f"{source}: this EnCodec has {what}; tokenizers-mm imports mono weight-normalized "
                                  "EnCodec models without normalization or chunking")
    seanet = {"channels": c["num_filters"], "dim": c["hidden_size"], "ratios": list(c["upsampling_ratios"]),
              "kernel_size": c["kernel_size"], "last_kernel_size": c["last_kernel_size"],
              "residual_kernel_size": c["residual_kernel_size"], "num_residual": c["num_residual_layers"],
              "dilation_base": c["dilation_growth_rate"], "compress": c["compress"], "activation": "elu",
              "causal": bool(c["use_causal_conv"]), "bottleneck": "lstm", "bottleneck_layers": c["num_lstm_layers"],
              "weight_norm": True, "pad_mode": "reflect" if c["pad_mode"] == "reflect" else "constant",
              "shortcut": "conv" if c["use_conv_shortcut"] else "identity"}
    rvq = {"num_quantizers": num_quantizers(c), "codebook_size": c["codebook_size"], "codebook_dim": None,
           "cosine": False, "decay": 0.99, "kmeans_init": False, "threshold_ema_dead_code": 2.0,
           "commitment_weight": 1.0, "quantizer_dropout": 0.5, "residual_gradient": 1.0, "rotation_trick": False}
    return {"sample_rate": int(c["sampling_rate"]), "seanet": seanet, "rvq": rvq}


def pairs(arch: dict[str, Any]) -> list[Pair]:
    """Tensor correspondences of the encoder / decoder of our codec ``arch`` (codebooks: :func:`codebook_tensors`)."""
    seanet = arch["seanet"]
    nres, shortcut, layers = seanet["num_residual"], seanet["shortcut"] == "conv", seanet["bottleneck_layers"]
    out: list[Pair] = []

    def resblock(ours: str, ref: str) -> None:
        out.extend([Pair(f"{ours}.block.1.conv", f"{ref}.block.1.conv", "conv_wn"),
                    Pair(f"{ours}.block.3.conv", f"{ref}.block.3.conv", "conv_wn")])
        if shortcut:
            out.append(Pair(f"{ours}.shortcut.conv", f"{ref}.shortcut.conv", "conv_wn"))

    def lstm(ours: str, ref: str) -> None:
        for k in range(layers):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                out.append(Pair(f"{ours}.{w}_l{k}", f"{ref}.{w}_l{k}"))

    out.append(Pair("encoder.front.0.conv", "encoder.layers.0.conv", "conv_wn"))
    i = 1
    for _ in seanet["ratios"]:
        for _ in range(nres):
            resblock(f"encoder.front.{i}", f"encoder.layers.{i}")
            i += 1
        out.append(Pair(f"encoder.front.{i + 1}.conv", f"encoder.layers.{i + 1}.conv", "conv_wn"))
        i += 2
    lstm("encoder.bottleneck.net", f"encoder.layers.{i}.lstm")
    out.append(Pair("encoder.back.1.conv", f"encoder.layers.{i + 2}.conv", "conv_wn"))

    out.append(Pair("decoder.first.conv", "decoder.layers.0.conv", "conv_wn"))
    lstm("decoder.bottleneck.net", "decoder.layers.1.lstm")
    i = 2
    for _ in seanet["ratios"]:
        out.append(Pair(f"decoder.ups.{i - 1}.conv", f"decoder.layers.{i + 1}.conv", "conv_wn"))
        i += 2
        for _ in range(nres):
            resblock(f"decoder.ups.{i - 2}", f"decoder.layers.{i}")
            i += 1
    out.append(Pair(f"decoder.ups.{i - 1}.conv", f"decoder.layers.{i + 1}.conv", "conv_wn"))
    return out


def codebook_tensors(state: dict[str, torch.Tensor], arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our ``ResidualVQ`` buffers from EnCodec's codebooks (``embed``, EMA statistics); also the names read."""
    out, used, n_q = {}, set(), arch["rvq"]["num_quantizers"]
    for q in range(n_q):
        ref = f"quantizer.layers.{q}.codebook"
        for name in ("embed", "embed_avg", "cluster_size", "inited"):
            if f"{ref}.{name}" not in state:
                raise ConversionError(f"the reference weights lack the tensor '{ref}.{name}'")
            used.add(f"{ref}.{name}")
        ours = f"rvq.layers.{q}._codebook"
        out[f"{ours}.embed"] = state[f"{ref}.embed"].unsqueeze(0)
        out[f"{ours}.embed_avg"] = state[f"{ref}.embed_avg"].unsqueeze(0)
        out[f"{ours}.cluster_size"] = state[f"{ref}.cluster_size"].unsqueeze(0)
        out[f"{ours}.initted"] = torch.tensor(True)
    return out, used


def reference_codebooks(ours: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """EnCodec's codebook buffers from our ``ResidualVQ`` (inverse of :func:`codebook_tensors`)."""
    out, n_q = {}, arch["rvq"]["num_quantizers"]
    for q in range(n_q):
        src, ref = f"rvq.layers.{q}._codebook", f"quantizer.layers.{q}.codebook"
        out[f"{ref}.embed"] = ours[f"{src}.embed"][0].clone()
        out[f"{ref}.embed_avg"] = ours[f"{src}.embed_avg"][0].clone()
        out[f"{ref}.cluster_size"] = ours[f"{src}.cluster_size"][0].clone()
        out[f"{ref}.inited"] = torch.tensor([1.0])
    return out


def reference_config(arch: dict[str, Any]) -> dict[str, Any]:
    """An ``EncodecConfig`` dict describing our codec ``arch`` (``SpeechCodec.arch``); refuses what EnCodec lacks."""
    s, q, sr = arch["seanet"], arch["rvq"], arch["sample_rate"]
    wrong = [(s.get("encoder", "seanet") != "seanet" or s.get("decoder", "seanet") != "seanet", "a spectral / istft part"),
             (s.get("activation") != "elu", f"activation {s.get('activation')!r}"),
             (s.get("bottleneck") != "lstm", f"bottleneck {s.get('bottleneck')!r}"),
             (not s.get("weight_norm", True), "plain convolutions"),
             (bool(s.get("output_tanh")), "a tanh output"),
             (s.get("decoder_channels") not in (None, s["channels"]), "decoder_channels != channels"),
             (s.get("decoder_last_kernel_size") not in (None, s["last_kernel_size"]), "two last kernel sizes"),
             (q.get("projection", "shared") != "shared" or q.get("codebook_dim") not in (None, s["dim"]) or q.get("cosine"),
              "a projected or cosine quantizer")]
    for bad, what in wrong:
        if bad:
            raise ConversionError(f"this codec has {what}; an EnCodec export needs the EnCodec architecture "
                                  "(elu, LSTM, weight-normalized SEANet, Euclidean RVQ without projection)")
    hop = math.prod(s["ratios"])
    frame_rate = math.ceil(sr / hop)
    bits = math.ceil(math.log2(q["codebook_size"]))
    if 2 ** bits != q["codebook_size"]:
        raise ConversionError(f"EnCodec needs a power-of-two codebook size, got {q['codebook_size']}")
    bandwidths = [n * frame_rate * bits / 1000 for n in range(1, q["num_quantizers"] + 1)]
    return {"model_type": MODEL_TYPE, "architectures": ["EncodecModel"], "sampling_rate": sr, "audio_channels": 1,
            "normalize": False, "chunk_length_s": None, "overlap": None, "hidden_size": s["dim"],
            "num_filters": s["channels"], "num_residual_layers": s["num_residual"],
            "upsampling_ratios": list(s["ratios"]), "norm_type": "weight_norm", "kernel_size": s["kernel_size"],
            "last_kernel_size": s["last_kernel_size"], "residual_kernel_size": s["residual_kernel_size"],
            "dilation_growth_rate": s["dilation_base"], "use_causal_conv": bool(s["causal"]),
            "pad_mode": "reflect" if s.get("pad_mode") == "reflect" else "constant", "compress": s["compress"],
            "num_lstm_layers": s["bottleneck_layers"], "trim_right_ratio": 1.0, "codebook_size": q["codebook_size"],
            "codebook_dim": s["dim"], "use_conv_shortcut": s.get("shortcut") == "conv",
            "target_bandwidths": bandwidths}
