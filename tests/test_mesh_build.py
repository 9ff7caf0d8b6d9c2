"""`data build` of meshes in parallel: worker processes and ranks give the samples of one process; a killed
build resumes from its complete shards."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tokenizers_mm.data.build_jobs import PARTS_DIR, merge_builds, plan_shards, rank_from_env
from tokenizers_mm.data.embedded import write_primitives
from tokenizers_mm.data.mesh_prep import MeshBuildOptions
from tokenizers_mm.data.shards import build_shards

OPTS = MeshBuildOptions(num_surface=300, num_volume=300, num_near=300, num_sharp=50)


@pytest.fixture
def mesh_src(tmp_path, mesh_dir):
    write_primitives(os.path.join(mesh_dir, "prims"), count=8, seed=1)
    return mesh_dir  # 4 pyvista meshes (one open) + 8 primitives


def _contents(out):
    files = {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tar")}
    manifest = json.load(open(os.path.join(out, "dataset.json")))
    manifest.pop("build_seconds")
    return files, manifest


def test_workers_and_ranks_give_the_samples_of_one_process(mesh_src, tmp_path):
    kw = dict(shard_size=2, val_fraction=0.25, seed=3, mesh=OPTS, progress=False)
    one = build_shards("mesh", mesh_src, str(tmp_path / "one"), **kw)
    assert one["mesh_summary"]["winding_number"] == 1 and one["mesh_summary"]["watertight"] == 11
    build_shards("mesh", mesh_src, str(tmp_path / "two"), workers=2, **kw)
    parts = [str(tmp_path / f"rank{r}") for r in range(3)]
    for r, p in enumerate(parts):
        m = build_shards("mesh", mesh_src, p, rank=r, world_size=3, **kw)
        assert m["partial"] == {"rank": r, "world_size": 3, "shards_planned": 7}
    with pytest.raises(ValueError, match="ranks 0..2 once each"):
        merge_builds(parts[:2], str(tmp_path / "bad"))
    from tokenizers_mm.cli import main

    assert main(["data", "merge", *reversed(parts), "--out", str(tmp_path / "merged")]) == 0
    ref_files, ref_manifest = _contents(tmp_path / "one")
    assert len(ref_files) == 7 and ref_manifest["counts"] == {"train": 9, "val": 3}
    for other in ("two", "merged"):
        files, manifest = _contents(tmp_path / other)
        assert files == ref_files, other  # byte-identical shards
        assert manifest == ref_manifest, other


def test_rank_from_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    assert rank_from_env(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert rank_from_env(None, None) == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_from_env(None, None) == (1, 2) and rank_from_env(0, 3) == (0, 3)
    with pytest.raises(ValueError, match="--rank"):
        rank_from_env(3, 3)
    assert [len(j.files) for j in plan_shards(list("abcde"), list("xy"), 2)] == [2, 2, 1, 2]


BUILD = """
import sys
from tokenizers_mm.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_killed_build_resumes_from_complete_shards(tmp_path):
    src = str(tmp_path / "src")
    write_primitives(src, count=24, seed=2)
    argv = ["data", "build", "--modality", "mesh", "--src", src, "--shard-size", "1", "--val-fraction", "0.2",
            "--mesh-surface-points", "3000", "--mesh-volume-points", "3000", "--mesh-near-points", "3000"]
    out = str(tmp_path / "out")
    stage = tmp_path / ".out.partial"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, *argv, "--out", out], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = os.listdir(stage / PARTS_DIR) if (stage / PARTS_DIR).is_dir() else []
        if len(done) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out)  # nothing under the final name
    records = sorted(os.listdir(stage / PARTS_DIR))
    assert 3 <= len(records) < 24
    first = json.load(open(stage / PARTS_DIR / records[0]))["shard"]
    inode = os.stat(stage / first).st_ino
    from tokenizers_mm.cli import main

    assert main(argv + ["--out", out]) == 0  # the rerun resumes
    assert os.stat(os.path.join(out, first)).st_ino == inode  # a complete shard was kept, not rebuilt
    assert main(argv + ["--out", str(tmp_path / "ref")]) == 0  # an uninterrupted build
    assert _contents(out) == _contents(tmp_path / "ref")
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n]
