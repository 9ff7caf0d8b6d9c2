"""Rectified flow: the training objective and Euler sampling, with the conventions of diffusers.

Convention (``FlowMatchEulerDiscreteScheduler``): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with
``sigma`` running from 1 (pure noise) to 0 (data); the model predicts the velocity
``v = d x_sigma / d sigma = noise - x0``, and an Euler step is ``x <- x + (sigma_next - sigma) * v``.
Training draws sigma from diffusers' logit-normal density (SD3) and applies the same timestep ``shift``
the sampler uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from .denoiser import TIME_SCALE

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_sigma [B, ...], sigma [B]) -> v


@dataclass
class FlowConfig:
    """Rectified-flow settings (training and sampling).

    Args:
        logit_mean / logit_std: the logit-normal density of training sigmas.
        shift: timestep shift ``s * sigma / (1 + (s - 1) * sigma)`` in training and sampling (>1 spends more
            steps at high noise).
        token_dropout: probability of dropping all tokens of a sample in training (the unconditional model
            for classifier-free guidance).
        default_steps: Euler steps when ``decode`` is not told.
        default_cfg_scale: guidance scale when ``decode`` is not told (1 = no guidance, one model pass).
        prediction: the denoiser's output parameterization, ``velocity`` or ``x0`` (converted to velocity
            inside the denoiser; the loss is the velocity MSE either way).
    """

    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    token_dropout: float = 0.1
    default_steps: int = 25
    default_cfg_scale: float = 1.0
    prediction: str = "velocity"


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return sigma if shift == 1.0 else shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(batch: int, cfg: FlowConfig, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Training sigmas ``[batch]`` in (0, 1): logit-normal (diffusers' SD3 density), then shifted."""
    u = compute_density_for_timestep_sampling("logit_normal", batch, logit_mean=cfg.logit_mean,
                                              logit_std=cfg.logit_std, device=device, generator=generator)
    return shift_sigmas(u, cfg.shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) * x0 + sigma * noise`` with ``sigma`` ``[B]`` broadcast over the other dims."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow regression target ``noise - x0``."""
    return noise - x0


def flow_matching_loss(velocity: VelocityFn, x0: torch.Tensor, sigma: torch.Tensor,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between ``velocity(x_sigma, sigma)`` and ``noise - x0`` (scalar)."""
    noise = torch.randn_like(x0) if noise is None else noise
    return (velocity(interpolate(x0, noise, sigma), sigma) - velocity_target(x0, noise)).pow(2).mean()


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise ``shape`` whose row ``i`` comes from ``seeds[i]`` alone: a sample's noise does not depend
    on which batch it was decoded in."""
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def make_scheduler(steps: int, shift: float, device: torch.device | str) -> FlowMatchEulerDiscreteScheduler:
    if steps < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {steps}")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(TIME_SCALE), shift=shift)
    sched.set_timesteps(steps, device=device)
    return sched


@torch.no_grad()
def sample_flow(velocity: VelocityFn, shape: tuple[int, ...], steps: int, shift: float = 1.0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from noise (sigma = 1) to data (sigma = 0) with ``steps`` Euler steps.

    ``noise`` (``shape``) starts the path when given; otherwise it is drawn from ``generator`` (a seeded
    generator makes the sample reproducible).
    """
    sched = make_scheduler(steps, shift, device)
    x = noise if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=dtype)
    for t in sched.timesteps:
        sigma = (t / TIME_SCALE).expand(shape[0]).to(device)
        x = sched.step(velocity(x, sigma), t, x, return_dict=False)[0]
    return x


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_u + scale * (v_c - v_u)`` (``scale`` 1 = conditional only)."""
    return v_uncond + scale * (v_cond - v_uncond)
