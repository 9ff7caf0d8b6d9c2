"""One adversarial training step for every modality: its settings, its objectives and the module that runs it.

:class:`AdversarialModule` extends :class:`~tokenizers_mm.harness.TokenizerModule` with manual optimization: per
batch one generator step (AdamW over :meth:`~AdversarialModule.generator_module`, the harness's schedule, gradient
clipping at ``optimizer.grad_clip``), then, once ``adversarial.start_step`` is reached, one discriminator step
(its own AdamW, schedule and clipping from :class:`AdversarialConfig`). ``trainer.global_step`` counts generator
steps only. A modality supplies

- ``build_discriminator(options) -> nn.Module``: its discriminator(s) from ``adversarial.discriminator``;
- ``discriminator_logits(x) -> list[Tensor]``: one logit tensor per discriminator (> 0: real);
- ``generator_step(batch, with_gan) -> GeneratorStep``: its losses (with its adversarial terms when ``with_gan``,
  built with :func:`generator_loss`), the objective to minimise and the real / generated samples the
  discriminator compares.

The objectives (:func:`generator_loss`, :func:`discriminator_loss`) are written once here for every modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import as_config
from .harness import TokenizerModule, adamw, lr_factor, param_groups, step_schedule

KINDS = ("hinge", "lsgan", "vqgan")
SCHEDULES = ("generator", "constant")


@dataclass
class AdversarialConfig:
    """Discriminators and their training, the same keys for every modality (``model.init_args.adversarial``).

    Args:
        weight: weight of the generator's adversarial term; 0 builds no discriminator.
        start_step: generator step from which the discriminator trains and the adversarial term counts.
        kind: the objective pair: ``hinge`` (EnCodec: D ``relu(1 - D(x)) + relu(1 + D(G))``, G ``relu(1 - D(G))``),
            ``lsgan`` (DAC: D ``(1 - D(x))^2 + D(G)^2``, G ``(1 - D(G))^2``) or ``vqgan`` (VQGAN: half the hinge
            for D, ``-D(G)`` for G); averaged over discriminators.
        discriminator: the modality's discriminator options (image: ``channels``, ``num_layers``, ``norm`` of the
            patch discriminator; speech: the fields of ``DiscriminatorConfig``); None: its defaults.
        lr / betas / weight_decay: the discriminator's AdamW; None takes the generator's ``optimizer`` value.
        schedule: ``generator``: the generator's warmup and decay (``optimizer.warmup_steps`` / ``schedule`` /
            ``min_lr_ratio``) counted in discriminator steps, decaying over the steps after ``start_step``;
            ``constant``: ``lr`` throughout.
        grad_clip: clip the discriminator's gradient norm to this value (None: no clipping).
    """

    weight: float = 0.0
    start_step: int = 0
    kind: str = "hinge"
    discriminator: dict[str, Any] | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    schedule: str = "generator"
    grad_clip: float | None = None


def generator_loss(fake_logits: list[torch.Tensor], kind: str) -> torch.Tensor:
    """The generator's adversarial term on each discriminator's logits of generated samples, averaged."""
    if kind == "hinge":
        terms = [F.relu(1 - f).mean() for f in fake_logits]
    elif kind == "lsgan":
        terms = [(1 - f).pow(2).mean() for f in fake_logits]
    elif kind == "vqgan":
        terms = [-f.mean() for f in fake_logits]
    else:
        raise ValueError(f"adversarial.kind must be one of {list(KINDS)}, got {kind!r}")
    return torch.stack(terms).mean()


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor], kind: str) -> torch.Tensor:
    """The discriminators' loss (real -> 1, generated -> -1 for the hinges, 0 for lsgan), averaged over them."""
    if kind in ("hinge", "vqgan"):
        terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    elif kind == "lsgan":
        terms = [(1 - r).pow(2).mean() + f.pow(2).mean() for r, f in zip(real_logits, fake_logits)]
    else:
        raise ValueError(f"adversarial.kind must be one of {list(KINDS)}, got {kind!r}")
    loss = torch.stack(terms).mean()
    return 0.5 * loss if kind == "vqgan" else loss


def legacy_adversarial(adversarial: AdversarialConfig | dict | None, old: dict[str, Any],
                       renames: dict[str, str], defaults: dict[str, Any]) -> AdversarialConfig:
    """The adversarial settings of a module, from ``adversarial`` or from the ``loss`` keys older configs and
    checkpoints used (``old``: their set values by old name; ``renames``: old name -> ``adversarial`` field, or
    ``discriminator.<option>``; ``defaults``: the values those configs implied for every unset field).

    Raises ``ValueError`` naming both keys when an old key and ``adversarial`` are given together.
    """
    given = {k: v for k, v in old.items() if v is not None}
    if not given:
        return as_config(AdversarialConfig, adversarial)
    if adversarial is not None:
        name = sorted(given)[0]
        raise ValueError(f"loss.{name} is the old name of adversarial.{renames[name]}; give the adversarial block "
                         "alone")
    fields = {k: v for k, v in defaults.items()}
    fields["discriminator"] = dict(defaults.get("discriminator") or {})
    for name, value in given.items():
        target = renames[name]
        if target.startswith("discriminator."):
            fields["discriminator"][target.split(".", 1)[1]] = value
        elif target == "discriminator":
            fields["discriminator"].update(value)
        else:
            fields[target] = value
    return AdversarialConfig(**fields)


class GeneratorStep(NamedTuple):
    """One generator step's outcome: ``losses`` to log (``losses["loss"]`` the total), ``objective`` to
    backpropagate, ``real`` / ``fake`` the samples of the discriminator step (``fake`` None without one)."""

    losses: dict[str, torch.Tensor]
    objective: torch.Tensor
    real: torch.Tensor
    fake: torch.Tensor | None


class AdversarialModule(TokenizerModule):
    """A tokenizer trained with a discriminator (see the module docstring for what a modality supplies)."""

    prog_bar_losses: tuple[str, ...] = ("loss",)

    def setup_adversarial(self, adversarial: AdversarialConfig) -> None:
        """Switch to manual optimization and build the discriminator when ``adversarial.weight > 0``; call it
        where the discriminator's weights are to be drawn (it consumes the random stream)."""
        if adversarial.kind not in KINDS:
            raise ValueError(f"adversarial.kind must be one of {list(KINDS)}, got {adversarial.kind!r}")
        if adversarial.schedule not in SCHEDULES:
            raise ValueError(f"adversarial.schedule must be one of {list(SCHEDULES)}, got {adversarial.schedule!r}")
        self.adversarial_cfg = adversarial
        self.automatic_optimization = False
        self.discriminator = (self.build_discriminator(dict(adversarial.discriminator or {}))
                              if adversarial.weight > 0 else None)

    # ---- what a modality supplies -------------------------------------------------------------------
    def build_discriminator(self, options: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def discriminator_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def generator_step(self, batch: dict[str, Any], with_gan: bool) -> GeneratorStep:
        raise NotImplementedError

    def generator_module(self) -> nn.Module:
        """What the generator's optimizer trains (default: the codec)."""
        return self.codec

    # ---- the adversarial step -------------------------------------------------------------------------
    def adversarial_active(self) -> bool:
        """Whether this step trains the discriminator and counts the adversarial terms."""
        return self.discriminator is not None and self.global_step >= self.adversarial_cfg.start_step

    def adversarial_generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial term for generated samples ``fake`` (gradients reach the generator)."""
        return generator_loss(self.discriminator_logits(fake), self.adversarial_cfg.kind)

    def configure_optimizers(self):
        c, a = self.optim_config, self.adversarial_cfg
        opt_g = adamw(param_groups(self.generator_module(), c.weight_decay), c)
        optimizers, schedulers = [opt_g], [step_schedule(opt_g, self.lr_lambda())]
        if self.discriminator is not None:
            opt_d = adamw(self.discriminator.parameters(), c, a.lr, a.betas, a.weight_decay)
            total = max(0, self.schedule_total_steps() - a.start_step)
            factor = ((lambda s: lr_factor(s, c.warmup_steps, total, c.schedule, c.min_lr_ratio))
                      if a.schedule == "generator" else (lambda s: 1.0))
            optimizers.append(opt_d)
            schedulers.append(step_schedule(opt_d, factor))
        return optimizers, schedulers

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        with_gan = self.adversarial_active()
        step = self.generator_step(batch, with_gan)
        self._optimize(opts[0], step.objective, self.optim_config.grad_clip)
        opts[0].step()  # the only step Lightning counts: global_step == generator steps
        scheds[0].step()
        losses = step.losses
        if with_gan and step.fake is not None:
            d_loss = discriminator_loss(self.discriminator_logits(step.real),
                                        self.discriminator_logits(step.fake.detach()), self.adversarial_cfg.kind)
            self._optimize(opts[1], d_loss, self.adversarial_cfg.grad_clip)
            opts[1].optimizer.step()  # the raw optimizer: not counted in global_step
            scheds[1].step()
            losses["disc"] = d_loss.detach()
        self.log_training(batch, losses, lr=scheds[0].get_last_lr()[0], prog_bar=self.prog_bar_losses)
        return losses["loss"].detach()

    def _optimize(self, opt: Any, objective: torch.Tensor, clip: float | None) -> None:
        """Fresh gradients of ``objective`` for ``opt``'s parameters, their norm clipped to ``clip`` when set."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(objective)
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
