"""Shared fixtures: the embedded shards (built once if `make data` has not run) and small sources."""

from __future__ import annotations

import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(ROOT, "data", "embedded")


@pytest.fixture(scope="session")
def embedded() -> str:
    """Path of the embedded shards (``data/embedded/{image,audio,mesh}``), built on first use."""
    if not all(os.path.exists(os.path.join(EMBEDDED, m, "dataset.json")) for m in ("image", "audio", "mesh")):
        from tokenizers_mm.data.embedded import build_embedded

        build_embedded(EMBEDDED, progress=False)
    return EMBEDDED


@pytest.fixture()
def photo_dir(tmp_path) -> str:
    """Six real photos from scikit-image as PNG / JPEG / WEBP files in two sub-folders."""
    import skimage.data
    from PIL import Image

    root = os.path.dirname(skimage.data.__file__)
    src = tmp_path / "photos"
    for i, (name, ext) in enumerate([("astronaut.png", "png"), ("coffee.png", "jpg"), ("chelsea.png", "webp"),
                                     ("rocket.jpg", "png"), ("camera.png", "png"), ("coins.png", "jpg")]):
        sub = src / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        img = Image.open(os.path.join(root, name)).convert("RGB").resize((96, 80))
        img.save(sub / f"{os.path.splitext(name)[0]}.{ext}")
    return str(src)


@pytest.fixture()
def speech_dir(tmp_path) -> str:
    """Eight vendored speech clips (real recordings, 8 kHz FLAC)."""
    from tokenizers_mm.data.embedded import embedded_dir

    src = tmp_path / "speech"
    src.mkdir()
    for name in sorted(n for n in os.listdir(embedded_dir("speech")) if n.endswith(".flac"))[:8]:
        shutil.copy(os.path.join(embedded_dir("speech"), name), src / name)
    return str(src)


@pytest.fixture()
def mesh_dir(tmp_path) -> str:
    """The vendored pyvista meshes: three watertight (ant, nut, sphere) and one open (airplane)."""
    from tokenizers_mm.data.embedded import embedded_dir

    src = tmp_path / "meshes"
    shutil.copytree(embedded_dir("meshes"), src, ignore=shutil.ignore_patterns("pymeshlab"))
    return str(src)
