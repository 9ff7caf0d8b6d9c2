"""Mesh preprocessing benchmark: seconds per mesh and peak memory of ``data build``'s mesh step, by face count.

    python scripts/bench_mesh_data.py [--faces 1000 10000 100000 1000000] [--out reports/bench/mesh_data.json]

Test meshes: a UV sphere displaced by ``1 + 0.25 sin(5 theta) sin(4 phi)`` (non-convex, watertight), tessellated
to at most the requested number of faces, written as binary PLY. Each measurement runs in a fresh process pinned
to one core (``OMP_NUM_THREADS=1``), so its peak RSS is its own:

- ``new``: the whole mesh step of ``data build`` at the default sample counts (``MeshBuildOptions()``: 16,384
  surface, 16,384 volume and 16,384 near-surface points): load the PLY bytes, check / repair, normalize, sample,
  label by the winding number; ``label_s`` is the labeling alone (hierarchy build + chunked queries).
- ``old``: trimesh's ``contains`` on the same normalized mesh and the same 32,768 query points (the labeling that
  ``data build`` used before, a pure-numpy ray test when no ray engine is installed), killed when its RSS
  passes ``--old-cap-gb`` or it runs past ``--old-timeout``; such a run is reported as such, not retried.

Times are wall seconds (``*_s``) and CPU seconds of the process (``*_cpu_s``); on a shared machine the CPU
seconds are the steadier number.

``ratio`` is old labeling seconds / new labeling seconds where both finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def bumpy_sphere(faces: int):
    """A watertight, non-convex displaced UV sphere with at most ``faces`` triangles (at least 8 x 8 segments)."""
    import trimesh

    n = max(8, int(1 + (1 + faces / 4) ** 0.5))
    sphere = trimesh.creation.uv_sphere(radius=1.0, count=[n, n])
    while n > 8 and len(sphere.faces) > faces:
        n -= 1
        sphere = trimesh.creation.uv_sphere(radius=1.0, count=[n, n])
    v = sphere.vertices
    theta = np.arctan2(v[:, 1], v[:, 0])
    phi = np.arccos(np.clip(v[:, 2] / np.linalg.norm(v, axis=1), -1.0, 1.0))
    r = 1.0 + 0.25 * np.sin(5 * theta) * np.sin(4 * phi)
    return trimesh.Trimesh(v * r[:, None], sphere.faces, process=True)


def _child(kind: str, path: str, reps: int) -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from tokenizers_mm.data.mesh import load_mesh, normalize_mesh
    from tokenizers_mm.data.mesh_occupancy import WindingNumber
    from tokenizers_mm.data.mesh_prep import MeshBuildOptions, build_mesh_sample

    with open(path, "rb") as f:
        data = f.read()
    opts = MeshBuildOptions()
    mesh, _, _ = normalize_mesh(load_mesh(data, "ply"), opts.padding)
    rng = np.random.default_rng(0)
    queries = np.concatenate([rng.uniform(-1, 1, (opts.num_volume, 3)),
                              mesh.sample(opts.num_near) + rng.normal(scale=opts.near_sigma, size=(opts.num_near, 3))])
    out = {"faces": int(len(mesh.faces))}
    if kind == "new":
        totals, labels, totals_cpu, labels_cpu = [], [], [], []
        for i in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            build_mesh_sample(data, "ply", opts, seed=i)
            totals.append(time.perf_counter() - t0)
            totals_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            WindingNumber(mesh, opts.chunk)(queries)
            labels.append(time.perf_counter() - t0)
            labels_cpu.append(time.process_time() - c0)
        out.update(s_per_mesh=float(np.median(totals)), label_s=float(np.median(labels)),
                   cpu_s_per_mesh=float(np.median(totals_cpu)), label_cpu_s=float(np.median(labels_cpu)))
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        mesh.contains(queries)
        out.update(label_s=time.perf_counter() - t0, label_cpu_s=time.process_time() - c0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _run(kind: str, path: str, reps: int, cap_gb: float | None, timeout: float | None) -> dict:
    """Run one measurement in a fresh process; kill it when its RSS passes ``cap_gb`` or it runs past ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", kind, path, str(reps)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while p.poll() is None:
        if cap_gb and _rss_mb(p.pid) > cap_gb * 1024:
            p.kill()
            p.communicate()
            return {"error": f"exceeded {cap_gb:g} GB RSS after {time.time() - t0:.0f} s (killed)"}
        if timeout and time.time() - t0 > timeout:
            p.kill()
            p.communicate()
            return {"error": f"exceeded the {timeout:g} s time limit (killed)"}
        time.sleep(0.05)
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        return {"error": (stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    ap.add_argument("--old-max-faces", type=int, default=10000, help="run trimesh's contains up to this many faces")
    ap.add_argument("--old-cap-gb", type=float, default=6.0)
    ap.add_argument("--old-timeout", type=float, default=300.0)
    ap.add_argument("--out", default="reports/bench/mesh_data.json")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child[0], a.child[1], int(a.child[2]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for faces in a.faces:
            path = os.path.join(tmp, f"bumpy_{faces}.ply")
            bumpy_sphere(faces).export(path)
            reps = 5 if faces <= 10_000 else (2 if faces <= 100_000 else 1)
            new = _run("new", path, reps, None, None)
            old = (_run("old", path, 1, a.old_cap_gb, a.old_timeout) if faces <= a.old_max_faces
                   else {"error": f"not run (over --old-max-faces {a.old_max_faces})"})
            row = {"faces_requested": faces, "faces": new.get("faces"), "new": new, "old": old}
            if "label_s" in new and "label_s" in old:
                row["ratio_label_s"] = old["label_s"] / new["label_s"]
                row["ratio_label_cpu_s"] = old["label_cpu_s"] / new["label_cpu_s"]
            if "s_per_mesh" in new:
                row["meshes_per_s"] = 1.0 / new["s_per_mesh"]
            rows.append(row)
            nan = float("nan")
            print(f"faces {row['faces']:>8}: new {new.get('s_per_mesh', nan):.3f} s/mesh "
                  f"({new.get('cpu_s_per_mesh', nan):.3f} CPU s; labeling {new.get('label_s', nan):.3f} s, "
                  f"{new.get('label_cpu_s', nan):.3f} CPU s), peak {new.get('peak_rss_mb', nan):.0f} MB"
                  f" | old: " + (f"labeling {old['label_s']:.2f} s ({old['label_cpu_s']:.2f} CPU s), peak "
                                 f"{old['peak_rss_mb']:.0f} MB" if "label_s" in old else old.get("error", "?")),
                  flush=True)
    result = {"settings": {"num_surface": 16384, "num_volume": 16384, "num_near": 16384, "cores": 1}, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
