"""Composable configs: every recipe made of a family base plus a variant resolves, through LightningCLI's own parser
(``fit --print_config``), to exactly the config of the single full file it replaced.

``tests/data/recipes/<recipe>.yaml`` holds those full files as they were before the split (comments dropped). A
deliberate change of a recipe changes its copy there in the same commit, e.g. by writing the new resolved config:
``tokenizers-mm fit --config configs/image/base_1d_tiny.yaml --config configs/image/flextok_tiny.yaml
--print_config > tests/data/recipes/flextok_tiny.yaml``.
"""

from __future__ import annotations

import glob
import os

import pytest

from tokenizers_mm import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FROZEN = os.path.join(ROOT, "tests", "data", "recipes")
COMPOSED = sorted(name for name, parts in recipes.RECIPES.items() if len(parts) > 1)


def _diff(a, b, path=""):
    """The key paths where two nested dicts / lists differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k, "<missing>"), b.get(k, "<missing>"),
                                                                         f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("name", COMPOSED)
def test_recipe_resolves_to_the_full_file_it_replaced(name):
    composed = recipes.resolve(recipes.files(name))
    frozen = recipes.resolve([os.path.join(FROZEN, f"{name}.yaml")])
    assert composed == frozen, _diff(composed, frozen)
    assert composed["trainer"]["default_root_dir"] == f"runs/{name}"


def test_every_image_and_shape_config_belongs_to_a_recipe():
    named = {p for parts in recipes.RECIPES.values() for p in parts}
    present = {os.path.relpath(p, recipes.CONFIGS) for d in ("image", "shape")
               for p in glob.glob(os.path.join(recipes.CONFIGS, d, "*.yaml"))}
    assert present == {p for p in named if p.split("/")[0] in ("image", "shape")}
    assert sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(FROZEN, "*.yaml"))) == COMPOSED


def test_merging_is_jsonargparse_s(tmp_path):
    """The rules the base files rely on: a later file's option group merges key by key into the earlier one, a
    later list replaces the earlier list whole."""
    base = recipes.files("vat_tiny")
    later = tmp_path / "later.yaml"
    later.write_text("trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.LearningRateMonitor\n"
                     "model:\n  init_args:\n    encoder: {width: 64}\n    optimizer: {lr: 0.5}\n")
    before, after = recipes.resolve(base), recipes.resolve([*base, str(later)])
    assert [c["class_path"] for c in after["trainer"]["callbacks"]] == ["pytorch_lightning.callbacks.LearningRateMonitor"]
    enc, opt = after["model"]["init_args"]["encoder"], after["model"]["init_args"]["optimizer"]
    assert enc == {**before["model"]["init_args"]["encoder"], "width": 64}
    assert opt == {**before["model"]["init_args"]["optimizer"], "lr": 0.5}


def test_files_and_config_args():
    assert recipes.config_args("vat_tiny") == ["--config", os.path.join(recipes.CONFIGS, "shape/base_vat.yaml"),
                                                "--config", os.path.join(recipes.CONFIGS, "shape/vat_tiny.yaml")]
    assert recipes.files("speech/codec_tiny") == [os.path.join(recipes.CONFIGS, "speech/codec_tiny.yaml")]
    with pytest.raises(ValueError, match="recipe 'nope'"):
        recipes.files("nope")


OLD_IMAGE_CONFIG = """
seed_everything: 0
trainer: {accelerator: cpu, max_steps: 1, limit_val_batches: 0, enable_progress_bar: false, logger: false,
          enable_model_summary: false, callbacks: []}
model:
  class_path: tokenizers_mm.image.tokenizer1d.OneDTokenizer
  init_args:
    image_size: 32
    patch_size: 8
    num_tokens: 4
    encoder: {width: 32, depth: 1, heads: 2}
    decoder: {width: 32, depth: 1, heads: 2}
    loss: {gan_weight: 0.1, disc_channels: 8, disc_layers: 2}
data: {modality: image, train_urls: EMBEDDED/image, val_urls: null, batch_size: 2, batches_per_epoch: 1,
       num_workers: 0, image: {size: 32}}
"""


def test_an_old_class_path_and_old_loss_keys_train_and_their_checkpoint_loads(embedded, tmp_path):
    """A config of the old names (class_path OneDTokenizer, loss.gan_weight / disc_*) trains the renamed module
    with the adversarial block; a checkpoint recording the old class and old keys rebuilds and resumes."""
    import torch

    from tokenizers_mm.checkpointing import CLASS_KEY, load_tokenizer
    from tokenizers_mm.cli import main
    from tokenizers_mm.harness import check_resume
    from tokenizers_mm.image.tokenizer1d import OneDImageModule

    path = tmp_path / "old.yaml"
    path.write_text(OLD_IMAGE_CONFIG.replace("EMBEDDED", embedded))
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    ckpt = torch.load(next((tmp_path / "run").rglob("*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt[CLASS_KEY] == "tokenizers_mm.image.tokenizer1d.OneDImageModule"
    hp = ckpt["hyper_parameters"]
    assert hp["adversarial"]["weight"] == 0.1 and hp["adversarial"]["discriminator"] == {"channels": 8,
                                                                                        "num_layers": 2}
    # as an older version wrote it: the old class name, the discriminator's settings among the loss keys
    adv = hp.pop("adversarial")
    hp["loss"].update(gan_weight=adv["weight"], gan_start_step=0, disc_channels=8, disc_layers=2, disc_lr=adv["lr"])
    ckpt[CLASS_KEY] = "tokenizers_mm.image.tokenizer1d.OneDTokenizer"
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    model = load_tokenizer(str(old))
    assert type(model) is OneDImageModule and model.discriminator is not None
    assert model.adversarial_cfg.kind == "vqgan" and model.adversarial_cfg.schedule == "constant"
    assert torch.equal(model.discriminator.net[0].weight, ckpt["state_dict"]["discriminator.net.0.weight"])
    check_resume(str(old), OneDImageModule(**model.hparams))
    ckpt[CLASS_KEY] = "tokenizers_mm.image.fsq_autoencoder.FSQAutoencoder"
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match="holds a tokenizers_mm.image.fsq_autoencoder.FSQAutoencoder"):
        check_resume(str(old), OneDImageModule(**model.hparams))
