"""Mesh preprocessing: winding-number labels (exact on analytic shapes, robust on broken meshes), the per-mesh
record, the memory bound, sharp-edge sampling."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from tokenizers_mm.data.mesh import MeshError, MeshTransform, normalize_mesh
from tokenizers_mm.data.mesh_occupancy import label_occupancy
from tokenizers_mm.data.mesh_prep import MeshBuildOptions, build_mesh_sample, edge_use, prepare_mesh
from tokenizers_mm.data.mesh_sampling import sample_occupancy, sample_sharp

SMALL = MeshBuildOptions(num_surface=500, num_volume=4000, num_near=500)


def _ply(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="ply")


def test_torus_and_box_labels_are_exact_away_from_the_tessellation():
    R, r = 0.6, 0.25
    torus = trimesh.creation.torus(major_radius=R, minor_radius=r, major_sections=128, minor_sections=64)
    pts = np.random.default_rng(0).uniform(-1, 1, (20000, 3))
    d = np.sqrt((np.linalg.norm(pts[:, :2], axis=1) - R) ** 2 + pts[:, 2] ** 2) - r  # signed distance
    clear = np.abs(d) > 0.01  # the polygon differs from the true torus by < 0.01 here
    lab = label_occupancy(torus, pts, chunk=777)  # an odd chunk: the chunking must not change labels
    assert np.array_equal(lab[clear], d[clear] < 0) and 0.05 < lab.mean() < 0.3
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    inside = np.all(np.abs(pts) < [0.5, 0.3, 0.2], axis=1)
    near_face = np.any(np.abs(np.abs(pts) - [0.5, 0.3, 0.2]) < 1e-3, axis=1)
    assert np.array_equal(label_occupancy(box, pts)[~near_face], inside[~near_face])


def test_open_mesh_is_labeled_correctly_away_from_its_hole():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    centers = sphere.triangles_center
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[centers[:, 2] < 0.6])  # a cap cut off: a big hole
    assert edge_use(holed.faces)[0] > 0
    pts = np.random.default_rng(1).uniform(-1, 1, (20000, 3))
    dist = np.linalg.norm(pts, axis=1)
    far = (np.abs(dist - 0.8) > 0.02) & (pts[:, 2] < 0.3)  # away from the surface and from the hole
    assert np.array_equal(label_occupancy(holed, pts)[far], dist[far] < 0.8)
    opts = MeshBuildOptions(num_surface=200, num_volume=3000, num_near=200)
    with pytest.raises(MeshError, match="no meaningful inside"):  # a third of the sphere's width is open
        build_mesh_sample(_ply(holed), "ply", opts, seed=0)
    small_hole = trimesh.Trimesh(sphere.vertices, sphere.faces[centers[:, 2] < 0.75])
    arrays, rec = build_mesh_sample(_ply(small_hole), "ply", opts, seed=0)
    assert rec["status"] == "winding_number" and rec["open_edges"] > 0 and "winding number" in rec["how"]


def test_two_overlapping_components_label_their_union():
    a = trimesh.creation.icosphere(subdivisions=4, radius=0.5).apply_translation((-0.25, 0, 0))
    b = trimesh.creation.icosphere(subdivisions=4, radius=0.5).apply_translation((0.25, 0, 0))
    both = trimesh.util.concatenate([a, b])  # self-intersecting soup: ray parity calls the overlap outside
    pts = np.random.default_rng(2).uniform(-1, 1, (20000, 3))
    da = np.linalg.norm(pts - (-0.25, 0, 0), axis=1)
    db = np.linalg.norm(pts - (0.25, 0, 0), axis=1)
    far = (np.abs(da - 0.5) > 0.02) & (np.abs(db - 0.5) > 0.02)
    union = (da < 0.5) | (db < 0.5)
    lab = label_occupancy(both, pts)
    assert np.array_equal(lab[far], union[far])
    assert lab[far & (da < 0.5) & (db < 0.5)].all() and (far & (da < 0.5) & (db < 0.5)).sum() > 100


def test_inward_faces_give_the_same_labels_and_outward_normals():
    sphere, _, _ = normalize_mesh(trimesh.creation.icosphere(subdivisions=3))
    flipped = sphere.copy()
    flipped.invert()
    a, _ = sample_occupancy(sphere, 300, 2000, 300, seed=0)
    b, stats = sample_occupancy(flipped, 300, 2000, 300, seed=0)
    assert stats["inverted"] and np.array_equal(a["volume_labels"], b["volume_labels"])
    assert (np.sum(b["surface"][:, :3] * b["surface"][:, 3:], axis=1) > 0).all()  # normals point out


def test_records_say_what_was_done():
    box = trimesh.creation.box()
    _, rec = build_mesh_sample(_ply(box), "ply", SMALL, seed=0)
    assert rec["status"] == "watertight" and rec["how"] == "watertight as is"
    holed = trimesh.Trimesh(box.vertices, box.faces[:-1])  # one missing triangle: trimesh fills it
    _, rec = build_mesh_sample(_ply(holed), "ply", SMALL, seed=0)
    assert rec["status"] == "repaired" and "3 open edges -> 0" in rec["how"]
    big = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    mesh, rec = prepare_mesh(big, MeshBuildOptions(max_faces=1000))
    assert len(mesh.faces) <= 1000 and rec["faces_source"] == 5120 and "decimated from 5120" in rec["how"]


def test_surface_without_inside_and_oversized_file_are_skipped_with_reasons():
    sheet = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    sheet = trimesh.Trimesh(sheet.vertices, sheet.faces[np.abs(sheet.face_normals[:, 2]) > 0.5][:2])  # one square
    with pytest.raises(MeshError, match="no meaningful inside|no inside"):
        build_mesh_sample(_ply(sheet), "ply", SMALL, seed=0)
    with pytest.raises(MeshError, match="exceeds max_file_mb"):
        build_mesh_sample(b"x" * 3000, "ply", MeshBuildOptions(max_file_mb=0.001), seed=0)
    sphere = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    for ext in ("ply", "obj", "stl", "off"):
        data = sphere.export(file_type=ext)
        with pytest.raises(MeshError, match="declares 5120 faces"):
            build_mesh_sample(data.encode() if isinstance(data, str) else data, ext,
                              MeshBuildOptions(max_faces=1000, max_load_faces=4000), seed=0)
    huge = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nelement face 90000000\nend_header\n"
    with pytest.raises(MeshError, match="declares 90000000 faces"):  # refused before parsing
        build_mesh_sample(huge, "ply", MeshBuildOptions(), seed=0)


def test_sharp_samples_lie_on_box_edges_and_fall_back_on_smooth_shapes():
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    pts, n_edges = sample_sharp(box, 500, np.random.default_rng(0), angle_deg=30)
    on_faces = np.isclose(np.abs(pts[:, :3]), [0.5, 0.3, 0.2], atol=1e-6)
    assert n_edges == 12 and (on_faces.sum(axis=1) >= 2).all()  # every point is on two faces: an edge
    assert np.allclose(np.linalg.norm(pts[:, 3:], axis=1), 1.0)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    pts, n_edges = sample_sharp(sphere, 100, np.random.default_rng(0), angle_deg=30)
    assert n_edges == 0 and pts.shape == (100, 6)
    arrays, _ = build_mesh_sample(_ply(box), "ply", MeshBuildOptions(num_surface=300, num_volume=300,
                                                                    num_near=300, num_sharp=64), seed=0)
    assert arrays["sharp"].shape == (64, 6)
    out = MeshTransform(num_surface=40, num_volume=8, num_near=8, num_sharp=10)(arrays, random.Random(0))
    half = np.array([0.5, 0.3, 0.2]) * 1.9  # normalized: the longest side spans 2 * (1 - padding)
    edge = np.isclose(np.abs(out["surface"][-10:, :3].numpy()), half, atol=1e-4).sum(axis=1)
    assert out["surface"].shape == (40, 6) and (edge >= 2).all()


def test_same_seed_same_sample():
    data = _ply(trimesh.creation.capsule())
    a, _ = build_mesh_sample(data, "ply", SMALL, seed=5)
    b, _ = build_mesh_sample(data, "ply", SMALL, seed=5)
    c, _ = build_mesh_sample(data, "ply", SMALL, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["surface"], c["surface"])


PEAK_SCRIPT = """
import json, resource, sys, time
import trimesh
from tokenizers_mm.data.mesh_prep import MeshBuildOptions, build_mesh_sample
mesh = trimesh.creation.icosphere(subdivisions=7)  # 327,680 faces
data = mesh.export(file_type="ply")
del mesh
t = time.process_time()
arrays, rec = build_mesh_sample(data, "ply", MeshBuildOptions(), seed=0)  # the default sample counts
print(json.dumps({"faces": rec["faces"], "cpu_s": time.process_time() - t, "inside": rec["inside_fraction"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_labeling_a_large_mesh_stays_under_the_memory_bound():
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["faces"] == 327680 and r["peak_mb"] < 2048, r
    assert abs(r["inside"] - 4 / 3 * np.pi * 0.95**3 / 8) < 0.02  # the sphere's share of the cube


def test_npz_round_trip_keeps_the_sharp_array():
    from tokenizers_mm.data.mesh import decode_mesh_npz, encode_npz

    arrays, _ = build_mesh_sample(_ply(trimesh.creation.box()), "ply",
                                  MeshBuildOptions(num_surface=50, num_volume=50, num_near=50, num_sharp=20), seed=0)
    back = decode_mesh_npz(encode_npz(arrays))
    assert set(back) == set(arrays) and back["sharp"].shape == (20, 6)
