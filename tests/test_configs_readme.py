"""The README's recipes and its `pipelines` examples run: each example block is executed against an export of the
recipe it names, trained for two steps through `tokenizers-mm fit` with the README's `--config` files."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tokenizers_mm import recipes
from tokenizers_mm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DATA = {"flextok_tiny": "image", "vat_tiny": "mesh", "codec_tiny": "audio"}
RECIPE = {"flextok_tiny": "flextok_tiny", "vat_tiny": "vat_tiny", "codec_tiny": "speech/codec_tiny"}


def readme_examples() -> dict[str, str]:
    """The README's python blocks that load an export, by the export's name."""
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = {}
    for block in blocks:
        m = re.search(r'pipelines\.load\("exports/(\w+)"\)', block)
        if m:
            found[m.group(1)] = block
    return found


def test_readme_has_one_example_per_modality():
    assert sorted(readme_examples()) == sorted(DATA)


def test_readme_fit_commands_name_real_recipes():
    """Every `--config` the README passes exists, and each composed recipe's files appear in that order."""
    text = open(README).read()
    for path in re.findall(r"--config (configs/\S+\.yaml)", text):
        assert os.path.isfile(os.path.join(ROOT, path)), path
    cmd = "--config configs/image/base_1d_tiny.yaml --config configs/image/flextok_tiny.yaml"
    assert cmd in text and recipes.RECIPES["flextok_tiny"] == ("image/base_1d_tiny.yaml", "image/flextok_tiny.yaml")


def _samples(where):
    """The files the examples read, taken from the vendored embedded data."""
    from PIL import Image

    from tokenizers_mm.data.embedded import embedded_dir

    photos = embedded_dir("photos")
    shutil.copy(os.path.join(photos, "Autumn.jpg"), where / "photo.jpg")
    Image.open(os.path.join(photos, "Grey.jpg")).convert("RGB").resize((64, 64)).save(where / "tile.png")
    meshes = os.path.join(embedded_dir("meshes"), "pymeshlab")
    shutil.copy(os.path.join(meshes, "bunny.ply"), where / "bunny.ply")
    shutil.copy(os.path.join(meshes, "cow.obj"), where / "cow.obj")
    import soundfile as sf

    speech = embedded_dir("speech")
    wave, rate = sf.read(os.path.join(speech, sorted(n for n in os.listdir(speech) if n.endswith(".flac"))[0]))
    sf.write(where / "talk.wav", wave, rate)


@pytest.mark.parametrize("name", sorted(DATA))
def test_readme_pipelines_example_runs(name, embedded, tmp_path, monkeypatch):
    data = os.path.join(embedded, DATA[name])
    run = tmp_path / "run"
    assert main(["fit", *recipes.config_args(RECIPE[name]), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(run),
                 "--data.train_urls", data, "--data.val_urls", data, "--data.batches_per_epoch", "2",
                 "--data.num_workers", "0"]) == 0
    (tmp_path / "exports").mkdir()
    assert main(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"),
                 "--out", str(tmp_path / "exports" / name)]) == 0
    _samples(tmp_path)
    code = readme_examples()[name]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, f"README.md ({name} example)", "exec"), scope)
    tok = scope["tok"]
    if name == "flextok_tiny":
        assert tuple(scope["ids"].shape) == (2, tok.num_tokens) and tuple(scope["ids8"].shape) == (1, 8)
        assert tuple(scope["recon"].shape) == (1, 3, 64, 64)
    elif name == "vat_tiny":
        assert tuple(scope["ids"].shape) == (2, 85) and tuple(scope["coarse"].shape) == (1, 21)
        assert len(scope["meshes"]) == 1
    else:
        assert scope["ids"].shape[:2] == (1, 8) and scope["low"].shape[:2] == (1, 2)
        assert scope["wave"].shape[-1] == scope["low"].shape[-1] * tok.codec.hop_length
