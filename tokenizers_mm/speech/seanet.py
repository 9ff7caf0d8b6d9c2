"""SEANet-style convolutional encoder and decoder for waveforms (EnCodec / DAC family).

Encoder: ``[B, 1, T]`` -> ``[B, dim, T / hop]`` with ``hop = prod(ratios)``; the decoder inverts it. Each
stage is a stack of residual units (activation -> dilated conv -> activation -> 1x1 conv, plus a skip) followed
by a strided convolution (encoder) or preceded by a transposed one (decoder). The choices that distinguish
EnCodec from DAC are options of :class:`SEANetConfig`: ELU vs Snake activations, residual kernel 3 vs 7,
dilations 1, 2, 4 ... vs 1, 3, 9, an LSTM bottleneck, decoder width.

With ``causal: true`` every convolution pads on the left only, so output frame ``f`` depends on input samples
before ``(f + 1) * hop`` only; :func:`receptive_field` says how far back it looks (used for chunked encoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class SEANetConfig:
    """Architecture of the convolutional encoder / decoder.

    Args:
        channels: width of the first encoder stage; doubled after every downsampling.
        decoder_channels: width of the last decoder stage (``None``: ``channels``); the decoder starts at
            ``decoder_channels * 2**len(ratios)`` (DAC's decoder: 1536 = 96 * 16).
        dim: latent dimension at the frame rate (what the quantizer sees).
        ratios: upsampling ratios of the decoder, coarse to fine; the encoder downsamples by them in reverse.
            Frame rate = sample_rate / prod(ratios) (``[8, 5, 4, 2]`` at 16 kHz -> 50 Hz).
        kernel_size / last_kernel_size: first and last convolutions.
        residual_kernel_size: kernel of the dilated conv in each residual unit (EnCodec 3, DAC 7).
        num_residual: residual units per stage (EnCodec 1, DAC 3).
        dilation_base: unit ``j`` uses dilation ``dilation_base ** j`` (EnCodec 2, DAC 3).
        compress: hidden width of a residual unit is its width divided by this (EnCodec 2, DAC 1).
        activation: ``elu`` or ``snake`` (periodic, learned frequency per channel; DAC).
        causal: pad on the left only (streamable encoder, chunked encoding gives the same tokens).
        bottleneck: ``none``, ``lstm`` (2-layer LSTM with a skip, EnCodec) or ``transformer`` at the frame rate.
        bottleneck_layers: LSTM / transformer layers.
        weight_norm: weight-normalized convolutions (both anchors use it).
        pad_mode: how convolutions pad their input: ``zeros`` (the codec first zero-pads the waveform to whole
            frames), ``constant`` (zeros, but each convolution completes its own last window, EnCodec / Mimi's
            ``constant``) or ``reflect`` (reflection, each convolution completes its last window; EnCodec).
        shortcut: skip path of each residual unit, ``identity`` (DAC) or ``conv`` (a 1x1 convolution, EnCodec).
        decoder_last_kernel_size: the decoder's last convolution (``None``: ``last_kernel_size``; DAC: 3 in the
            encoder, 7 in the decoder).
        output_tanh: the decoder ends with a tanh (DAC).
        upsample_trim: what each transposed convolution cuts off, ``exact`` (``kernel - stride`` samples: exactly
            ``stride`` x its input) or ``symmetric`` (``ceil(stride / 2)`` on each side, DAC: an odd stride gives
            one sample less; the decoder then pads its output with zeros at the end to ``frames x hop``).
        encoder: ``seanet`` (strided convolutions from the waveform, EnCodec / DAC) or ``spectral`` (a causal
            log-mel front and ConvNeXt blocks at the frame rate:
            :class:`~tokenizers_mm.speech.spectral_encoder.SpectralEncoder`; always causal).
        spectral_n_fft / spectral_mels / spectral_channels / spectral_layers: STFT window (``None``: ``2 * hop``),
            mel bands (0: every linear bin), width and causal ConvNeXt blocks of the ``spectral`` encoder.
        decoder: ``seanet`` (transposed convolutions up to the sample rate, EnCodec / DAC) or ``istft``
            (ConvNeXt blocks at the frame rate and an inverse-STFT head, Vocos / WavTokenizer:
            :class:`~tokenizers_mm.speech.istft_decoder.ISTFTDecoder`; not causal).
        istft_channels / istft_layers / istft_upsample / istft_n_fft: width, ConvNeXt blocks, STFT frames per
            latent frame and STFT window (``None``: ``4 *`` the STFT hop) of the ``istft`` decoder.
        istft_phase / griffin_lim_iters: the ``istft`` decoder's phase, ``learned`` (Vocos) or ``griffin_lim``
            (magnitudes only; training uses the input's phase, decoding that many Griffin-Lim iterations).
        istft_harmonics / istft_f0_range: source-filter magnitudes for the ``istft`` decoder: with ``K > 0`` f0
            candidates log-spaced over ``istft_f0_range`` Hz, each frame's magnitude is a smooth envelope times a mix
            of a harmonic comb (a softmax over the K candidates' combs) and a flat noise floor (per-bin voicing);
            0: the head predicts every bin's magnitude directly.
    """

    channels: int = 32
    decoder_channels: int | None = None
    dim: int = 128
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    num_residual: int = 1
    dilation_base: int = 2
    compress: int = 2
    activation: str = "elu"
    causal: bool = False
    bottleneck: str = "none"
    bottleneck_layers: int = 2
    weight_norm: bool = True
    pad_mode: str = "zeros"
    shortcut: str = "identity"
    decoder_last_kernel_size: int | None = None
    output_tanh: bool = False
    upsample_trim: str = "exact"
    encoder: str = "seanet"
    spectral_n_fft: int | None = None
    spectral_mels: int = 80
    spectral_channels: int = 128
    spectral_layers: int = 4
    decoder: str = "seanet"
    istft_channels: int = 256
    istft_layers: int = 8
    istft_n_fft: int | None = None
    istft_upsample: int = 1
    istft_phase: str = "learned"
    griffin_lim_iters: int = 32
    istft_harmonics: int = 0
    istft_f0_range: list[float] = field(default_factory=lambda: [60.0, 420.0])

    def __post_init__(self) -> None:
        if self.encoder not in ("seanet", "spectral"):
            raise ValueError(f"encoder must be 'seanet' or 'spectral', got {self.encoder!r}")
        if self.decoder not in ("seanet", "istft"):
            raise ValueError(f"decoder must be 'seanet' or 'istft', got {self.decoder!r}")
        if self.pad_mode not in ("zeros", "constant", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros', 'constant' or 'reflect', got {self.pad_mode!r}")
        if self.upsample_trim not in ("exact", "symmetric"):
            raise ValueError(f"upsample_trim must be 'exact' or 'symmetric', got {self.upsample_trim!r}")
        if self.shortcut not in ("identity", "conv"):
            raise ValueError(f"shortcut must be 'identity' or 'conv', got {self.shortcut!r}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.ratios))


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``x + sin^2(alpha x) / alpha`` (the epsilon keeps ``alpha -> 0`` finite)."""
    return x + (alpha * x).sin().square() / (alpha + 1e-9)


class _SnakeFunction(torch.autograd.Function):
    """``x + sin^2(a x) / a`` that saves only its inputs for backward (the composed ops keep three activation-sized
    intermediates alive per call; recomputing ``sin(2 a x)`` in backward is cheaper than storing them)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        return _snake(x, alpha)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, alpha = ctx.saved_tensors
        a = alpha + 1e-9
        ax = alpha * x
        # d/dx = 1 + sin(2ax);  d/da = x sin(2ax) / a - sin^2(ax) / a^2
        s2 = (2 * ax).sin()
        gx = grad + grad * s2 if ctx.needs_input_grad[0] else None
        ga = None
        if ctx.needs_input_grad[1]:
            per = grad * (x * s2 / a - ax.sin().square() / (a * a))
            ga = per.sum(dim=[d for d in range(per.ndim) if alpha.shape[d] == 1], keepdim=True)
        return gx, ga


class Snake(nn.Module):
    """Snake activation ``x + sin^2(alpha x) / alpha`` with a learned ``alpha`` per channel (``[B, C, T]``).

    Backward recomputes from the input alone (:class:`_SnakeFunction`), which cut the peak memory of a DAC-sized
    training step (``scripts/bench_speech.py``); set ``memory_efficient = False`` for the plain composed ops.
    """

    memory_efficient = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        if self.memory_efficient and torch.is_grad_enabled():
            return _SnakeFunction.apply(x, a.to(x.dtype))
        return _snake(x, a)


def activation(kind: str, channels: int) -> nn.Module:
    if kind == "elu":
        return nn.ELU()
    if kind == "snake":
        return Snake(channels)
    raise ValueError(f"activation must be 'elu' or 'snake', got {kind!r}")


def init_conv(conv: nn.Module, fan_in: int) -> nn.Module:
    """Weights ``N(0, 1 / fan_in)`` and zero biases, so each layer keeps its input's scale.

    PyTorch's default conv init has a variance of ``1 / (3 fan_in)`` and biases of the same size: through the ~10
    layers between waveform and latent the signal shrinks ~1000x in variance while the biases do not, so at
    initialisation the output barely depends on the input and a short training never learns to use it
    (measured: the decoder's output for two different clips differed by 3e-5 at an RMS of 0.12).
    """
    nn.init.normal_(conv.weight, std=fan_in ** -0.5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class PaddedConv1d(nn.Module):
    """Conv1d that keeps ``T_out = ceil(T / stride)``: left padding only when causal, else split evenly."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 causal: bool = False, norm: bool = True, pad_mode: str = "zeros", bias: bool = True) -> None:
        super().__init__()
        conv = init_conv(nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, bias=bias), cin * kernel)
        self.conv = weight_norm(conv) if norm else conv
        self.causal, self.stride, self.pad_mode = causal, stride, pad_mode
        self.pad_total = (kernel - 1) * dilation + 1 - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        # extra right padding completes the last window: T -> ceil(T / stride) frames
        extra = math.ceil(t / self.stride) * self.stride - t
        if self.causal:
            left, right = self.pad_total, extra
        else:
            right = self.pad_total // 2
            left, right = self.pad_total - right, right + extra
        if self.pad_mode == "reflect" and (left or right):
            return self.conv(_reflect_pad(x, left, right))
        if self.pad_mode == "replicate" and (left or right):
            return self.conv(nn.functional.pad(x, (left, right), mode="replicate"))
        return self.conv(nn.functional.pad(x, (left, right)))


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflection padding of ``[B, C, T]`` that also works when ``T`` is not longer than the padding: the input is
    first extended with zeros on the right so that a reflection exists, and that extension is cut off again."""
    t = x.shape[-1]
    extra = max(0, max(left, right) - t + 1)
    if extra:
        x = nn.functional.pad(x, (0, extra))
    y = nn.functional.pad(x, (left, right), mode="reflect")
    return y[..., : y.shape[-1] - extra] if extra else y


class PaddedConvTranspose1d(nn.Module):
    """ConvTranspose1d with ``T_out = T * stride``: the overlap is trimmed on the right (causal) or both sides."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, causal: bool = False,
                 norm: bool = True, symmetric: bool = False, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        # each output sample sums kernel / stride taps of every input channel (of its group)
        conv = init_conv(nn.ConvTranspose1d(cin, cout, kernel, stride=stride, groups=groups, bias=bias),
                         cin // groups * max(1, kernel // stride))
        self.conv = weight_norm(conv) if norm else conv
        self.causal, self.trim = causal, kernel - stride
        # DAC's ConvTranspose1d(padding=ceil(stride / 2)): that many samples off each side
        self.symmetric = (stride + 1) // 2 if symmetric and not causal else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.symmetric:
            return y[..., self.symmetric: y.shape[-1] - self.symmetric]
        if self.trim == 0:
            return y
        if self.causal:
            return y[..., : y.shape[-1] - self.trim]
        right = self.trim // 2
        left = self.trim - right
        return y[..., left: y.shape[-1] - right]


class ResidualUnit(nn.Module):
    """act -> dilated conv (width / compress) -> act -> 1x1 conv, added to the input (or to a 1x1 conv of it when
    ``cfg.shortcut == "conv"``)."""

    def __init__(self, channels: int, cfg: SEANetConfig, dilation: int) -> None:
        super().__init__()
        hidden = channels // cfg.compress
        self.block = nn.Sequential(
            activation(cfg.activation, channels),
            PaddedConv1d(channels, hidden, cfg.residual_kernel_size, dilation=dilation, causal=cfg.causal,
                         norm=cfg.weight_norm, pad_mode=cfg.pad_mode),
            activation(cfg.activation, hidden),
            PaddedConv1d(hidden, channels, 1, causal=cfg.causal, norm=cfg.weight_norm, pad_mode=cfg.pad_mode),
        )
        self.shortcut = (PaddedConv1d(channels, channels, 1, causal=cfg.causal, norm=cfg.weight_norm)
                         if cfg.shortcut == "conv" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.block(x)


class SequenceBottleneck(nn.Module):
    """LSTM (with a skip, EnCodec) or transformer layers over frames ``[B, C, F]``; causal when the codec is."""

    def __init__(self, channels: int, kind: str, layers: int, causal: bool) -> None:
        super().__init__()
        self.kind, self.causal = kind, causal
        if kind == "lstm":
            self.net = nn.LSTM(channels, channels, num_layers=layers, batch_first=True)
        elif kind == "transformer":
            heads = max(1, channels // 64)
            layer = nn.TransformerEncoderLayer(channels, heads, 4 * channels, dropout=0.0, batch_first=True,
                                               norm_first=True, activation="gelu")
            self.net = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"bottleneck must be 'none', 'lstm' or 'transformer', got {kind!r}")

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``x [B, C, F]`` -> ``([B, C, F], new LSTM state or None)``; ``state`` continues a causal stream."""
        h = x.transpose(1, 2)
        if self.kind == "lstm":
            y, new_state = self.net(h, state)
        else:
            mask = nn.Transformer.generate_square_subsequent_mask(h.shape[1], device=h.device) if self.causal else None
            y, new_state = self.net(h, mask=mask, is_causal=self.causal), None
        return x + y.transpose(1, 2), new_state


class SEANetEncoder(nn.Module):
    """``[B, 1, T]`` waveform -> ``[B, dim, ceil(T / hop)]`` latent frames."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        pad = cfg.pad_mode
        layers: list[nn.Module] = [PaddedConv1d(1, c, cfg.kernel_size, causal=cfg.causal, norm=cfg.weight_norm,
                                                pad_mode=pad)]
        for ratio in reversed(cfg.ratios):
            layers += [ResidualUnit(c, cfg, cfg.dilation_base ** j) for j in range(cfg.num_residual)]
            layers += [activation(cfg.activation, c),
                       PaddedConv1d(c, 2 * c, 2 * ratio, stride=ratio, causal=cfg.causal, norm=cfg.weight_norm,
                                    pad_mode=pad)]
            c *= 2
        self.front = nn.Sequential(*layers)
        self.bottleneck = (SequenceBottleneck(c, cfg.bottleneck, cfg.bottleneck_layers, cfg.causal)
                           if cfg.bottleneck != "none" else None)
        self.back = nn.Sequential(activation(cfg.activation, c),
                                  PaddedConv1d(c, cfg.dim, cfg.last_kernel_size, causal=cfg.causal,
                                               norm=cfg.weight_norm, pad_mode=pad))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.front(wave)
        if self.bottleneck is not None:
            h, _ = self.bottleneck(h)
        return self.back(h)


class SEANetDecoder(nn.Module):
    """``[B, dim, F]`` latent frames -> ``[B, 1, F * hop]`` waveform (unbounded unless ``cfg.output_tanh``)."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        base = cfg.decoder_channels or cfg.channels
        c = base * 2 ** len(cfg.ratios)
        pad = cfg.pad_mode
        self.first = PaddedConv1d(cfg.dim, c, cfg.kernel_size, causal=cfg.causal, norm=cfg.weight_norm, pad_mode=pad)
        self.bottleneck = (SequenceBottleneck(c, cfg.bottleneck, cfg.bottleneck_layers, cfg.causal)
                           if cfg.bottleneck != "none" else None)
        ups: list[nn.Module] = []
        for ratio in cfg.ratios:
            ups += [activation(cfg.activation, c),
                    PaddedConvTranspose1d(c, c // 2, 2 * ratio, ratio, causal=cfg.causal, norm=cfg.weight_norm,
                                          symmetric=cfg.upsample_trim == "symmetric")]
            c //= 2
            ups += [ResidualUnit(c, cfg, cfg.dilation_base ** j) for j in range(cfg.num_residual)]
        ups += [activation(cfg.activation, c),
                PaddedConv1d(c, 1, cfg.decoder_last_kernel_size or cfg.last_kernel_size, causal=cfg.causal,
                             norm=cfg.weight_norm, pad_mode=pad)]
        self.ups = nn.Sequential(*ups)
        self.output_tanh, self.hop = cfg.output_tanh, cfg.hop_length

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.first(z)
        if self.bottleneck is not None:
            h, _ = self.bottleneck(h)
        h = self.ups(h)
        h = torch.tanh(h) if self.output_tanh else h
        short = z.shape[-1] * self.hop - h.shape[-1]
        return nn.functional.pad(h, (0, short)) if short > 0 else h

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the last convolution (for gradient-based loss weighting)."""
        return self.ups[-1].conv.weight


def receptive_field(cfg: SEANetConfig) -> int:
    """Samples of past context the convolutional front of a causal encoder needs (bottleneck excluded)."""
    if cfg.encoder == "spectral":
        from .spectral_encoder import spectral_receptive_field

        return spectral_receptive_field(cfg)
    r, jump = cfg.kernel_size, 1
    for ratio in reversed(cfg.ratios):
        for j in range(cfg.num_residual):
            r += (cfg.residual_kernel_size - 1) * cfg.dilation_base ** j * jump
        r += (2 * ratio - 1) * jump
        jump *= ratio
    return r
