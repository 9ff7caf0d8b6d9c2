"""The embedded default data: small real datasets of every modality, built into shards by ``make data``.

- image: the photographs inside the scikit-image wheel and the vendored photographs and drawn wallpapers of
  ``tokenizers_mm/embedded/photos`` (sky, water, foliage: colours the scikit-image set lacks), cut into tiles
  (one folder per photo, so the train / val split holds out whole photos);
- audio: the vendored speech clips of ``tokenizers_mm/embedded/speech`` (see ATTRIBUTION.md);
- mesh: the vendored real meshes of ``tokenizers_mm/embedded/meshes`` (pyvista's examples at its top level,
  pymeshlab's sample meshes in ``pymeshlab/``; see ATTRIBUTION.md) plus procedural primitives (boxes, cylinders,
  cones, capsules, ellipsoids, tori with random proportions and orientations, from ``trimesh.creation``), so a
  shape tokenizer has more than a handful of shapes to learn from. One open pyvista mesh is labeled by its
  winding number and one open range scan is skipped with its reason: they exercise those paths of ``data build``.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
from PIL import Image

from .shards import MeshBuildOptions, build_shards

SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png",
    "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "cell.png", "clock_motion.png",
    "page.png", "text.png", "microaneurysms.png",
)


def embedded_dir(name: str) -> str:
    """Path of a vendored data folder inside the installed package (``speech`` or ``meshes``)."""
    return str(resources.files("tokenizers_mm") / "embedded" / name)


def photo_paths() -> list[str]:
    """The embedded photographs: scikit-image's, then the vendored ones (``embedded/photos/*.jpg``)."""
    import skimage.data

    root = os.path.dirname(skimage.data.__file__)
    paths = [os.path.join(root, name) for name in SKIMAGE_PHOTOS]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"scikit-image photo {path} is missing; reinstall scikit-image>=0.22")
    vendored = embedded_dir("photos")
    return paths + sorted(os.path.join(vendored, f) for f in os.listdir(vendored) if f.endswith(".jpg"))


def write_photo_tiles(out: str, tile: int = 128, max_tiles: int = 24) -> int:
    """Cut each embedded photo into non-overlapping ``tile`` px tiles, at most ``max_tiles`` per photo.

    Tiles are PNG files in ``out/<photo>/tile_XX.png``. Returns the number written.
    """
    n = 0
    for path in photo_paths():
        name = os.path.basename(path)
        img = Image.open(path).convert("RGB")
        w, h = img.size
        boxes = [(x, y) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
        if len(boxes) > max_tiles:
            boxes = [boxes[i] for i in np.linspace(0, len(boxes) - 1, max_tiles).round().astype(int)]
        folder = os.path.join(out, os.path.splitext(name)[0])
        os.makedirs(folder, exist_ok=True)
        for i, (x, y) in enumerate(boxes):
            img.crop((x, y, x + tile, y + tile)).save(os.path.join(folder, f"tile_{i:02d}.png"))
            n += 1
    return n


def write_primitives(out: str, count: int = 60, seed: int = 0) -> int:
    """Write ``count`` watertight primitive meshes with random proportions and rotations as ``out/prim_XXX.ply``."""
    import trimesh

    rng = np.random.default_rng(seed)
    makers = (
        lambda: trimesh.creation.box(extents=rng.uniform(0.3, 1.0, 3)),
        lambda: trimesh.creation.cylinder(radius=rng.uniform(0.15, 0.5), height=rng.uniform(0.3, 1.0), sections=48),
        lambda: trimesh.creation.cone(radius=rng.uniform(0.2, 0.5), height=rng.uniform(0.4, 1.0), sections=48),
        lambda: trimesh.creation.capsule(height=rng.uniform(0.2, 0.8), radius=rng.uniform(0.1, 0.35), count=[24, 24]),
        lambda: trimesh.creation.icosphere(subdivisions=3).apply_scale(rng.uniform(0.2, 0.6, 3)),
        lambda: trimesh.creation.torus(major_radius=rng.uniform(0.3, 0.5), minor_radius=rng.uniform(0.08, 0.2),
                                       major_sections=48, minor_sections=24),
    )
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        mesh = makers[i % len(makers)]()
        mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
        mesh.export(os.path.join(out, f"prim_{i:03d}.ply"))
    return count


def earlier_build(folder: str, modality: str) -> bool:
    """True when ``folder`` holds only an earlier ``data build`` of ``modality`` (its ``dataset.json`` and the
    shards it lists): the embedded builder then replaces it even when the build settings have changed."""
    import json

    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            old = json.load(f)
        listed = {n for names in old["shards"].values() for n in names}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False
    present = {n for n in os.listdir(folder)}
    from ..registry import canonical

    return (canonical(str(old.get("modality"))) == canonical(modality)
            and present <= listed | {"dataset.json", "made_by.json"})


#: the folder under ``data/embedded`` of each modality's shards (the folder names predate the modality words)
EMBEDDED_FOLDERS = {"image": "image", "speech": "audio", "shape": "mesh"}


def build_embedded(out_root: str = "data/embedded", modalities: tuple[str, ...] = ("image", "speech", "shape"),
                   progress: bool = True) -> dict[str, dict]:
    """Build the default shards under ``out_root/{image,audio,mesh}`` (:data:`EMBEDDED_FOLDERS`) for
    ``modalities`` (``audio`` / ``mesh`` accepted for speech / shape); returns each ``dataset.json`` by modality. An
    earlier build in a folder (of any settings) is replaced."""
    from ..registry import canonical

    modalities = tuple(canonical(m) for m in modalities)
    manifests = {}
    if "image" in modalities:
        src = os.path.join(out_root, "_src", "image")
        write_photo_tiles(src)
        out = os.path.join(out_root, "image")
        manifests["image"] = build_shards("image", src, out, shard_size=32, val_fraction=0.2, seed=0, split_by="dir",
                                          progress=progress, overwrite=earlier_build(out, "image"))
    if "speech" in modalities:
        out = os.path.join(out_root, "audio")
        manifests["speech"] = build_shards("speech", embedded_dir("speech"), out, shard_size=16, val_fraction=0.1,
                                           seed=0, progress=progress, overwrite=earlier_build(out, "speech"))
    if "shape" in modalities:
        import shutil

        src = os.path.join(out_root, "_src", "mesh")
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(embedded_dir("meshes"), os.path.join(src, "pyvista"), ignore=shutil.ignore_patterns("pymeshlab"))
        shutil.copytree(os.path.join(embedded_dir("meshes"), "pymeshlab"), os.path.join(src, "pymeshlab"))
        write_primitives(os.path.join(src, "primitives"))
        out = os.path.join(out_root, "mesh")
        manifests["shape"] = build_shards("shape", src, out, shard_size=8, val_fraction=0.15, seed=0,
                                          mesh=MeshBuildOptions(num_surface=2048, num_volume=2048, num_near=2048),
                                          progress=progress, overwrite=earlier_build(out, "shape"))
    return manifests
