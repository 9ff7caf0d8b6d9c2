"""``FlowReflowModule``: the second stage that makes 1-2 step decoding usable (reflow, as in InstaFlow).

A trained flow decoder (the teacher, a :class:`~tokenizers_mm.image.flow_tokenizer.FlowImageModule` checkpoint or
an export folder) integrates noise ``z`` to an image ``x_hat`` along a curved path. Reflow trains a student
decoder, initialized from the teacher, on the *straight* line between the pair: ``x_sigma = (1 - sigma) x_hat +
sigma z`` with target ``z - x_hat``. A straight flow is integrated exactly by one Euler step, so the student
decodes in 1-2 steps what the teacher needs many for. The token side (encoder, quantizer, nested dropout) is
copied and frozen: ids of the teacher and the student are identical, so token shards stay valid. The teacher's
guidance (``teacher_cfg_scale``) is distilled into the student, which then samples without guidance.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import plain
from ..eval.image_metrics import psnr_db
from ..flow import interpolate, sample_flow, velocity_target
from ..harness import OptimizerConfig, TokenizerModule
from .codec1d import eval_token_counts
from .flow_codec import FlowImageCodec


def load_flow_teacher(path: str) -> FlowImageCodec:
    """A trained flow codec from a FlowImageModule checkpoint (its EMA weights when present) or an export folder."""
    if os.path.isdir(path):
        from ..export import load_codec

        codec, _ = load_codec(path, modality="image")
    else:
        from ..checkpointing import load_tokenizer

        model = load_tokenizer(path)
        if not hasattr(model, "inference_codec"):
            raise ValueError(f"reflow teacher {path!r} holds a {type(model).__name__}, not a flow tokenizer")
        codec = model.inference_codec()
    if not isinstance(codec, FlowImageCodec):
        raise ValueError(f"reflow teacher {path!r} holds a {type(codec).__name__}; expected a rectified-flow "
                         "image decoder (FlowImageModule / image/flow export)")
    return codec.eval().requires_grad_(False)


class FlowReflowModule(TokenizerModule):
    """Reflow distillation of a flow decoder into a few-step student (see the module docstring).

    Args:
        teacher: FlowImageModule checkpoint or ``image/flow`` export folder.
        codec: the student's architecture (filled from the teacher on first construction; checkpoints carry it).
        teacher_steps / teacher_cfg_scale: how the teacher integrates each pair.
        student_steps: the student's default number of Euler steps (recorded in exports).
        sigma_sampling: ``uniform`` (InstaFlow) or ``logit_normal`` (the teacher's training density).
        val_steps: student steps at which validation logs PSNR per k.
        optimizer: AdamW + schedule (only the denoiser trains).
        ema_decay: EMA of the student (used for validation and export).
    """

    def __init__(self, teacher: str, codec: dict[str, Any] | None = None, teacher_steps: int = 16,
                 teacher_cfg_scale: float = 1.0, student_steps: int = 1, sigma_sampling: str = "uniform",
                 val_steps: list[int] | None = None, optimizer: OptimizerConfig | None = None,
                 ema_decay: float | None = None) -> None:
        if sigma_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"sigma_sampling must be 'uniform' or 'logit_normal', got {sigma_sampling!r}")
        teacher_codec = None
        if codec is None:  # first construction: the student starts as a copy of the teacher
            teacher_codec = load_flow_teacher(teacher)
            codec = dict(teacher_codec.arch)
        student = FlowImageCodec(**codec)
        if teacher_codec is not None:
            student.load_state_dict(teacher_codec.state_dict())
        student.set_sampling_defaults(steps=student_steps, cfg_scale=1.0)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=student.codebook_size)
        self.save_hyperparameters(plain({
            "teacher": teacher, "codec": student.arch, "teacher_steps": teacher_steps,
            "teacher_cfg_scale": teacher_cfg_scale, "student_steps": student_steps, "sigma_sampling": sigma_sampling,
            "val_steps": list(val_steps or [1, 2]), "optimizer": self.optim_config, "ema_decay": ema_decay}))
        self.codec = student
        for part in (student.encoder, student.quantizer, student.ordering):
            part.requires_grad_(False)
        if student.vae is not None:
            student.vae.requires_grad_(False)
        self.teacher_path, self.teacher_steps, self.teacher_cfg_scale = teacher, teacher_steps, teacher_cfg_scale
        self.sigma_sampling, self.val_steps = sigma_sampling, list(val_steps or [1, 2])
        self.num_tokens = student.num_tokens
        self.val_ks = eval_token_counts(student.num_tokens)
        self._teacher: list[FlowImageCodec] = [teacher_codec] if teacher_codec is not None else []
        self.setup_ema(ema_decay)

    def freeze_token_side(self) -> None:
        """Eval mode for encoder, quantizer and ordering (batch-norm statistics of the quantizer must not move,
        or ids would drift from the teacher's); called before every use, whatever mode the trainer set."""
        for part in (self.codec.encoder, self.codec.quantizer, self.codec.ordering):
            part.eval()

    def teacher(self) -> FlowImageCodec:
        if not self._teacher:
            self._teacher.append(load_flow_teacher(self.teacher_path))
        return self._teacher[0].to(self.device)

    # ---- training -----------------------------------------------------------------------------------
    @torch.no_grad()
    def make_pairs(self, x: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Tokens of ``x`` with a random kept prefix per sample, noise ``z`` (drawn unless given) and the teacher's
        sample ``x_hat`` from it."""
        codec, teacher = self.codec, self.teacher()
        self.freeze_token_side()
        q = codec.quantizer(codec.encoder(x))
        lengths = codec.ordering.sample_lengths(x.shape[0], codec.num_tokens, x.device)
        tokens, seen = codec.condition(q.quantized, lengths)
        shape = (x.shape[0], codec.denoiser.num_targets, codec.denoiser.x_in.in_features)
        z = torch.randn(shape, device=x.device, dtype=tokens.dtype) if z is None else z
        x_hat = sample_flow(lambda xt, s: teacher.velocity(xt, s, tokens, seen, self.teacher_cfg_scale), shape,
                            self.teacher_steps, teacher.flow.shift, x.device, tokens.dtype, noise=z)
        return {"tokens": tokens, "seen": seen, "z": z, "x_hat": x_hat, "ids": q.ids}

    def reflow_loss(self, pairs: dict[str, torch.Tensor], codec: FlowImageCodec | None = None) -> torch.Tensor:
        """MSE between the student's velocity on the straight path from ``x_hat`` to ``z`` and ``z - x_hat``."""
        codec = codec or self.codec
        b = pairs["z"].shape[0]
        if self.sigma_sampling == "uniform":
            sigma = torch.rand(b, device=pairs["z"].device)
        else:
            from ..flow import sample_sigmas

            sigma = sample_sigmas(b, codec.flow, pairs["z"].device)
        x_t = interpolate(pairs["x_hat"], pairs["z"], sigma)
        v = codec.denoiser(x_t, sigma, pairs["tokens"], pairs["seen"])
        return (v - velocity_target(pairs["x_hat"], pairs["z"])).pow(2).mean()

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        x = batch["image"]
        pairs = self.make_pairs(x)
        b = x.shape[0]
        codec = self.inference_codec(use_ema=not self.training)
        reflow = self.reflow_loss(pairs, codec)
        losses = {"loss": reflow, "reflow": reflow}
        out: dict[str, Any] = {"ids": pairs["ids"]}
        if not self.training:
            keep_rows = ~batch["pad"] if "pad" in batch else torch.ones(b, dtype=torch.bool, device=x.device)
            out["recons"] = {}
            for steps in self.val_steps:
                for k in self.val_ks:
                    r = codec.decode(pairs["ids"][:, :k], steps=steps, seed=list(range(b)))
                    losses[f"psnr_k{k}_s{steps}"] = psnr_db(r[keep_rows], x[keep_rows])
                    if steps == self.val_steps[0]:
                        out["recons"][k] = r
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.write_images_by_k(batch, outputs["recons"], f"val/reconstructions_by_k_{self.val_steps[0]}step")


FlowReflow = FlowReflowModule  # the old name: older configs' class_path and checkpoints still load

__all__ = ["FlowReflowModule", "FlowReflow", "load_flow_teacher"]
