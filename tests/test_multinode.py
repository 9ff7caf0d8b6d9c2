"""Multi-node DDP on CPU: the README's torchrun command as 2 nodes x 2 processes on this machine, its resume, a
node killed mid-run, and the SLURM launch path (srun's environment given by the test) leading to the same 4 ranks.

Every job trains the shipped fsq_ae_tiny recipe shrunk to a few steps of a tiny model, on the gloo backend with
no GPU visible; each launch gets its own free port, and every process group a test starts is killed when it ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE
JOB_TIMEOUT = 240  # seconds one 4-rank job may take on a loaded 2-core machine before the test calls it hung
KILL_TIMEOUT = 120  # seconds the surviving node may take to fail after the other node is killed


class ValKeys(pl.Callback):
    """Record, per rank, the keys (and ``pad`` flags) of the samples each validation run saw.

    Writes ``{out_dir}/val_keys_rank{R}.json``: a list with one entry per validation run (sanity check excluded),
    each a list of ``[key, pad]``. The jobs load it by class path (``test_multinode.ValKeys``, ``tests/`` on
    ``PYTHONPATH``).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.runs: list[list[tuple[str, bool]]] = []
        self.current: list[tuple[str, bool]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.current = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            pads = batch["pad"].tolist() if torch.is_tensor(batch["pad"]) else list(batch["pad"])
            self.current.extend(zip(batch["__key__"], (bool(p) for p in pads)))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.runs.append(self.current)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"val_keys_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.runs, f)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multinode_config(tmp_path, embedded, max_steps: int = 4) -> str:
    """fsq_ae_tiny shrunk: 8-channel model at 32 px, batch 2, checkpoints and validation every 2 steps,
    the full val split (every val sample once per validation), DataTrace and ValKeys recording every rank."""
    with open(os.path.join(ROOT, "configs/image/fsq_ae_tiny.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["trainer"].update({"default_root_dir": str(tmp_path / "run"), "max_steps": max_steps,
                           "val_check_interval": 2, "enable_progress_bar": False, "log_every_n_steps": 1,
                           "num_sanity_val_steps": 0})
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 2
    cfg["trainer"]["callbacks"] += [
        {"class_path": "tokenizers_mm.callbacks.DataTrace", "init_args": {"out_dir": str(tmp_path / "trace")}},
        {"class_path": "test_multinode.ValKeys", "init_args": {"out_dir": str(tmp_path / "val")}}]
    cfg["model"]["init_args"].update({"base_channels": 8, "channel_mults": [1, 2], "latent_dim": 16})
    cfg["data"].update({"train_urls": os.path.join(embedded, "image"), "val_urls": os.path.join(embedded, "image"),
                        "batch_size": 2, "val_batch_size": 16, "batches_per_epoch": 2, "num_workers": 0,
                        "val_num_workers": 0, "shuffle_buffer": 8})
    cfg["data"]["image"].update({"size": 32, "resize": [32, 48], "val_resize": 32})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "PET_")) and k not in
           ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "TOKENIZERS_MM_LOG": "WARNING"})
    env.update(extra)
    return env


def torchrun() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "torch.distributed.run"]


def start_nodes(cfg: str, port: int, tmp_path, tag: str, *args: str) -> list[subprocess.Popen]:
    """Start the README's multi-node command once per node, each node in its own process group."""
    procs = []
    for node in range(NODES):
        cmd = [*torchrun(), "--nnodes", str(NODES), "--nproc-per-node", str(PER_NODE), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"{tag}-{port}", "--max-restarts", "0",
               "-m", "tokenizers_mm.cli", "fit", "--config", cfg, "--trainer.accelerator", "cpu",
               "--trainer.devices", str(PER_NODE), "--trainer.num_nodes", str(NODES), "--trainer.strategy", "ddp",
               *args]
        log = open(tmp_path / f"{tag}-node{node}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        log.close()
    return procs


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc): torchrun starts each worker in a session of its own."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL one node: the launcher's process group and the group of every process below it, as a lost machine."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes of ``procs``; kills every group and fails when one is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job did not end within {timeout:.0f} s (hung)")
    finally:
        for p in procs:
            if p.poll() is None:
                kill_node(p)
    return [p.returncode for p in procs]


def logs(tmp_path, tag: str) -> str:
    return "\n".join(f"--- node {n} ---\n" + (tmp_path / f"{tag}-node{n}.log").read_text()[-3000:]
                     for n in range(NODES))


def run_job(cfg: str, tmp_path, tag: str, *args: str) -> float:
    t0 = time.monotonic()
    codes = wait_all(start_nodes(cfg, free_port(), tmp_path, tag, *args), JOB_TIMEOUT)
    assert codes == [0] * NODES, logs(tmp_path, tag)
    return time.monotonic() - t0


def traces(tmp_path) -> list[dict]:
    out = []
    for r in range(WORLD):
        with open(tmp_path / "trace" / f"data_trace_rank{r}.json") as f:
            out.append(json.load(f))
    return out


def val_keys(tmp_path) -> list[list[list]]:
    out = []
    for r in range(WORLD):
        with open(tmp_path / "val" / f"val_keys_rank{r}.json") as f:
            out.append(json.load(f))
    return out


def all_val_keys(embedded) -> list[str]:
    import webdataset as wds

    from tokenizers_mm.data.urls import expand_urls

    urls = expand_urls(os.path.join(embedded, "image"), split="val")
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def check_ranks(tmp_path, start: int, end: int) -> list[dict]:
    tr = traces(tmp_path)
    assert sorted(t["rank"] for t in tr) == list(range(WORLD))
    assert {t["world_size"] for t in tr} == {WORLD}
    assert {(t["start_step"], t["end_step"]) for t in tr} == {(start, end)}, tr
    assert {t["train_batches"] for t in tr} == {end - start}
    assert {t["val_batches"] for t in tr} == {tr[0]["val_batches"]} and tr[0]["val_batches"] > 0
    shards = [set(t["train_shards"]) for t in tr]
    assert all(shards)
    for i in range(WORLD):
        for j in range(i + 1, WORLD):
            assert not shards[i] & shards[j], f"ranks {i} and {j} both read {shards[i] & shards[j]}"
    return tr


def check_validation(tmp_path, embedded, runs: int) -> None:
    """Each validation run saw every val sample exactly once across the 4 ranks; pads only fill ranks up."""
    expected = all_val_keys(embedded)
    per_rank = val_keys(tmp_path)
    assert {len(r) for r in per_rank} == {runs}
    for v in range(runs):
        real = [k for rank in per_rank for k, pad in rank[v] if not pad]
        assert sorted(real) == sorted(expected) and len(set(real)) == len(expected)
        assert {len(rank[v]) for rank in per_rank} == {-(-len(expected) // WORLD)}


def test_readme_torchrun_two_nodes_then_resume(embedded, tmp_path):
    cfg = multinode_config(tmp_path, embedded, max_steps=4)
    first = run_job(cfg, tmp_path, "fit")
    check_ranks(tmp_path, 0, 4)
    check_validation(tmp_path, embedded, runs=2)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4

    second = run_job(cfg, tmp_path, "resume", "--trainer.max_steps", "6", "--ckpt_path", "last")
    tr = check_ranks(tmp_path, 4, 6)
    assert {t["optimizer_step_state"] for t in tr} == {4}  # AdamW state came back on every rank
    check_validation(tmp_path, embedded, runs=1)
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    print(f"\n4-rank fit (4 steps): {first:.1f} s, resume (2 steps): {second:.1f} s")


def test_killed_node_fails_the_job_and_keeps_the_checkpoint(embedded, tmp_path):
    from tokenizers_mm.checkpointing import load_tokenizer

    cfg = multinode_config(tmp_path, embedded, max_steps=100_000)
    procs = start_nodes(cfg, free_port(), tmp_path, "kill")
    ckpt = tmp_path / "run" / "checkpoints" / "step0000002.ckpt"
    t0 = time.monotonic()
    try:
        while not ckpt.exists():
            assert all(p.poll() is None for p in procs), logs(tmp_path, "kill")
            assert time.monotonic() - t0 < JOB_TIMEOUT, "no checkpoint within the time limit\n" + logs(tmp_path, "kill")
            time.sleep(0.5)
        kill_node(procs[1])
        t_kill = time.monotonic()
        code = wait_all(procs[:1], KILL_TIMEOUT)[0]
        failed_after = time.monotonic() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                kill_node(p)
    out = (tmp_path / "kill-node0.log").read_text()
    assert code != 0, out[-3000:]
    # torchrun names the failed module and the surviving ranks name the lost peer (or the agent the lost store)
    assert re.search(r"tokenizers_mm\.cli FAILED|RendezvousError|DistStoreError|DistNetworkError", out), out[-3000:]
    assert re.search(r"Connection (reset|closed) by peer|RendezvousError|DistStoreError|DistNetworkError", out), out[-3000:]
    model = load_tokenizer(str(ckpt))
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 2
    assert not model.training
    print(f"\nnode 0 failed {failed_after:.1f} s after node 1 was killed (exit code {code})")


def test_slurm_environment_gives_the_same_four_ranks(embedded, tmp_path):
    cfg = multinode_config(tmp_path, embedded, max_steps=2)
    port = str(free_port())
    procs = []
    t0 = time.monotonic()
    for rank in range(WORLD):
        env = job_env(SLURM_JOB_ID="4242", SLURM_JOB_NAME="tokenizers-mm-test", SLURM_NTASKS=str(WORLD),
                      SLURM_NTASKS_PER_NODE=str(PER_NODE), SLURM_NNODES=str(NODES), SLURM_NODELIST="localhost",
                      SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % PER_NODE),
                      SLURM_NODEID=str(rank // PER_NODE), SLURM_STEP_NUM_TASKS=str(WORLD), MASTER_PORT=port)
        log = open(tmp_path / f"slurm-rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tokenizers_mm.cli", "fit", "--config", cfg, "--trainer.accelerator", "cpu",
             "--trainer.devices", str(PER_NODE), "--trainer.num_nodes", str(NODES), "--trainer.strategy", "ddp"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    codes = wait_all(procs, JOB_TIMEOUT)
    assert codes == [0] * WORLD, "\n".join((tmp_path / f"slurm-rank{r}.log").read_text()[-2000:]
                                           for r in range(WORLD))
    for rank in range(WORLD):  # Lightning's SLURM environment took the rank srun gave each process
        out = (tmp_path / f"slurm-rank{rank}.log").read_text()
        assert "SLURM auto-requeueing enabled" in out and f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{WORLD}" in out
    check_ranks(tmp_path, 0, 2)
    check_validation(tmp_path, embedded, runs=1)
    print(f"\nSLURM-environment 4-rank fit (2 steps): {time.monotonic() - t0:.1f} s")
