"""Image reconstruction losses for tokenizer training: LPIPS-style perceptual distance, PatchGAN discriminator.

* :class:`PerceptualLoss` -- an LPIPS-style distance on a frozen VGG16 whose weights come only from a local
  file (nothing is ever downloaded).
* :class:`PatchDiscriminator` -- a PatchGAN discriminator returning a grid of real/fake logits (its objectives
  are :mod:`tokenizers_mm.adversarial`'s, the same for every modality).
* :func:`adaptive_gan_weight` -- the VQGAN balance between reconstruction and adversarial gradients.

All image inputs are ``[B, 3, H, W]`` float tensors in ``[-1, 1]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import vgg16

__all__ = [
    "PerceptualLoss",
    "PatchDiscriminator",
    "adaptive_gan_weight",
]

# Indices in ``torchvision.models.vgg16().features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
_VGG_TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# LPIPS input scaling: ``(x - shift) / scale`` maps [-1, 1] images to ImageNet-normalised ones.
_LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
_LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)


def _short_list(names: list[str], limit: int = 5) -> str:
    """``"a, b, c (+N more)"`` for error messages."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class PerceptualLoss(nn.Module):
    """LPIPS-style perceptual distance on a frozen VGG16 (``d(x, y)`` per image, ``>= 0``, 0 iff identical).

    For each tap ``k`` (after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of ``vgg16().features``; 64, 128,
    256, 512, 512 channels) the features of both images are unit-normalised over channels, their squared
    difference is weighted by a non-negative 1x1 convolution ``lins[k]`` (``[1, C_k, 1, 1]``, no bias),
    averaged over space, and the five tap values are summed. Inputs are first mapped with the LPIPS scaling
    ``(x - shift) / scale`` (non-persistent buffers, so not part of the state dict).

    Every parameter is frozen (``requires_grad=False``) and the module always stays in eval mode
    (``.train()`` is a no-op), but the distance is differentiable with respect to its *inputs*, so it can be
    used directly as a training loss for a decoder.

    The unit normalisation is ``f / sqrt(sum_c f^2 + 1e-10)``: identical to LPIPS for any realistic feature
    norm, and it keeps gradients finite where a feature vector is exactly zero.

    **Weights come only from a local file** (``.safetensors``, or ``.pt`` / ``.pth`` read with
    ``torch.load(weights_only=True)``) holding exactly these keys::

        backbone.<idx>.weight, backbone.<idx>.bias   idx in 0 2 5 7 10 12 14 17 19 21 24 26 28
        lins.<i>.weight                              i in 0..4, shape [1, C_i, 1, 1], all >= 0

    Building that file from the official weights (done once, by the user, on a machine with the files):
    take the ``state_dict()`` of torchvision's ``vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features`` (the
    ImageNet weights LPIPS was trained on) and prefix each key ``"<idx>.weight"`` / ``"<idx>.bias"`` with
    ``"backbone."``; then take the official LPIPS v0.1 VGG linear layers (``weights/v0.1/vgg.pth`` of the
    LPIPS project), whose keys are ``"lin<i>.model.1.weight"`` (``i`` = 0..4, shape ``[1, C_i, 1, 1]``), and
    rename each to ``"lins.<i>.weight"``. Put the 31 tensors in one dict and write it with
    ``safetensors.torch.save_file`` (or ``torch.save``). Keys of the classifier (``classifier.*``) and
    the LPIPS ``net.*`` / ``scaling_layer.*`` keys are not used and must be left out.

    Args:
        weights_path: path of the weights file described above. ``None`` is only accepted together with
            ``_allow_random=True``; use :meth:`untrained` instead of that flag.
        _allow_random: build a randomly initialised (untrained) network; for tests and for creating a
            weights file only -- an untrained network is not a meaningful perceptual metric.
        _seed: seed of that random initialisation (the global RNG state is left untouched).

    Raises:
        FileNotFoundError: ``weights_path`` does not exist.
        ValueError: unsupported extension, missing / unexpected keys, wrong shapes, negative ``lins``
            weights or non-finite values in the file.
    """

    def __init__(
        self, weights_path: str | os.PathLike[str] | None, *, _allow_random: bool = False, _seed: int = 0
    ) -> None:
        super().__init__()
        # Build the VGG16 feature stack without allocating / initialising the (huge) classifier.
        with torch.device("meta"):
            features = vgg16(weights=None).features[: _VGG_TAPS[-1] + 1]
        self.backbone: nn.Sequential = features.to_empty(device="cpu")
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _VGG_TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

        if weights_path is None:
            if not _allow_random:
                raise ValueError(
                    "PerceptualLoss needs a local weights file (weights_path); see the class docstring for how "
                    "to build one. PerceptualLoss.untrained(seed) gives a random network for tests only."
                )
            self._random_init(_seed)
        else:
            self.load_weights(weights_path)
        self.requires_grad_(False)
        super().train(False)

    @classmethod
    def untrained(cls, seed: int = 0) -> PerceptualLoss:
        """A randomly initialised (untrained) network: for tests and for writing weights files only."""
        return cls(None, _allow_random=True, _seed=seed)

    def _random_init(self, seed: int) -> None:
        """VGG-style init (Kaiming-normal convs, zero biases), non-negative ``lins``; global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                for m in self.backbone:
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                        nn.init.zeros_(m.bias)
                for lin in self.lins:
                    lin.weight.copy_(torch.rand_like(lin.weight) / lin.weight.shape[1])

    def train(self, mode: bool = True) -> PerceptualLoss:
        """No-op: the module is frozen and always stays in eval mode, whatever ``mode`` is."""
        return super().train(False)

    @staticmethod
    def _read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
        from ..checkpointing import load_weights_file

        return load_weights_file(path, "PerceptualLoss")

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load and strictly validate a weights file (see the class docstring); parameters stay frozen."""
        state = self._read_state_dict(path)
        expected = {k: v.shape for k, v in self.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad_shape = sorted(
            f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in expected.items()
            if k in state and state[k].shape != s
        )
        problems = []
        if missing:
            problems.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_short_list(unexpected)}")
        if bad_shape:
            problems.append(f"wrong shapes: {_short_list(bad_shape)}")
        if not problems:
            non_finite = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
            negative = sorted(k for k in state if k.startswith("lins.") and bool((state[k] < 0).any()))
            if non_finite:
                problems.append(f"non-finite values in: {_short_list(non_finite)}")
            if negative:
                problems.append(f"negative lin weights in: {_short_list(negative)}")
        if problems:
            raise ValueError(f"bad PerceptualLoss weights file {os.fspath(path)!r}: " + "; ".join(problems))
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        self.requires_grad_(False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the backbone + ``lins`` state dict as a ``.safetensors`` file loadable by the constructor."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, path)

    @staticmethod
    def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        """``[B, C, h, w]`` -> same shape, each spatial feature vector scaled to unit L2 norm over ``C``."""
        return f * torch.rsqrt(f.pow(2).sum(dim=1, keepdim=True) + eps)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """VGG16 activations ``[N, C_k, H / 2**k, W / 2**k]`` at the five taps for scaled input ``x``."""
        out = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in _VGG_TAPS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance between ``x`` and ``y``.

        Args:
            x, y: ``[B, 3, H, W]`` images in ``[-1, 1]``, same shape, ``H, W >= 16``.

        Returns:
            ``[B]`` non-negative distances (0 for identical images); differentiable w.r.t. ``x`` and ``y``.
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two [B, 3, H, W] images of the same shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"PerceptualLoss needs H, W >= 16 (four 2x poolings), got {tuple(x.shape)}")
        b = x.shape[0]
        both = (torch.cat([x, y], dim=0).to(self.shift.dtype) - self.shift) / self.scale
        dist = x.new_zeros(b, dtype=self.shift.dtype)
        for f, lin in zip(self._taps(both), self.lins):
            f = self._unit_normalize(f)
            diff = (f[:b] - f[b:]).pow(2)
            dist = dist + lin(diff).mean(dim=(1, 2, 3))
        return dist


def _num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is ``<= max_groups`` (GroupNorm needs exact division)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: one real/fake logit per overlapping image patch.

    Layout (all kernels 4x4, padding 1): conv stride 2 + LeakyReLU(0.2); ``num_layers - 1`` further
    stride-2 convs doubling the width (capped at ``8 * channels``) + norm + LeakyReLU; one stride-1 conv
    (width ``min(2**num_layers, 8) * channels``) + norm + LeakyReLU; a final 1-channel stride-1 conv.
    Spatial size: ``S -> S / 2**num_layers - 2`` (e.g. 32 -> 2, 64 -> 6, 256 -> 30 for ``num_layers=3``),
    so the input side must be at least ``3 * 2**num_layers`` pixels.

    Args:
        in_channels: image channels.
        channels: width of the first conv.
        num_layers: number of stride-2 convs (``>= 1``).
        norm: ``"group"`` (GroupNorm, default) or ``"none"``.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "group") -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be 'group' or 'none', got {norm!r}")
        self.num_layers = num_layers
        use_norm = norm == "group"

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=not use_norm)]
            if use_norm:
                layers.append(nn.GroupNorm(_num_groups(c_out), c_out))
            layers.append(nn.LeakyReLU(0.2))
            return layers

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            layers += block(channels * prev, channels * mult, stride=2)
        prev, mult = mult, min(2**num_layers, 8)
        layers += block(channels * prev, channels * mult, stride=1)
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN-style init: conv weights ~ N(0, 0.02), biases 0, norm scale 1 / shift 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` images (in ``[-1, 1]``) -> ``[B, 1, h, w]`` unbounded logits (> 0 = real)."""
        return self.net(x)


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN adaptive weight ``||d rec / d W|| / (||d g / d W|| + eps)``, clamped to ``[0, max_weight]``.

    ``W`` is ``last_layer_weight`` (usually the decoder's output conv weight). Both gradients come from
    ``torch.autograd.grad(..., retain_graph=True)``: nothing is accumulated into ``.grad`` and the graph
    survives, so the caller can still ``(rec_loss + weight * g_loss).backward()`` afterwards (also under
    Lightning's automatic optimisation).

    Args:
        rec_loss: scalar reconstruction loss (e.g. L1 + perceptual) that depends on ``W``.
        g_loss: scalar generator (adversarial) loss that depends on ``W``.
        last_layer_weight: the parameter both gradients are taken with respect to.
        max_weight: upper clamp.
        eps: added to the adversarial gradient norm.

    Returns:
        A detached 0-d float tensor in ``[0, max_weight]`` on ``W``'s device.

    Raises:
        ValueError: a loss does not require grad (e.g. called under ``torch.no_grad()`` in validation) or
            does not depend on ``last_layer_weight``.
    """
    for name, loss in (("rec_loss", rec_loss), ("g_loss", g_loss)):
        if loss.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError(f"{name} does not require grad (no autograd graph; use a fixed weight outside "
                             "training)")
    rec_grad, = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True, allow_unused=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True, allow_unused=True)
    if rec_grad is None or g_grad is None:
        which = "rec_loss" if rec_grad is None else "g_loss"
        raise ValueError(f"{which} does not depend on last_layer_weight")
    weight = rec_grad.float().norm() / (g_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
