"""``SpeechModule``: trains a :class:`~tokenizers_mm.speech.codec.SpeechCodec` (the harness's adversarial step).

Generator loss: ``mel_weight`` x multi-scale log-mel L1 + ``waveform_weight`` x waveform L1 + ``commit_weight`` x
RVQ commitment, plus, once the step reaches ``adversarial.start_step``, ``adversarial.weight`` x adversarial +
``feat_weight`` x feature matching against multi-period and multi-scale STFT discriminators. With ``balancer: true`` the
waveform-side terms (mel, waveform, adversarial, feature matching) go through EnCodec's gradient balancer, their
weights then being shares of the gradient. Optional DM-Codec distillation pulls the first ``rvq_layer``
codebooks' output toward a speech model's features and / or a text LM's embeddings (see :class:`DistillConfig`).

Validation logs the mel distance at every number of codebooks in ``val_quantizers`` and writes WAV files of
originals and reconstructions (plus a spectrogram figure) under ``<run>/samples``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adversarial import (
    AdversarialConfig,
    AdversarialModule,
    GeneratorStep,
    generator_loss,
    legacy_adversarial,
)
from ..config import as_config, plain
from ..harness import OptimizerConfig
from .codec import RVQConfig, SpeechCodec
from .discriminators import DiscriminatorConfig, WaveDiscriminator
from .latent_transformer import LatentConfig
from .losses import LossBalancer, MultiScaleMelLoss, distillation_loss, feature_matching_loss
from .seanet import SEANetConfig


@dataclass
class SpeechLossConfig:
    """Loss weights (see the module docstring); the discriminators' settings are under ``adversarial``.

    Args:
        feat_weight: weight of the feature-matching term (counted while the adversarial term is).
        mel_windows / mel_bins: STFT window sizes and mel bands of the multi-scale mel loss.
        balancer / balancer_total_norm / balancer_decay: EnCodec's loss balancer on the waveform-side terms.
        pitch_weight: weight of the harmonic inverse-STFT decoder's pitch cross-entropy against the input's cepstral
            pitch (``istft_harmonics > 0`` with ``istft_phase: griffin_lim``;
            :class:`~tokenizers_mm.speech.istft_decoder.ISTFTDecoder`).
        adv_weight / adv_start_step / adv_kind / disc_lr / discriminator: the old names of ``adversarial.weight`` /
            ``start_step`` / ``kind`` / ``lr`` / ``discriminator``, still read (older configs and checkpoints);
            with any of them set the rest take their old defaults (1.0, 0, ``hinge``, the generator's rate, the
            default discriminators, the generator's schedule, clipping at 10 x ``optimizer.grad_clip``).
    """

    mel_weight: float = 15.0
    waveform_weight: float = 1.0
    commit_weight: float = 1.0
    feat_weight: float = 2.0
    mel_windows: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_bins: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    balancer: bool = False
    balancer_total_norm: float = 1.0
    balancer_decay: float = 0.999
    pitch_weight: float = 0.0
    adv_weight: float | None = None
    adv_start_step: int | None = None
    adv_kind: str | None = None
    disc_lr: float | None = None
    discriminator: DiscriminatorConfig | dict | None = None


# old SpeechLossConfig key -> its AdversarialConfig field
LEGACY_RENAMES = {"adv_weight": "weight", "adv_start_step": "start_step", "adv_kind": "kind", "disc_lr": "lr",
                  "discriminator": "discriminator"}


@dataclass
class DistillConfig:
    """DM-Codec distillation into the first ``rvq_layer`` codebooks (1: RVQ-1 only).

    Teachers load from local folders (nothing is downloaded). ``source: online`` runs them on every batch;
    ``precomputed`` reads features that ``tokenizers-mm data teacher-features`` stored in the shards (batch keys
    ``teacher_speech`` / ``teacher_lm``); then ``speech_dim`` / ``lm_dim`` give their widths.

    Args:
        speech_teacher: folder of a transformers speech model (HuBERT, WavLM, wav2vec 2.0).
        lm_teacher: folder of a transformers text model (BERT ...) embedding the transcripts.
        recognizer: folder of a CTC recognizer (wav2vec 2.0 CTC) that transcribes and times words for the LM
            targets; without it the shards' ``txt`` transcripts are spread over the clip.
        teacher_layer: hidden layer of the teachers (-1: last).
        rvq_layer: how many codebooks form the distilled representation.
        speech_weight / lm_weight: loss weights (0 disables that teacher).
    """

    speech_teacher: str | None = None
    lm_teacher: str | None = None
    recognizer: str | None = None
    teacher_layer: int = -1
    rvq_layer: int = 1
    speech_weight: float = 1.0
    lm_weight: float = 1.0
    source: str = "online"
    speech_dim: int | None = None
    lm_dim: int | None = None

    @property
    def uses_speech(self) -> bool:
        return self.speech_weight > 0 and (self.speech_teacher is not None or
                                           (self.source == "precomputed" and self.speech_dim is not None))

    @property
    def uses_lm(self) -> bool:
        return self.lm_weight > 0 and (self.lm_teacher is not None or
                                       (self.source == "precomputed" and self.lm_dim is not None))


def _hidden_size(path: str, what: str) -> int:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"distill.{what}: {path!r} is not a transformers model folder (no config.json)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if "hidden_size" not in cfg:
        raise ValueError(f"distill.{what}: {cfg_path} has no hidden_size; expected a transformers encoder config")
    return int(cfg["hidden_size"])


class SpeechModule(AdversarialModule):
    """Speech codec training (see the module docstring); architecture arguments as in ``SpeechCodec``.

    Args:
        sample_rate: model rate in Hz (``None``: 16000, or the export's with ``init_from``).
        latent: Mimi's latent stage (transformers around the quantizer, a lower token frame rate); ``None``: none.
        init_from: an export folder (``tokenizers-mm export`` / ``import``) to fine-tune: encoder, quantizer and
            decoder start from its weights and architecture (``seanet`` / ``sample_rate`` may be left out; ``rvq`` may
            change only training settings; see :mod:`~tokenizers_mm.speech.init_from`); discriminators start fresh.
            A ``speech/xcodec2`` export (X-Codec 2) trains its acoustic path, adapter, FSQ projections and decoder
            under the same losses; its w2v-BERT semantic encoder stays frozen and ``distill`` must be off.
        xcodec2: :class:`~tokenizers_mm.speech.xcodec2_codec.XCodec2Codec` arguments (what a checkpoint of an
            X-Codec 2 fine-tune records; ``init_from`` fills it).
        loss: loss weights, balancer.
        adversarial: the multi-period and multi-scale STFT discriminators and their training
            (``AdversarialConfig``; ``discriminator`` holds ``DiscriminatorConfig`` fields; off by default).
        distill: DM-Codec distillation (off unless a teacher is set).
        val_quantizers: numbers of codebooks evaluated at validation (``None``: 1, n_q / 2 and n_q).
        write_clips: clips written as WAV at each validation.
        optimizer / ema_decay: the generator's AdamW + schedule; an EMA of the codec when ``ema_decay`` is set.
    """

    def __init__(self, sample_rate: int | None = None, seanet: SEANetConfig | None = None, rvq: RVQConfig | None = None,
                 loss: SpeechLossConfig | None = None, distill: DistillConfig | None = None,
                 val_quantizers: list[int] | None = None, write_clips: int = 2,
                 optimizer: OptimizerConfig | None = None, ema_decay: float | None = None,
                 init_from: str | None = None, latent: LatentConfig | None = None,
                 xcodec2: dict[str, Any] | None = None, adversarial: AdversarialConfig | None = None) -> None:
        if init_from is not None:
            from .init_from import codec_from_export

            codec = codec_from_export(init_from, sample_rate, seanet, rvq, latent)
        elif xcodec2 is not None:
            from .xcodec2_codec import XCodec2Codec

            codec = XCodec2Codec(**xcodec2)
        else:
            codec = SpeechCodec(16000 if sample_rate is None else sample_rate, seanet, rvq, latent)
        lcfg = as_config(SpeechLossConfig, loss)
        dcfg = as_config(DistillConfig, distill)
        super().__init__(optimizer=optimizer, input_key="audio", codebook_size=codec.codebook_size)
        clip = self.optim_config.grad_clip
        old = {k: getattr(lcfg, k) for k in LEGACY_RENAMES}
        if old["discriminator"] is not None:
            old["discriminator"] = plain(old["discriminator"])
        acfg = legacy_adversarial(adversarial, old, LEGACY_RENAMES, {
            "weight": 1.0, "start_step": 0, "kind": "hinge", "lr": None, "schedule": "generator",
            "grad_clip": 10 * clip if clip else None, "discriminator": {}})
        for k in LEGACY_RENAMES:
            setattr(lcfg, k, None)
        arch = codec.arch if isinstance(codec, SpeechCodec) else {"xcodec2": codec.arch}
        loss_hp = {k: v for k, v in plain(lcfg).items() if k not in LEGACY_RENAMES}
        self.save_hyperparameters(plain({**arch, "loss": loss_hp, "adversarial": acfg, "distill": dcfg,
                                         "val_quantizers": val_quantizers, "write_clips": write_clips,
                                         "optimizer": self.optim_config, "ema_decay": ema_decay}))
        self.codec, self.loss_cfg, self.distill_cfg = codec, lcfg, dcfg
        self.mel_loss = MultiScaleMelLoss(codec.sample_rate, lcfg.mel_windows, lcfg.mel_bins)
        self.setup_adversarial(acfg)
        self.balancer = LossBalancer(
            {"mel": lcfg.mel_weight, "waveform": lcfg.waveform_weight, "adv": acfg.weight,
             "feat": lcfg.feat_weight}, lcfg.balancer_total_norm, lcfg.balancer_decay) if lcfg.balancer else None
        self._setup_distillation(codec.seanet_cfg.dim if isinstance(codec, SpeechCodec) else None)
        n = codec.num_quantizers
        self.val_quantizers = sorted({q for q in (val_quantizers or [1, max(1, n // 2), n]) if 1 <= q <= n})
        self.write_clips = write_clips
        self.setup_ema(ema_decay)

    # ---- distillation ---------------------------------------------------------------------------------
    def _setup_distillation(self, dim: int | None) -> None:
        d = self.distill_cfg
        if dim is None and (d.uses_speech or d.uses_lm):
            raise ValueError("distill: an X-Codec 2 codec carries its own semantic branch; leave distill off")
        if d.source not in ("online", "precomputed"):
            raise ValueError(f"distill.source must be 'online' or 'precomputed', got {d.source!r}")
        if not 1 <= d.rvq_layer <= self.codec.num_quantizers:
            raise ValueError(f"distill.rvq_layer must lie in [1, {self.codec.num_quantizers}], got {d.rvq_layer}")
        # frozen teachers live outside the module tree: not in checkpoints, exports or the optimizer
        self._targets: list[nn.Module] = []
        self.distill_heads = nn.ModuleDict()
        if d.uses_speech:
            self.distill_heads["speech"] = nn.Linear(dim, d.speech_dim or _hidden_size(d.speech_teacher, "speech_teacher"))
        if d.uses_lm:
            self.distill_heads["lm"] = nn.Linear(dim, d.lm_dim or _hidden_size(d.lm_teacher, "lm_teacher"))
        if self.distill_heads:
            from .teachers import DistillationTargets

            online = d.source == "online"
            self._targets.append(DistillationTargets.from_paths(
                d.speech_teacher if online and d.uses_speech else None, d.lm_teacher if online and d.uses_lm else None,
                d.recognizer, layer=d.teacher_layer, lm_layer=d.teacher_layer, input_rate=self.codec.sample_rate))

    @property
    def distilling(self) -> bool:
        return len(self.distill_heads) > 0

    def teacher_targets(self, batch: dict[str, Any], num_frames: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"speech" | "lm": (targets [B, F, D], mask [B, F])}`` aligned to the codec's ``F`` frames: precomputed
        features from the batch, or the online teachers run on ``batch["audio"]``."""
        targets = self._targets[0].to(self.device)
        with torch.no_grad():
            out = targets(batch, num_frames, texts=batch.get("txt"))
        missing = [name for name in self.distill_heads if name not in out]
        if missing:
            raise KeyError(f"no distillation targets for {missing}: distill.source is {self.distill_cfg.source!r}; "
                           "precomputed targets need shards from `tokenizers-mm data teacher-features`")
        return out

    def distill_losses(self, batch: dict[str, Any], student: torch.Tensor) -> dict[str, torch.Tensor]:
        """``student``: ``[B, D, F]`` straight-through output of the first ``rvq_layer`` codebooks."""
        feats = student.transpose(1, 2)
        losses = {}
        for name, (target, mask) in self.teacher_targets(batch, feats.shape[1]).items():
            losses[f"distill_{name}"] = distillation_loss(self.distill_heads[name](feats), target.to(feats), mask)
        return losses

    # ---- losses -------------------------------------------------------------------------------------
    def generator_losses(self, batch: dict[str, Any], out: dict[str, Any], with_gan: bool) -> dict[str, torch.Tensor]:
        """All generator terms (unweighted) for a batch; ``out`` from ``SpeechCodec.forward``."""
        x, recon = batch["audio"], out["recon"]
        losses = {"mel": self.mel_loss(recon, x), "waveform": F.l1_loss(recon, x), "commit": out["commit"]}
        if with_gan:
            fake_logits, fake_feats = self.discriminator(recon)
            with torch.no_grad():
                _, real_feats = self.discriminator(x)
            losses["adv"] = generator_loss(fake_logits, self.adversarial_cfg.kind)
            losses["feat"] = feature_matching_loss(real_feats, fake_feats)
        if "distill" in out:
            losses.update(self.distill_losses(batch, out["distill"]))
        if self.training:
            losses.update(getattr(self.codec.decoder, "training_terms", {}))
        return losses

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        c, d = self.loss_cfg, self.distill_cfg
        weights = {"mel": c.mel_weight, "waveform": c.waveform_weight, "commit": c.commit_weight,
                   "adv": self.adversarial_cfg.weight, "feat": c.feat_weight, "distill_speech": d.speech_weight,
                   "distill_lm": d.lm_weight, "pitch": c.pitch_weight}
        return sum(weights[n] * v for n, v in losses.items() if n in weights)

    # ---- adversarial training: what the speech modality supplies ----------------------------------------
    prog_bar_losses = ("loss", "mel")

    def build_discriminator(self, options: dict[str, Any]) -> nn.Module:
        try:
            cfg = as_config(DiscriminatorConfig, options)
        except ValueError as exc:
            raise ValueError(f"adversarial.discriminator: {exc}") from None
        self.adversarial_cfg.discriminator = plain(cfg)  # recorded in full in the hyperparameters
        return WaveDiscriminator(cfg)

    def discriminator_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.discriminator(x)[0]

    def generator_module(self) -> nn.Module:
        return nn.ModuleList([self.codec, self.distill_heads])

    def generator_step(self, batch: dict[str, Any], with_gan: bool) -> GeneratorStep:
        x = batch["audio"]
        rvq = getattr(self.codec, "rvq_cfg", None)  # X-Codec 2's one FSQ codebook has no dropout
        out = self.codec(x, dropout=rvq.quantizer_dropout if rvq is not None else 0.0,
                         distill_layer=self.distill_cfg.rvq_layer if self.distilling else None)
        losses = self.generator_losses(batch, out, with_gan)
        if self.balancer is not None:
            grad = self.balancer.gradient(losses, out["recon"])
            rest = {n: v for n, v in losses.items() if n not in self.balancer.weights}
            objective = (out["recon"] * grad.detach()).sum() + self.weighted_total(rest)
        else:
            objective = self.weighted_total(losses)
        losses["loss"] = self.weighted_total(losses).detach()
        return GeneratorStep(losses, objective, x, out["recon"])

    # ---- validation ---------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Validation (EMA weights when kept): generator losses with all codebooks, and the mel distance and
        waveform L1 at every number of codebooks in ``val_quantizers``."""
        x = batch["audio"]
        codec = self.inference_codec(use_ema=True)
        out = codec(x, distill_layer=self.distill_cfg.rvq_layer if self.distilling else None)
        losses = self.generator_losses(batch, out, with_gan=False)
        losses["loss"] = self.weighted_total(losses)
        recons = {}
        for n in self.val_quantizers:
            r = out["recon"] if n == codec.num_quantizers else codec(x, num_quantizers=n)["recon"]
            recons[n] = r.clamp(-1, 1)
            losses[f"mel_q{n}"] = self.mel_loss(recons[n], x)
        out["recons"] = recons
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        from .audio_io import save_spectrograms, write_wav

        n = min(self.write_clips, batch["audio"].shape[0])
        if n == 0:
            return
        sr = self.codec.sample_rate
        folder = os.path.join(self.samples_dir(), f"val_step{self.global_step:07d}")
        keys = batch.get("__key__") or [f"clip{i}" for i in range(n)]
        rows = {"original": batch["audio"][:n].cpu()}
        rows.update({f"{q} codebooks ({self.codec.bitrate_kbps(q):.2f} kbps)": outputs["recons"][q][:n].cpu()
                     for q in sorted(outputs["recons"])})
        for i in range(n):
            name = str(keys[i]).replace("/", "_")
            write_wav(os.path.join(folder, f"{name}_original.wav"), rows["original"][i], sr)
            for q in sorted(outputs["recons"]):
                write_wav(os.path.join(folder, f"{name}_q{q}.wav"), outputs["recons"][q][i].cpu(), sr)
        save_spectrograms({k: v[0] for k, v in rows.items()}, sr, folder + ".png", title=str(keys[0]))
        for logger in self.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_audio"):
                exp.add_audio("val/original", rows["original"][0], self.global_step, sample_rate=sr)
                top = max(outputs["recons"])
                exp.add_audio(f"val/recon_q{top}", outputs["recons"][top][0].cpu(), self.global_step, sample_rate=sr)


SpeechTokenizer = SpeechModule  # the old name: older configs' class_path and checkpoints still load
