"""The one adversarial step (tokenizers_mm.adversarial): objectives, settings and their old names, the discriminator's
optimizer, schedule, clipping and start step, and seeded short fits that give the numbers of the two GAN loops it
replaced."""

import math

import pytest
import pytorch_lightning as pl
import torch

from tokenizers_mm.adversarial import AdversarialConfig, discriminator_loss, generator_loss
from tokenizers_mm.harness import lr_factor
from tokenizers_mm.image.tokenizer1d import OneDImageModule
from tokenizers_mm.speech.tokenizer import SpeechModule

IMAGE = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 32, "depth": 1, "heads": 2},
         "decoder": {"width": 32, "depth": 1, "heads": 2}, "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]},
         "ordering": {"kind": "tail_drop"}, "optimizer": {"lr": 1e-3, "grad_clip": 1.0, "warmup_steps": 2}}
SPEECH = {"sample_rate": 16000, "seanet": {"channels": 4, "dim": 16, "ratios": [8, 5, 4, 2], "decoder": "istft",
                                           "istft_channels": 16, "istft_layers": 1},
          "rvq": {"num_quantizers": 2, "codebook_size": 4, "kmeans_init": False},
          "optimizer": {"lr": 1e-3, "grad_clip": 1.0, "warmup_steps": 2}}
SPEECH_DISC = {"periods": [2], "mpd_channels": [4], "stft_windows": [128], "stft_channels": 4}
MEL = {"mel_windows": [64, 256], "mel_bins": [10, 40]}


def test_objectives_known_values():
    two, zero = torch.full((2, 1, 3, 3), 2.0), torch.zeros(2, 1, 3, 3)
    real, fake = torch.tensor([0.5, 3.0]), torch.tensor([-3.0, 1.0])
    # hinge: relu(1 - r) = [0.5, 0] mean 0.25, relu(1 + f) = [0, 2] mean 1
    assert math.isclose(float(discriminator_loss([real], [fake], "hinge")), 1.25)
    assert math.isclose(float(discriminator_loss([real], [fake], "vqgan")), 0.625)
    assert float(discriminator_loss([two], [-two], "hinge")) == 0.0
    assert float(discriminator_loss([zero], [zero], "vqgan")) == 1.0
    # lsgan: (1 - r)^2 = [0.25, 4] mean 2.125, f^2 = [9, 1] mean 5
    assert math.isclose(float(discriminator_loss([real], [fake], "lsgan")), 7.125)
    assert float(generator_loss([torch.tensor([1.0, 2.0, 6.0])], "vqgan")) == -3.0
    assert float(generator_loss([torch.tensor([0.0, 2.0])], "hinge")) == 0.5
    assert float(generator_loss([torch.tensor([0.0, 2.0])], "lsgan")) == 1.0
    # averaged over discriminators
    assert float(generator_loss([torch.tensor([0.0]), torch.tensor([2.0])], "hinge")) == 0.5
    with pytest.raises(ValueError, match="adversarial.kind must be one of"):
        generator_loss([two], "wgan")


def test_old_loss_keys_become_the_adversarial_block():
    image = OneDImageModule(**IMAGE, loss={"gan_weight": 0.5, "disc_layers": 2, "disc_lr": 3e-4})
    assert image.adversarial_cfg == AdversarialConfig(weight=0.5, start_step=0, kind="vqgan", lr=3e-4,
                                                      schedule="constant", grad_clip=None,
                                                      discriminator={"channels": 64, "num_layers": 2})
    assert image.hparams["adversarial"]["weight"] == 0.5 and "gan_weight" not in image.hparams["loss"]
    speech = SpeechModule(**SPEECH, loss={**MEL, "adv_kind": "lsgan", "discriminator": SPEECH_DISC})
    a = speech.adversarial_cfg
    assert (a.weight, a.kind, a.lr, a.schedule, a.grad_clip) == (1.0, "lsgan", None, "generator", 10.0)
    assert a.discriminator["periods"] == [2] and speech.discriminator is not None
    # a checkpoint's hyperparameters rebuild the same module
    again = SpeechModule(**speech.hparams)
    assert again.adversarial_cfg == a and again.loss_cfg == speech.loss_cfg
    assert SpeechModule(**SPEECH, loss=MEL).discriminator is None  # the new default: no discriminator


def test_bad_adversarial_settings_name_the_key():
    with pytest.raises(ValueError, match=r"loss.gan_weight is the old name of adversarial.weight"):
        OneDImageModule(**IMAGE, loss={"gan_weight": 0.1}, adversarial={"weight": 0.1})
    with pytest.raises(ValueError, match=r"adversarial.discriminator: unknown option\(s\) \['layers'\]"):
        OneDImageModule(**IMAGE, adversarial={"weight": 0.1, "discriminator": {"layers": 2}})
    with pytest.raises(ValueError, match=r"adversarial.discriminator: unknown DiscriminatorConfig option\(s\)"):
        SpeechModule(**SPEECH, loss=MEL, adversarial={"weight": 1.0, "discriminator": {"channels": 4}})
    with pytest.raises(ValueError, match="adversarial.schedule must be one of"):
        SpeechModule(**SPEECH, loss=MEL, adversarial={"weight": 1.0, "schedule": "cosine"})
    with pytest.raises(ValueError, match="adversarial.kind must be one of"):
        OneDImageModule(**IMAGE, adversarial={"weight": 0.1, "kind": "wgan"})


def _fit(model, batches, **trainer):
    tr = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, **trainer)
    tr.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return tr


def _images(n):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "skipped": 0} for _ in range(n)]


def test_discriminator_optimizer_schedule_clipping_and_start_step():
    pl.seed_everything(0)
    model = OneDImageModule(**IMAGE, adversarial={"weight": 0.5, "start_step": 2, "lr": 2e-3, "betas": [0.5, 0.9],
                                                  "grad_clip": 0.5, "schedule": "generator",
                                                  "discriminator": {"channels": 8, "num_layers": 2}})
    clips = []
    clip = model.clip_gradients
    model.clip_gradients = lambda opt, **kw: (clips.append((opt, kw["gradient_clip_val"])), clip(opt, **kw))
    # max_steps unset: both schedules decay over Lightning's estimate (6 batches, one epoch)
    tr = _fit(model, _images(6), max_epochs=1)
    opt_g, opt_d = tr.optimizers
    assert tr.global_step == 6 and opt_d.defaults["betas"] == (0.5, 0.9)
    g_sched, d_sched = (c.scheduler for c in tr.lr_scheduler_configs)
    assert g_sched.last_epoch == 6 and d_sched.last_epoch == 4  # the discriminator steps from start_step on
    assert math.isclose(opt_g.param_groups[0]["lr"], 1e-3 * lr_factor(6, 2, 6, "cosine", 0.1))
    assert math.isclose(opt_d.param_groups[0]["lr"], 2e-3 * lr_factor(4, 2, 4, "cosine", 0.1))
    assert [v for _, v in clips] == [1.0, 1.0] + [1.0, 0.5] * 4  # generator every step, discriminator from step 2
    assert all(o.optimizer is opt_d for o, v in clips if v == 0.5)

    pl.seed_everything(0)
    constant = OneDImageModule(**IMAGE, adversarial={"weight": 0.5, "lr": 2e-3, "schedule": "constant",
                                                     "discriminator": {"channels": 8, "num_layers": 2}})
    tr = _fit(constant, _images(3), max_steps=3)
    assert tr.optimizers[1].param_groups[0]["lr"] == 2e-3


# Numbers of the two hand-written GAN loops this step replaced (image/tokenizer1d.py and speech/tokenizer.py at
# fa426be), for these seeded short fits with the discriminators on from step 0: |weights| summed, last loss.
BEFORE = {"image": {"codec": 2985.0446, "disc": 778.1115, "loss": 0.573801},
          "speech": {"codec": 5503.5088, "disc": 123.1308, "loss": 20.039682}}


def _numbers(model, batches, steps):
    tr = _fit(model, batches, max_steps=steps)
    return {"codec": sum(float(p.detach().double().abs().sum()) for p in model.codec.parameters()),
            "disc": sum(float(p.detach().double().abs().sum()) for p in model.discriminator.parameters()),
            "loss": float(tr.callback_metrics["train/loss"])}


@pytest.mark.parametrize("style", ["old keys", "adversarial block"])
def test_seeded_fits_give_the_numbers_of_the_loops_it_replaced(style):
    if style == "old keys":
        image = {"loss": {"gan_weight": 0.5, "disc_channels": 16, "disc_layers": 2}}
        speech = {"loss": {**MEL, "adv_weight": 1.0, "discriminator": SPEECH_DISC}}
    else:
        image = {"adversarial": {"weight": 0.5, "kind": "vqgan", "lr": 1e-4, "schedule": "constant",
                                 "discriminator": {"channels": 16, "num_layers": 2}}}
        speech = {"loss": MEL, "adversarial": {"weight": 1.0, "grad_clip": 10.0, "discriminator": SPEECH_DISC}}
    g = torch.Generator().manual_seed(0)
    images = [{"image": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "skipped": 0} for _ in range(4)]
    audio = [{"audio": torch.randn(2, 1, 4000, generator=g) * 0.1, "skipped": 0} for _ in range(3)]
    pl.seed_everything(0)
    got = {"image": _numbers(OneDImageModule(**IMAGE, **image), images, 4)}
    pl.seed_everything(0)
    got["speech"] = _numbers(SpeechModule(**SPEECH, **speech), audio, 3)
    for name, want in BEFORE.items():
        for key, value in want.items():
            assert got[name][key] == pytest.approx(value, rel=1e-5, abs=1e-4), (name, key, got[name])
