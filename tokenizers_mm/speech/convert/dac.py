"""DAC (``transformers`` ``DacModel``) <-> :class:`SpeechCodec`.

DAC is a non-causal SEANet codec with Snake activations: residual units of kernel 7 at dilations 1, 3, 9 (no
compression, identity skip), strided convolutions of kernel ``2 * stride``, a kernel-3 last encoder convolution,
a tanh output, and a residual VQ in which every codebook projects ``hidden -> codebook_dim`` and back with its own
1x1 convolutions and looks codes up by cosine similarity while decoding the unnormalized codebook row
(:class:`~tokenizers_mm.speech.projected_rvq.ProjectedRVQ` keeps the unit vectors in the library codebook and the
row lengths in ``code_norm``). ``transformers`` stores DAC's convolutions plain (weight norm removed); they become
weight-normalized convolutions here (``g = |w|`` per output channel) and plain again on export.

An odd ratio (the 16 kHz model's 5) makes DAC's transposed convolution one sample short of ``stride x frames``
(``upsample_trim: symmetric`` does the same); DAC's output then ends early (``frames x hop - 8`` samples for the
16 kHz model) and ours carries zeros in those last samples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .common import ConversionError, Pair

MODEL_TYPE = "dac"


def _defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import DacConfig

    full = DacConfig().to_dict()
    full.update(cfg)
    return full


def codec_arch(ref_cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``SpeechCodec`` constructor arguments of a DAC ``config.json``."""
    c = _defaults(ref_cfg)
    ratios = list(c["downsampling_ratios"])
    n = len(ratios)
    if c["decoder_hidden_size"] % 2 ** n:
        raise ConversionError(f"{source}: DAC decoder_hidden_size {c['decoder_hidden_size']} is not divisible by "
                              f"2^{n} (one halving per upsampling stage)")
    seanet = {"channels": c["encoder_hidden_size"], "decoder_channels": c["decoder_hidden_size"] // 2 ** n,
              "dim": c["encoder_hidden_size"] * 2 ** n, "ratios": ratios[::-1], "kernel_size": 7,
              "last_kernel_size": 3, "decoder_last_kernel_size": 7, "residual_kernel_size": 7, "num_residual": 3,
              "dilation_base": 3, "compress": 1, "activation": "snake", "causal": False, "bottleneck": "none",
              "weight_norm": True, "pad_mode": "zeros", "shortcut": "identity", "output_tanh": True,
              "upsample_trim": "symmetric"}
    rvq = {"num_quantizers": c["n_codebooks"], "codebook_size": c["codebook_size"], "codebook_dim": c["codebook_dim"],
           "cosine": True, "projection": "per_codebook", "decay": 0.99, "kmeans_init": False,
           "threshold_ema_dead_code": 2.0, "commitment_weight": float(c["commitment_loss_weight"]),
           "quantizer_dropout": float(c["quantizer_dropout"]), "residual_gradient": 1.0, "rotation_trick": False}
    return {"sample_rate": int(c["sampling_rate"]), "seanet": seanet, "rvq": rvq}


def pairs(arch: dict[str, Any]) -> list[Pair]:
    """Tensor correspondences of encoder, decoder and the quantizer projections (codebooks: :func:`codebook_tensors`)."""
    seanet, n_q = arch["seanet"], arch["rvq"]["num_quantizers"]
    out: list[Pair] = []

    def unit(ours: str, ref: str) -> None:
        out.extend([Pair(f"{ours}.block.0.alpha", f"{ref}.snake1.alpha"),
                    Pair(f"{ours}.block.1.conv", f"{ref}.conv1", "conv_plain"),
                    Pair(f"{ours}.block.2.alpha", f"{ref}.snake2.alpha"),
                    Pair(f"{ours}.block.3.conv", f"{ref}.conv2", "conv_plain")])

    n = len(seanet["ratios"])
    out.append(Pair("encoder.front.0.conv", "encoder.conv1", "conv_plain"))
    for b in range(n):
        base = 1 + 5 * b
        for j in range(3):
            unit(f"encoder.front.{base + j}", f"encoder.block.{b}.res_unit{j + 1}")
        out += [Pair(f"encoder.front.{base + 3}.alpha", f"encoder.block.{b}.snake1.alpha"),
                Pair(f"encoder.front.{base + 4}.conv", f"encoder.block.{b}.conv1", "conv_plain")]
    out += [Pair("encoder.back.0.alpha", "encoder.snake1.alpha"),
            Pair("encoder.back.1.conv", "encoder.conv2", "conv_plain"),
            Pair("decoder.first.conv", "decoder.conv1", "conv_plain")]
    for b in range(n):
        base = 5 * b
        out += [Pair(f"decoder.ups.{base}.alpha", f"decoder.block.{b}.snake1.alpha"),
                Pair(f"decoder.ups.{base + 1}.conv", f"decoder.block.{b}.conv_t1", "conv_plain")]
        for j in range(3):
            unit(f"decoder.ups.{base + 2 + j}", f"decoder.block.{b}.res_unit{j + 1}")
    out += [Pair(f"decoder.ups.{5 * n}.alpha", "decoder.snake1.alpha"),
            Pair(f"decoder.ups.{5 * n + 1}.conv", "decoder.conv2", "conv_plain")]
    for q in range(n_q):
        out += [Pair(f"rvq.layers.{q}.in_proj", f"quantizer.quantizers.{q}.in_proj", "linear_conv"),
                Pair(f"rvq.layers.{q}.out_proj", f"quantizer.quantizers.{q}.out_proj", "linear_conv")]
    return out


def codebook_tensors(state: dict[str, torch.Tensor], arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our library-codebook buffers and ``code_norm`` from DAC's codebook rows; also the names read."""
    out, used, n_q = {}, set(), arch["rvq"]["num_quantizers"]
    for q in range(n_q):
        name = f"quantizer.quantizers.{q}.codebook.weight"
        if name not in state:
            raise ConversionError(f"the reference weights lack the tensor {name!r}")
        used.add(name)
        rows = state[name].float()
        unit = F.normalize(rows, dim=-1)
        ours = f"rvq.layers.{q}"
        out[f"{ours}.code_norm"] = rows.norm(dim=-1)
        out[f"{ours}.vq._codebook.embed"] = unit.unsqueeze(0)
        out[f"{ours}.vq._codebook.embed_avg"] = unit.unsqueeze(0).clone()
        out[f"{ours}.vq._codebook.cluster_size"] = torch.ones(1, rows.shape[0])
        out[f"{ours}.vq._codebook.initted"] = torch.tensor(True)
    return out, used


def reference_codebooks(ours: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """DAC's codebook rows from ours: unit vectors times their lengths."""
    n_q = arch["rvq"]["num_quantizers"]
    return {f"quantizer.quantizers.{q}.codebook.weight":
            (ours[f"rvq.layers.{q}.vq._codebook.embed"][0] * ours[f"rvq.layers.{q}.code_norm"][:, None]).clone()
            for q in range(n_q)}


def reference_config(arch: dict[str, Any]) -> dict[str, Any]:
    """A ``DacConfig`` dict describing our codec ``arch``; refuses codecs that are not DAC-shaped."""
    s, q, sr = arch["seanet"], arch["rvq"], arch["sample_rate"]
    n = len(s["ratios"])
    want = {"kernel_size": 7, "last_kernel_size": 3, "residual_kernel_size": 7, "num_residual": 3,
            "dilation_base": 3, "compress": 1, "activation": "snake", "causal": False, "bottleneck": "none",
            "shortcut": "identity", "output_tanh": True, "pad_mode": "zeros"}
    if s.get("upsample_trim") != "symmetric" and any(r % 2 for r in s["ratios"]):
        raise ConversionError("a DAC export of odd ratios needs seanet.upsample_trim 'symmetric' (DAC's lengths)")
    for key, value in want.items():
        if s.get(key) != value:
            raise ConversionError(f"this codec has seanet.{key} = {s.get(key)!r}; a DAC export needs {value!r}")
    if s.get("decoder_last_kernel_size") != 7 or s["dim"] != s["channels"] * 2 ** n:
        raise ConversionError("a DAC export needs decoder_last_kernel_size 7 and dim = channels * 2^len(ratios)")
    if q.get("projection") != "per_codebook" or not q.get("cosine"):
        raise ConversionError("a DAC export needs rvq.projection 'per_codebook' with cosine lookup")
    dec = (s.get("decoder_channels") or s["channels"]) * 2 ** n
    return {"model_type": MODEL_TYPE, "architectures": ["DacModel"], "encoder_hidden_size": s["channels"],
            "downsampling_ratios": list(s["ratios"])[::-1], "decoder_hidden_size": dec,
            "n_codebooks": q["num_quantizers"], "codebook_size": q["codebook_size"],
            "codebook_dim": q["codebook_dim"], "quantizer_dropout": float(q.get("quantizer_dropout", 0.0)),
            "commitment_loss_weight": float(q.get("commitment_weight", 0.25)), "codebook_loss_weight": 1.0,
            "sampling_rate": sr}
