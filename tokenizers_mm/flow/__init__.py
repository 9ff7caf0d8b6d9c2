"""The rectified-flow decoder family shared by every modality.

- :class:`~.denoiser.FlowDenoiser`: a transformer that takes noised target tokens (image patches, audio
  frames, shape latents) and the tokenizer's token sequence with its mask, and predicts velocity
  (in-context conditioning, AdaLN-zero on time).
- :mod:`.rectified_flow`: the training objective (target = noise - x0, logit-normal timesteps, condition
  dropout for classifier-free guidance) and Euler sampling through diffusers'
  ``FlowMatchEulerDiscreteScheduler`` with guidance and seeds.
"""

from .denoiser import DenoiserConfig, FlowDenoiser
from .rectified_flow import (
    FlowConfig,
    flow_matching_loss,
    guide,
    interpolate,
    sample_flow,
    sample_sigmas,
    seeded_noise,
    velocity_target,
)

__all__ = ["DenoiserConfig", "FlowDenoiser", "FlowConfig", "flow_matching_loss", "guide", "interpolate",
           "sample_flow", "sample_sigmas", "seeded_noise", "velocity_target"]
