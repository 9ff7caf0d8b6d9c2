"""Per-modality decode and transform functions."""

import io
import random

import numpy as np
import pytest
import soundfile as sf
import torch
import trimesh
from PIL import Image

from tokenizers_mm.data.audio import AudioTransform, crop_or_pad, decode_audio, loudness_normalize, resample
from tokenizers_mm.data.image import ImageTransform, crop, decode_image, pil_to_tensor, resize_shorter_side
from tokenizers_mm.data.mesh import (
    MeshError,
    MeshTransform,
    load_mesh,
    make_watertight,
    normalize_mesh,
    precompute_mesh_sample,
)


def _encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_image_formats_to_rgb(fmt):
    arr = np.zeros((20, 30, 3), dtype=np.uint8)
    arr[:, :15] = 255
    img = decode_image(_encode(Image.fromarray(arr).convert("L" if fmt == "PNG" else "RGB"), fmt))
    assert img.mode == "RGB" and img.size == (30, 20)
    t = pil_to_tensor(img)
    assert t.shape == (3, 20, 30) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert t[:, :, :10].mean() > 0.9 and t[:, :, 20:].mean() < -0.9


def test_decode_image_rejects_garbage():
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"\x89PNG garbage")


def test_resize_crop_flip():
    img = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 255)
    assert resize_shorter_side(img, 20).size == (30, 20)
    rng = random.Random(0)
    assert crop(img, 32, "center", rng).size == (32, 32)
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop(img, 64, "center", rng)
    # center crop of an already-square-sized image is deterministic
    t = ImageTransform(size=16, crop="center", resize=None)
    assert torch.equal(t(img, random.Random(1)), t(img, random.Random(2)))
    # random crops differ between draws; flips mirror the content
    rt = ImageTransform(size=16, crop="random", resize=[16, 40], flip=False)
    outs = {tuple(rt(img, random.Random(s)).flatten()[:8].tolist()) for s in range(5)}
    assert len(outs) > 1
    sym = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 3)))
    flipped = [ImageTransform(size=16, flip=True)(sym, random.Random(s)) for s in range(8)]
    assert any(torch.equal(f, torch.flip(pil_to_tensor(sym), dims=[2])) for f in flipped)
    assert any(torch.equal(f, pil_to_tensor(sym)) for f in flipped)


def _wav_bytes(wave, sr, fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


def test_decode_audio_resample_and_mono():
    sr = 8000
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5
    wave, got_sr = decode_audio(_wav_bytes(stereo, sr, "FLAC"))
    assert got_sr == sr and wave.shape == (2, sr)
    out, mask = AudioTransform(sample_rate=16000, seconds=0.5, crop="start")(wave, sr, random.Random(0))
    assert out.shape == (1, 8000) and mask.all()
    # 440 Hz survives resampling: the spectrum peak stays at 440 Hz
    spec = torch.fft.rfft(resample(wave[:1], sr, 16000)[0]).abs()
    assert abs(int(spec.argmax()) * 16000 / (2 * spec.numel() - 2) - 440) < 5


def test_decode_audio_rejects_garbage():
    with pytest.raises(ValueError, match="not decodable audio"):
        decode_audio(b"fLaC" + b"\x00" * 100)


def test_crop_or_pad_masks_padding():
    wave = torch.ones(1, 100)
    out, mask = crop_or_pad(wave, 160, "random", random.Random(0))
    assert out.shape == (1, 160) and mask[:, :100].all() and not mask[:, 100:].any()
    assert out[:, 100:].abs().sum() == 0
    long = torch.arange(1000.0)[None]
    a, _ = crop_or_pad(long, 100, "random", random.Random(0))
    b, _ = crop_or_pad(long, 100, "random", random.Random(1))
    assert not torch.equal(a, b)
    s, _ = crop_or_pad(long, 100, "start", random.Random(0))
    assert torch.equal(s, long[:, :100])


def test_loudness_normalization_reaches_target():
    import torchaudio

    sr = 16000
    noise = torch.randn(1, sr * 2, generator=torch.Generator().manual_seed(0)) * 0.01
    out = loudness_normalize(noise, sr, target_lufs=-23.0)
    assert abs(float(torchaudio.functional.loudness(out, sr)) + 23.0) < 0.5
    loud = torch.randn(1, sr * 2, generator=torch.Generator().manual_seed(0))
    assert loudness_normalize(loud, sr, target_lufs=0.0).abs().max() <= 0.99 + 1e-6
    assert torch.equal(loudness_normalize(torch.zeros(1, sr), sr), torch.zeros(1, sr))


def test_sphere_occupancy_labels_are_exact():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mesh, _, scale = normalize_mesh(mesh, padding=0.05)
    r = 0.95  # bounding box side 2 -> 1.9
    arrays = precompute_mesh_sample(mesh, num_surface=512, num_volume=4000, num_near=1000, seed=0)
    pts, lab = arrays["volume_points"], arrays["volume_labels"]
    dist = np.linalg.norm(pts, axis=1)
    clear = np.abs(dist - r) > 0.01  # the icosphere differs from the true sphere by < 0.01 here
    assert np.array_equal(lab[clear], dist[clear] < r)
    assert np.allclose(np.linalg.norm(arrays["surface"][:, :3], axis=1), r, atol=0.01)
    assert np.allclose(np.linalg.norm(arrays["surface"][:, 3:], axis=1), 1.0, atol=1e-4)
    near_d = np.linalg.norm(arrays["near_points"], axis=1)
    assert np.abs(near_d - r).mean() < 0.05
    assert 0.2 < arrays["near_labels"].mean() < 0.8


def test_normalize_into_cube_and_transform_shapes():
    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    box.apply_translation((10, -3, 2))
    norm, center, scale = normalize_mesh(box, padding=0.0)
    assert np.allclose(norm.bounds, [[-1, -0.5, -0.25], [1, 0.5, 0.25]])
    arrays = precompute_mesh_sample(norm, 300, 200, 100, seed=1)
    out = MeshTransform(num_surface=64, num_volume=32, num_near=16)(arrays, random.Random(0))
    assert out["surface"].shape == (64, 6) and out["volume_points"].shape == (32, 3)
    assert out["near_points"].shape == (16, 3) and out["volume_labels"].dtype == torch.float32
    with pytest.raises(ValueError, match="asked for 1000 points"):
        MeshTransform(num_surface=1000)(arrays, random.Random(0))


def test_open_mesh_is_repaired_or_rejected():
    box = trimesh.creation.box()
    holed = trimesh.Trimesh(box.vertices, box.faces[:-1])  # one missing triangle: fillable
    fixed, repaired = make_watertight(holed)
    assert repaired and fixed.is_watertight
    sphere = trimesh.creation.icosphere(subdivisions=2)
    keep = sphere.vertices[sphere.faces].mean(axis=1)[:, 2] < 0.3  # cut off a cap: a large hole
    with pytest.raises(MeshError, match="not watertight"):
        make_watertight(trimesh.Trimesh(sphere.vertices, sphere.faces[keep]))


def test_load_mesh_errors():
    with pytest.raises(MeshError, match="unsupported mesh extension"):
        load_mesh(b"", "fbx")
    with pytest.raises(MeshError):
        load_mesh(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", "ply")
