"""``tokenizers-mm``: the LightningCLI (fit / validate / test / predict) plus the project's own commands.

    tokenizers-mm fit --config configs/image/fsq_ae_tiny.yaml
    tokenizers-mm fit --config configs/image/fsq_ae_tiny.yaml --ckpt_path last      # exact resume
    tokenizers-mm data build --modality image --src photos/ --out shards/
    tokenizers-mm data inspect shards/
    tokenizers-mm data bench --config configs/image/fsq_ae_tiny.yaml
    tokenizers-mm evaluate --ckpt runs/fsq_ae_tiny/checkpoints/last.ckpt --data shards/ --out report/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

PROJECT_COMMANDS = ("data", "evaluate")


# ---- LightningCLI ---------------------------------------------------------------------------------
def _lightning_cli(args: list[str] | None) -> None:
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from .checkpointing import AtomicCheckpointIO
    from .data import ShardDataModule
    from .harness import TokenizerModule

    class TokenizersCLI(LightningCLI):
        """LightningCLI with atomic checkpoints and TensorBoard + CSV logs unless the config names loggers."""

        def instantiate_trainer(self, **kwargs: Any):
            trainer_cfg = self._get(self.config_init, "trainer", default={})
            if trainer_cfg.get("logger") in (None, True):
                root = trainer_cfg.get("default_root_dir") or "runs"
                kwargs["logger"] = [TensorBoardLogger(root, name="", version=""),
                                    CSVLogger(root, name="", version="")]
            plugins = trainer_cfg.get("plugins") or []
            plugins = plugins if isinstance(plugins, list) else [plugins]
            if not any(hasattr(p, "save_checkpoint") for p in plugins):
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
            return super().instantiate_trainer(**kwargs)

    TokenizersCLI(
        TokenizerModule, ShardDataModule, subclass_mode_model=True, auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True}, args=args,
        parser_kwargs={"description": "Train and evaluate tokenizers (LightningCLI)."},
    )


# ---- data -----------------------------------------------------------------------------------------
def _cmd_data_build(a: argparse.Namespace) -> int:
    from .data.shards import MeshBuildOptions, build_shards

    mesh = MeshBuildOptions(num_surface=a.mesh_surface_points, num_volume=a.mesh_volume_points,
                            num_near=a.mesh_near_points)
    manifest = build_shards(a.modality, a.src, a.out, shard_size=a.shard_size, val_fraction=a.val_fraction,
                            seed=a.seed, split_by=a.split_by, mesh=mesh)
    print(f"wrote {manifest['counts']} samples of {a.modality} into {a.out} "
          f"({len(manifest['shards']['train'])} train + {len(manifest['shards']['val'])} val shards)")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} file(s):")
        for s in manifest["skipped"]:
            print(f"  {s['file']}: {s['reason']}")
    return 0


def _cmd_data_embedded(a: argparse.Namespace) -> int:
    from .data.embedded import build_embedded

    manifests = build_embedded(a.out, tuple(a.modality))
    for modality, m in manifests.items():
        print(f"{modality}: {m['counts']} samples in {os.path.join(a.out, modality)}"
              + (f", skipped {[s['file'] for s in m['skipped']]}" if m["skipped"] else ""))
    return 0


def _cmd_data_inspect(a: argparse.Namespace) -> int:
    from .data.shards import inspect_shards
    from .data.urls import expand_urls

    urls = expand_urls(a.urls, split=a.split)
    report = inspect_shards(urls, modality=a.modality, limit=a.limit)
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"shards: {report['shards']}  samples: {report['samples']}  modality: {report['modality']}")
    print("extensions: " + ", ".join(f"{k} x{v}" for k, v in sorted(report["extensions"].items())))
    if report["example"]:
        ex = report["example"]
        print(f"example {ex['key']}:")
        for k, v in ex.items():
            if k != "key":
                print(f"  {k}: shape {v['shape']} {v['dtype']} range [{v['min']:.3f}, {v['max']:.3f}]")
    print(f"corrupt: {len(report['corrupt'])}")
    for c in report["corrupt"]:
        print(f"  key={c['key']} shard={c['shard']}: {c['error']}")
    return 0


def load_data_section(config_path: str) -> dict[str, Any]:
    """The ``data`` section of a CLI YAML config as ShardDataModule keyword arguments."""
    import yaml

    with open(config_path) as f:
        cfg = yaml.safe_load(f) or {}
    data = cfg.get("data")
    if not data:
        raise ValueError(f"{config_path} has no 'data' section")
    return dict(data.get("init_args", data)) if "class_path" in data else dict(data)


def _cmd_data_bench(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import ShardDataModule

    kwargs = load_data_section(a.config)
    if a.num_workers is not None:
        kwargs["num_workers"] = a.num_workers
    kwargs["batches_per_epoch"] = a.warmup + a.batches
    dm = ShardDataModule(**kwargs)
    dm.setup("fit")
    loader = dm.train_dataloader()
    n_samples, t0 = 0, None
    bar = tqdm(total=a.warmup + a.batches, desc=f"data bench ({dm.modality})", unit="batch")
    for i, batch in enumerate(loader):
        if i == a.warmup:
            t0 = time.perf_counter()
        if t0 is not None:
            n_samples += len(batch["__key__"])
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0 if t0 else float("nan")
    rate = n_samples / elapsed
    print(json.dumps({"modality": dm.modality, "batch_size": dm.batch_size, "num_workers": dm.num_workers,
                      "batches": a.batches, "samples": n_samples, "seconds": round(elapsed, 3),
                      "samples_per_s": round(rate, 1)}))
    return 0


# ---- evaluate -------------------------------------------------------------------------------------
def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_table

    report = evaluate_checkpoint(a.ckpt, a.data, a.out, batch_size=a.batch_size, max_samples=a.max_samples,
                                 size=a.size, csv_log=a.csv_log, lpips_path=a.lpips, inception_path=a.inception,
                                 baselines=not a.no_baselines)
    print(f"{report['model']}: {report['images']} images at {report['image_size']} px, "
          f"{report['tokens_per_image']} tokens of {report['bits_per_token']} bits")
    print(format_table(report))
    print("report files:")
    for name, path in report["files"].items():
        print(f"  {name}: {path}")
    return 0


def _project_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenizers-mm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, inspect and benchmark webdataset shards")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="pack a folder of files into train/val shards + dataset.json")
    b.add_argument("--modality", required=True, choices=["image", "audio", "mesh"])
    b.add_argument("--src", required=True, help="folder of source files (searched recursively)")
    b.add_argument("--out", required=True, help="output folder for the shards")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    b.add_argument("--val-fraction", type=float, default=0.05, help="fraction held out for validation")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and the shuffle")
    b.add_argument("--split-by", choices=["file", "dir"], default="file",
                   help="split files individually, or whole parent folders (speakers, source photos)")
    b.add_argument("--mesh-surface-points", type=int, default=16384)
    b.add_argument("--mesh-volume-points", type=int, default=16384)
    b.add_argument("--mesh-near-points", type=int, default=16384)
    b.set_defaults(func=_cmd_data_build)

    emb = dsub.add_parser("embedded", help="build the embedded default shards (real photos, speech, meshes)")
    emb.add_argument("--out", default="data/embedded")
    emb.add_argument("--modality", nargs="+", choices=["image", "audio", "mesh"],
                     default=["image", "audio", "mesh"])
    emb.set_defaults(func=_cmd_data_embedded)

    i = dsub.add_parser("inspect", help="count samples, list extensions, decode, report corrupt samples")
    i.add_argument("urls", nargs="+", help="shards: pattern, directory, @list.txt, pipe: or http(s) URL")
    i.add_argument("--split", choices=["train", "val"], default=None, help="for directories: one split")
    i.add_argument("--modality", choices=["image", "audio", "mesh"], default=None)
    i.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_cmd_data_inspect)

    bench = dsub.add_parser("bench", help="samples/s of the training loader of a config's data section")
    bench.add_argument("--config", required=True)
    bench.add_argument("--batches", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--num-workers", type=int, default=None)
    bench.set_defaults(func=_cmd_data_bench)

    e = sub.add_parser("evaluate", help="reconstruction metrics, codebook statistics and samples of a checkpoint")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--data", required=True, help="evaluation shards (a directory gives its val-*.tar)")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-samples", type=int, default=None)
    e.add_argument("--size", type=int, default=None, help="image side (default: the training config's)")
    e.add_argument("--csv-log", default=None, help="metrics.csv of the training run, for loss curves")
    e.add_argument("--lpips", default=None, help="local LPIPS-style weights file (enables the LPIPS column)")
    e.add_argument("--inception", default=None, help="local InceptionV3 weights file (enables rFID)")
    e.add_argument("--no-baselines", action="store_true", help="skip the JPEG / WebP baselines")
    e.set_defaults(func=_cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("TOKENIZERS_MM_LOG", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in PROJECT_COMMANDS:
        a = _project_parser().parse_args(argv)
        try:
            return int(a.func(a) or 0)
        except (FileNotFoundError, ValueError) as exc:
            print(f"tokenizers-mm: error: {exc}", file=sys.stderr)
            return 2
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        _project_parser().print_help()
        print("\nLightningCLI subcommands: fit, validate, test, predict (see `tokenizers-mm fit --help`).")
        return 0
    _lightning_cli(None if from_sys else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
