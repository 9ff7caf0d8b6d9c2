"""``tokenizers-mm``: the LightningCLI (fit / validate / test / predict) plus the project's own commands.

    tokenizers-mm fit --config configs/image/fsq_ae_tiny.yaml
    tokenizers-mm fit --config configs/image/fsq_ae_tiny.yaml --ckpt_path last      # exact resume
    tokenizers-mm data build --modality image --src photos/ --out shards/
    tokenizers-mm data inspect shards/
    tokenizers-mm data bench --config configs/image/fsq_ae_tiny.yaml
    tokenizers-mm evaluate --ckpt runs/fsq_ae_tiny/checkpoints/last.ckpt --data shards/ --out report/
    tokenizers-mm export --ckpt runs/flextok_tiny/checkpoints/last.ckpt --out exports/flextok_tiny
    tokenizers-mm encode --model exports/flextok_tiny a.png b.jpg --out tokens.npz --num-tokens 16
    tokenizers-mm decode --model exports/flextok_tiny tokens.npz --out recon/
    tokenizers-mm tokenize --model exports/flextok_tiny --data shards/ --out token_shards/
    tokenizers-mm import --from encodec --weights encodec_24khz/ --out exports/encodec_24khz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

# what `data build / embedded / inspect --modality` accept: the registry's words, then their older names
MODALITY_FLAG = ["image", "speech", "shape", "audio", "mesh"]

PROJECT_COMMANDS = ("data", "evaluate", "export", "encode", "decode", "tokenize", "compress", "decompress", "sample",
                    "tokens", "import")


# ---- LightningCLI ---------------------------------------------------------------------------------
def _lightning_cli(args: list[str] | None) -> None:
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import TensorBoardLogger

    from .callbacks import HistoryCSVLogger, KeepConfigs
    from .checkpointing import AtomicCheckpointIO
    from .data import ShardDataModule
    from .harness import TokenizerModule, check_resume

    class TokenizersCLI(LightningCLI):
        """LightningCLI with atomic checkpoints, TensorBoard + CSV logs that keep their history across resumes
        (unless the config names loggers), a resolved config kept per attempt, and input checks before fit writes
        anything: the data URLs, and that a resumed checkpoint fits the configured model."""

        def instantiate_trainer(self, **kwargs: Any):
            trainer_cfg = self._get(self.config_init, "trainer", default={})
            if trainer_cfg.get("logger") in (None, True):
                root = trainer_cfg.get("default_root_dir") or "runs"
                kwargs["logger"] = [TensorBoardLogger(root, name="", version=""),
                                    HistoryCSVLogger(root, name="", version="")]
            plugins = trainer_cfg.get("plugins") or []
            plugins = plugins if isinstance(plugins, list) else [plugins]
            if not any(hasattr(p, "save_checkpoint") for p in plugins):
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
            return super().instantiate_trainer(**kwargs)

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads the hyperparameters of an explicit checkpoint file here: refuse foreign files first
            sub = self.config.get("subcommand")
            ckpt = self.config[sub].get("ckpt_path") if sub else None
            if ckpt and os.path.isfile(ckpt):
                from .checkpointing import read_checkpoint

                read_checkpoint(ckpt)
            super()._parse_ckpt_path()

        def before_fit(self) -> None:
            dm = self.datamodule
            if isinstance(dm, ShardDataModule):
                dm.shard_urls("train_urls", "train")
                if dm.val_urls:
                    dm.shard_urls("val_urls", "val")
            ckpt = self.config[self.subcommand].get("ckpt_path")
            if ckpt == "last":
                found = set()
                for cb in self.trainer.checkpoint_callbacks:
                    if hasattr(cb, "_find_last_checkpoints"):
                        found |= {p for p in cb._find_last_checkpoints(self.trainer) if os.path.isfile(p)}
                ckpt = max(found, key=os.path.getmtime) if found else None
            if ckpt and ckpt not in ("best", "hpc", "registry") and "://" not in str(ckpt):
                if os.path.isdir(ckpt):
                    raise ValueError(f"--ckpt_path {ckpt!r} is a folder; expected a .ckpt file (or 'last')")
                check_resume(str(ckpt), self.model)

    TokenizersCLI(
        TokenizerModule, ShardDataModule, subclass_mode_model=True, auto_configure_optimizers=False,
        save_config_callback=KeepConfigs, save_config_kwargs={"overwrite": True}, args=args,
        parser_kwargs={"description": "Train and evaluate tokenizers (LightningCLI)."},
    )


# ---- data -----------------------------------------------------------------------------------------
def _cmd_data_build(a: argparse.Namespace) -> int:
    from .data.shards import MeshBuildOptions, build_shards

    mesh = MeshBuildOptions(num_surface=a.mesh_surface_points, num_volume=a.mesh_volume_points,
                            num_near=a.mesh_near_points, num_sharp=a.mesh_sharp_points, sharp_angle=a.mesh_sharp_angle,
                            max_faces=a.mesh_max_faces, max_load_faces=a.mesh_max_load_faces,
                            max_file_mb=a.mesh_max_file_mb)
    if a.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {a.workers}")
    manifest = build_shards(a.modality, a.src, a.out, shard_size=a.shard_size, val_fraction=a.val_fraction,
                            seed=a.seed, split_by=a.split_by, mesh=mesh, overwrite=a.overwrite, workers=a.workers,
                            rank=a.rank, world_size=a.world_size)
    if "partial" in manifest:
        p = manifest["partial"]
        print(f"rank {p['rank']} of {p['world_size']}: combine the ranks' folders with `tokenizers-mm data merge`")
    if "mesh_summary" in manifest:
        print("meshes: " + ", ".join(f"{n} {k}" for k, n in manifest["mesh_summary"].items()))
    print(f"wrote {manifest['counts']} samples of {manifest['modality']} into {a.out} "
          f"({len(manifest['shards']['train'])} train + {len(manifest['shards']['val'])} val shards)")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} file(s):")
        for s in manifest["skipped"]:
            print(f"  {s['file']}: {s['reason']}")
    return 0


def _cmd_data_merge(a: argparse.Namespace) -> int:
    from .data.build_jobs import merge_builds

    manifest = merge_builds(a.parts, a.out, overwrite=a.overwrite)
    print(f"merged {len(a.parts)} ranks into {a.out}: {manifest['counts']} samples "
          f"({len(manifest['shards']['train'])} train + {len(manifest['shards']['val'])} val shards)")
    return 0


def _cmd_data_embedded(a: argparse.Namespace) -> int:
    from .data.embedded import EMBEDDED_FOLDERS, build_embedded

    manifests = build_embedded(a.out, tuple(a.modality))
    for modality, m in manifests.items():
        print(f"{modality}: {m['counts']} samples in {os.path.join(a.out, EMBEDDED_FOLDERS[modality])}"
              + (f", skipped {[s['file'] for s in m['skipped']]}" if m["skipped"] else ""))
    return 0


def _cmd_data_inspect(a: argparse.Namespace) -> int:
    from .data.shards import inspect_shards
    from .data.urls import expand_urls
    from .io import check_folder

    for spec in a.urls:
        if os.path.isdir(spec):
            problem = check_folder(spec)
            if problem:
                raise ValueError(problem)
    urls = expand_urls(a.urls, split=a.split)
    if a.modality:
        from .data.stream import check_shard_modality

        check_shard_modality(urls, a.modality, "--modality")
    report = inspect_shards(urls, modality=a.modality, limit=a.limit)
    if a.json:
        print(json.dumps(report, indent=2))
        return _inspect_verdict(report)
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
    return _inspect_verdict(report)


def _inspect_verdict(report: dict[str, Any]) -> int:
    """0 when every sample decodes; else the first problem as one error line and exit code 2."""
    bad = report["corrupt"]
    if report["samples"] == 0 and not bad:
        print(f"tokenizers-mm: error: {report['shards']} shard(s) hold no sample", file=sys.stderr)
        return 2
    if bad:
        first = bad[0]
        where = f"sample {first['key']!r} of {first['shard']}" if first["key"] else f"shard {first['shard']}"
        print(f"tokenizers-mm: error: {len(bad)} corrupt sample(s) or shard(s); the first: {where}: "
              f"{' '.join(str(first['error']).split())}", file=sys.stderr)
        return 2
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
def _settings(a: argparse.Namespace, *inputs: str) -> dict[str, Any]:
    """The options of a command line for its made_by.json: every flag but the output, the inputs (recorded on their
    own) and the device."""
    skip = {"func", "command", "data_command", "out", "overwrite", "device", *inputs}
    return {k: v for k, v in sorted(vars(a).items()) if k not in skip}


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .checkpointing import checkpoint_file, read_checkpoint
    from .data.stream import check_shard_modality
    from .data.urls import expand_urls, is_remote
    from .io import OutputFolder, file_fingerprint, file_sha256

    ckpt = checkpoint_file(a.ckpt)
    for flag, path in (("--csv-log", a.csv_log), ("--lpips", a.lpips), ("--inception", a.inception)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path!r} does not exist")
    raw = read_checkpoint(ckpt)
    from .export import rebuild_checkpoint_model
    from .registry import modality_of_checkpoint

    rebuild_checkpoint_model(raw, ckpt)  # a checkpoint that does not rebuild is refused here, naming it
    modality = modality_of_checkpoint(raw)
    try:
        urls = expand_urls(a.data, split="val")
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--data: {exc}") from exc
    check_shard_modality(urls, modality, "--data")
    folder = OutputFolder(a.out, {"command": "evaluate", "modality": modality,
                                  "model": {"checkpoint": os.path.abspath(ckpt), "sha256": file_sha256(ckpt),
                                            "global_step": raw.get("global_step")},
                                  "inputs": {"data": a.data, "fingerprint": file_fingerprint(
                                      [u for u in urls if not is_remote(u)])},
                                  "settings": _settings(a, "ckpt", "data", "csv_log", "lpips", "inception")},
                          overwrite=a.overwrite, identity=("command", "modality"),
                          inputs=[ckpt, *(p for p in (a.csv_log, a.lpips, a.inception) if p),
                                  *(u for u in urls if not is_remote(u))]).check()
    try:
        code = _evaluate_into(a, ckpt, modality, folder)
    except BaseException:
        folder.discard()
        raise
    return code


def _finish_report(report: dict[str, Any], folder: Any) -> dict[str, Any]:
    """Point the report's file paths into ``--out``, rewrite its report.json there, swap the folder in."""
    from .io import write_json_atomic

    report = folder.relocate(report)
    write_json_atomic(os.path.join(folder.path, "report.json"), report)
    folder.commit()
    return report


def _evaluate_into(a: argparse.Namespace, ckpt: str, modality: str, folder: Any) -> int:
    from .eval.evaluator import evaluate_checkpoint
    from .eval.report import format_table

    report = _finish_report(evaluate_checkpoint(
        ckpt, a.data, folder.path, max_samples=a.max_samples, prior=a.prior, batch_size=a.batch_size, size=a.size,
        csv_log=a.csv_log, lpips_path=a.lpips, inception_path=a.inception, baselines=not a.no_baselines,
        steps=a.steps, cfg_scale=a.cfg_scale, pesq=not a.no_pesq, resolution=a.resolution,
        chamfer_points=a.chamfer_points), folder)
    print(report["summary"])
    print(format_table(report))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} unreadable input(s), listed in report.json; the first: "
              f"{report['skipped'][0]['key'] or 'shard data'} in {report['skipped'][0]['shard']}: "
              f"{report['skipped'][0]['reason']}")
    print("report files:")
    for name, path in report["files"].items():
        print(f"  {name}: {path}")
    return 0


# ---- export and inference ---------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _cmd_export(a: argparse.Namespace) -> int:
    from .checkpointing import checkpoint_file
    from .export import EXPORT_FILES, export_checkpoint

    if a.format == "transformers":
        from .speech.convert.reference_export import run_cli

        return run_cli(a)

    cfg = export_checkpoint(checkpoint_file(a.ckpt), a.out, report=a.report, use_ema=not a.no_ema,
                            overwrite=a.overwrite)
    from .registry import spec

    print(f"exported {cfg['modality']} tokenizer {cfg['architecture']} ({cfg['training']['weights']} weights, "
          f"{cfg['weights']['parameters']:,} parameters) to {a.out}")
    print(f"  {spec(cfg['modality']).token_summary(cfg)}")
    for name in EXPORT_FILES:
        path = os.path.join(a.out, name)
        print(f"  {path}  {_human(os.path.getsize(path))}")
    return 0


def _check_tokens_out(path: str, overwrite: bool, inputs: list[str]) -> None:
    """Refuse an ``--out`` of ``encode`` that is one of its inputs (or inside one), or that exists and is not a
    tokens.npz this command wrote (unless overwrite)."""
    out = os.path.abspath(path)
    for p in map(os.path.abspath, inputs):
        if out == p or out.startswith(p + os.sep):
            raise ValueError(f"--out {path!r} is or lies inside an input of this command ({p!r}): choose another --out")
    if not os.path.exists(path):
        if not path.endswith(".npz"):
            raise ValueError(f"--out {path!r} must name a .npz file (ids, keys and meta)")
        return
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder; encode writes one .npz file")
    if overwrite:
        return
    from pipelines.files import TOKENS_FORMAT, load_tokens

    try:
        meta = load_tokens(path)[2]
    except (OSError, ValueError):
        meta = {}
    if meta.get("format") != TOKENS_FORMAT:
        raise ValueError(f"--out {path!r} exists and is not a tokens file written by `tokenizers-mm encode`; "
                         "choose another --out, or pass --overwrite to replace it")


def _cmd_encode(a: argparse.Namespace) -> int:
    import numpy as np

    import pipelines
    from pipelines.files import expand_inputs, save_tokens, token_meta

    tok = pipelines.load(a.model, device=a.device, dtype="bf16" if a.bf16 else None)
    _check_tokens_out(a.out, a.overwrite, [a.model, *a.inputs])
    files = expand_inputs(a.inputs, tok.extensions)
    keys = [os.path.splitext(os.path.basename(f))[0] for f in files]
    from pipelines.base import file_stems

    try:
        file_stems(keys, "sample")
    except ValueError as exc:
        clash = [f for f in files if os.path.splitext(os.path.basename(f))[0] in str(exc)][:2]
        raise ValueError(f"inputs {clash} share the key of their file name; decode would write them to one file: "
                         "encode them in separate runs or rename one") from exc
    from .prior.cli import _target

    target = _target(a, tok.modality)
    if target:  # rate control: per file the fewest tokens / scales reaching the target; rows of different lengths
        from .prior.cli import encode_with_target

        if a.num_tokens is not None:
            raise ValueError("give --num-tokens or a --target-*, not both")
        ids, _, choices = encode_with_target(tok, files, keys, None, target)
        meta = token_meta(tok, max(int(i.shape[0]) for i in ids))
        meta.update(target={"metric": target[0], "value": target[1]}, budgets=[c.budget for c in choices],
                    qualities=[round(c.quality, 4) for c in choices])
        save_tokens(a.out, [i.reshape(-1) for i in ids], keys, meta)
        for f, c in zip(files, choices):
            print(f"{f}: {c.budget} tokens -> {target[0]} {c.quality:.4f}")
        print(f"encoded {len(files)} {tok.modality} file(s) to {target[0]} {target[1]:g} with "
              f"{np.mean([c.budget for c in choices]):.2f} tokens on average -> {a.out}")
        return 0
    ids, meta, line = tok.encode_files(files, num_tokens=a.num_tokens, batch_size=a.batch_size,
                                       chunk_seconds=a.chunk_seconds)
    save_tokens(a.out, ids, keys, meta)
    print(f"{line} -> {a.out}")
    return 0


def _cmd_decode(a: argparse.Namespace) -> int:
    import numpy as np

    import pipelines
    from pipelines.base import file_stems
    from pipelines.files import check_meta, load_tokens

    from .io import OutputFolder, file_fingerprint

    tok = pipelines.load(a.model, device=a.device, dtype="bf16" if a.bf16 else None)
    if len(a.inputs) == 1 and a.inputs[0].endswith(".npz"):
        ids, keys, meta = load_tokens(a.inputs[0])
        for w in check_meta(meta, tok, a.inputs[0]):
            logging.getLogger("tokenizers_mm").warning(w)
    else:
        from pipelines.tokenize import read_token_ids

        from .data.urls import expand_urls

        try:
            urls = expand_urls(a.inputs)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"decode inputs: {exc}") from exc
        pairs = list(read_token_ids(urls))
        if not pairs:
            raise ValueError(f"no token samples in {a.inputs}")
        meta = {}
        keys = [k for k, _ in pairs]
        ids = np.stack([v for _, v in pairs])
    if a.limit is not None and a.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {a.limit}")
    if a.num_tokens is not None and a.num_tokens < 1:
        raise ValueError(f"--num-tokens must be >= 1, got {a.num_tokens}")
    if a.limit:
        ids, keys = ids[: a.limit], keys[: a.limit]
    try:
        file_stems(keys, "sample")
    except ValueError as exc:
        raise ValueError(f"{a.inputs[0]}: {exc}") from exc
    folder = OutputFolder(a.out, {"command": "decode", "modality": tok.modality,
                                  "model": {"sha256": tok.model_id},
                                  "inputs": {"tokens": a.inputs, "fingerprint": file_fingerprint(
                                      [p for p in a.inputs if os.path.isfile(p)])},
                                  "settings": _settings(a, "model", "inputs")},
                          overwrite=a.overwrite, identity=("command", "modality"),
                          inputs=[a.model, *(p for p in a.inputs if os.path.exists(p))]).check()
    try:
        try:
            text = _decode_into(a, tok, ids, keys, meta, folder.path)
        except ValueError as exc:  # ids that this model cannot decode: name the file they came from
            raise ValueError(f"{' '.join(a.inputs)}: {exc}") from exc
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    print(text)
    return 0


def _decode_into(a: argparse.Namespace, tok: Any, ids: Any, keys: list[str], meta: dict[str, Any], out: str) -> str:
    """Decode ``ids`` into files in ``out`` (the staging folder) with the pipeline's writer; returns the line to
    print."""
    options = {name: getattr(a, name) for name in ("steps", "cfg_scale", "seed", "resolution")
               if getattr(a, name) is not None}
    return tok.write_decoded(ids, keys, meta, out, shown=a.out, num_tokens=a.num_tokens, batch_size=a.batch_size,
                             file_format=a.mesh_format, **options)


def _cmd_tokenize(a: argparse.Namespace) -> int:
    from pipelines.tokenize import tokenize_shards

    m = tokenize_shards(a.model, a.data, a.out, num_tokens=a.num_tokens, batch_size=a.batch_size,
                        num_workers=a.workers, split=a.split, rank=a.rank, world_size=a.world_size,
                        device=a.device, dtype="bf16" if a.bf16 else None, overwrite=a.overwrite)
    state = "complete" if m["complete"] else f"partial ({sum(map(len, m['shards'].values()))} of {m['input_shards']} shards)"
    from .registry import spec

    unit = spec(m["source_modality"]).pipeline_class().token_unit
    print(f"token shards in {a.out}: {m['counts']} samples, {m['skipped_samples']} skipped, {state}; "
          f"{m['tokens']['num_tokens']} {unit} (dataset.json)")
    return 0


def at_least(low: int | float, kind: type = int):
    """An argparse ``type`` that refuses values below ``low`` (exit 2 naming the flag, before anything runs)."""
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def _project_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenizers-mm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, inspect and benchmark webdataset shards")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="pack a folder of files into train/val shards + dataset.json")
    b.add_argument("--modality", required=True, choices=MODALITY_FLAG,
                   help="image, speech or shape (audio / mesh: their older names)")
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
    b.add_argument("--mesh-sharp-points", type=int, default=0, help="points on sharp edges (Dora), 0: none")
    b.add_argument("--mesh-sharp-angle", type=float, default=30.0, help="dihedral angle (degrees) of a sharp edge")
    b.add_argument("--mesh-max-faces", type=int, default=1_000_000, help="decimate larger meshes to this many faces")
    b.add_argument("--mesh-max-load-faces", type=int, default=2_000_000,
                   help="skip meshes whose file declares more faces, before parsing (memory bound)")
    b.add_argument("--mesh-max-file-mb", type=float, default=512.0,
                   help="skip larger mesh files (loading them would exceed the memory bound)")
    b.add_argument("--workers", type=int, default=1, help="processes building shards in parallel")
    b.add_argument("--rank", type=int, default=None,
                   help="build every world-size-th shard (default: RANK or SLURM_PROCID); combine with `data merge`")
    b.add_argument("--world-size", type=int, default=None, help="number of ranks (default: WORLD_SIZE or SLURM_NTASKS)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an --out that holds anything but an earlier build with the same settings")
    b.set_defaults(func=_cmd_data_build)

    mg = dsub.add_parser("merge", help="combine the --out folders of the ranks of one `data build` into one folder")
    mg.add_argument("parts", nargs="+", help="the ranks' --out folders")
    mg.add_argument("--out", required=True, help="output folder")
    mg.add_argument("--overwrite", action="store_true", help="replace an --out that holds anything else")
    mg.set_defaults(func=_cmd_data_merge)

    emb = dsub.add_parser("embedded", help="build the embedded default shards (real photos, speech, meshes)")
    emb.add_argument("--out", default="data/embedded")
    emb.add_argument("--modality", nargs="+", choices=MODALITY_FLAG, default=["image", "speech", "shape"],
                     help="image, speech and / or shape (audio / mesh: their older names)")
    emb.set_defaults(func=_cmd_data_embedded)

    from .speech import teacher_features

    teacher_features.add_parser(dsub)

    i = dsub.add_parser("inspect", help="count samples, list extensions, decode, report corrupt samples")
    i.add_argument("urls", nargs="+", help="shards: pattern, directory, @list.txt, pipe: or http(s) URL")
    i.add_argument("--split", choices=["train", "val"], default=None, help="for directories: one split")
    i.add_argument("--modality", choices=MODALITY_FLAG, default=None,
                   help="image, speech or shape (audio / mesh: their older names); default: told by the first sample")
    i.add_argument("--limit", type=at_least(1), default=None, help="stop after this many samples")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_cmd_data_inspect)

    bench = dsub.add_parser("bench", help="samples/s of the training loader of a config's data section")
    bench.add_argument("--config", required=True)
    bench.add_argument("--batches", type=at_least(1), default=50)
    bench.add_argument("--warmup", type=at_least(0), default=5)
    bench.add_argument("--num-workers", type=at_least(0), default=None)
    bench.set_defaults(func=_cmd_data_bench)

    e = sub.add_parser("evaluate", help="reconstruction metrics, codebook statistics and samples of a checkpoint")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--data", required=True, help="evaluation shards (a directory gives its val-*.tar)")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--batch-size", type=at_least(1), default=16)
    e.add_argument("--max-samples", type=at_least(1), default=None)
    e.add_argument("--size", type=at_least(8), default=None, help="image side (default: the training config's)")
    e.add_argument("--csv-log", default=None, help="metrics.csv of the training run, for loss curves")
    e.add_argument("--lpips", default=None, help="local LPIPS-style weights file (enables the LPIPS column)")
    e.add_argument("--inception", default=None, help="local InceptionV3 weights file (enables rFID)")
    e.add_argument("--no-baselines", action="store_true", help="skip the JPEG / WebP (images) or Opus / MP3 (audio) baselines")
    e.add_argument("--no-pesq", action="store_true", help="audio: skip PESQ (the slowest metric)")
    e.add_argument("--steps", type=at_least(1), nargs="+", default=None,
                   help="rectified-flow decoders: Euler steps to evaluate (e.g. 1 2 4 8 25; default: the model's)")
    e.add_argument("--cfg-scale", type=float, default=None, help="rectified-flow decoders: guidance scale")
    e.add_argument("--prior", default=None, help="a token prior export of this tokenizer's tokens: adds real compressed file bytes "
                   "and bits per token at every budget (k, codebooks or scales)")
    e.add_argument("--resolution", type=at_least(8), default=64, help="shapes: marching-cubes grid resolution")
    e.add_argument("--chamfer-points", type=at_least(1), default=100_000, help="shapes: surface samples per mesh")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an --out that holds anything but an earlier evaluate report")
    e.set_defaults(func=_cmd_evaluate)

    x = sub.add_parser("export", help="write a self-describing export folder (config.json, model.safetensors, card)")
    x.add_argument("--ckpt", required=True, help="Lightning checkpoint of a tokenizers-mm tokenizer")
    x.add_argument("--out", required=True, help="export folder (an earlier export there is replaced atomically)")
    x.add_argument("--report", default=None, help="report.json of `tokenizers-mm evaluate`, for the model card")
    x.add_argument("--no-ema", action="store_true", help="export the raw weights even when the run kept an EMA")
    x.add_argument("--overwrite", action="store_true",
                   help="replace an --out that holds anything but an earlier export (whole, atomically)")
    x.add_argument("--format", choices=["tokenizers-mm", "transformers"], default="tokenizers-mm",
                   help="transformers: a speech codec as an EncodecModel / DacModel / MimiModel folder (--ckpt may then also be "
                        "an export folder)")
    x.add_argument("--architecture", choices=["encodec", "dac", "mimi"], default=None,
                   help="--format transformers: the reference architecture (default: the one the codec matches)")
    x.set_defaults(func=_cmd_export)

    def inference_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", required=True, help="export folder (tokenizers-mm export)")
        q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        q.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
        q.add_argument("--batch-size", type=at_least(1), default=64)

    en = sub.add_parser("encode", help="encode files (images: png / jpg / webp; meshes: obj / ply / stl / glb / off; "
                                       "audio: wav / flac / ogg / mp3) into tokens.npz")
    inference_flags(en)
    en.add_argument("inputs", nargs="+", help="files or folders of files")
    en.add_argument("--out", required=True, help="output .npz (ids [N, k], keys, meta)")
    en.add_argument("--num-tokens", type=at_least(1), default=None,
                    help="keep the first k tokens (1D tokenizers) or the first k codebooks (audio)")
    en.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a tokens file")
    en.add_argument("--chunk-seconds", type=at_least(0.1, float), default=30.0,
                    help="audio: encode long files in chunks of this length (causal models: same tokens as one pass)")
    en.add_argument("--target-psnr", type=float, default=None,
                    help="images: per file the fewest tokens whose decode reaches this PSNR (dB)")
    en.add_argument("--target-iou", type=float, default=None,
                    help="shapes: per file the fewest scales whose decoded occupancy reaches this volume IoU against "
                         "the input's own inside / outside labels (8192 points uniform in the normalized cube)")
    en.set_defaults(func=_cmd_encode)

    de = sub.add_parser("decode", help="decode tokens.npz or token shards into files (images: PNG; meshes: ply / obj / "
                                       "glb; audio: WAV)")
    inference_flags(de)
    de.add_argument("inputs", nargs="+", help="a tokens.npz, or token shards (pattern, folder, @list.txt)")
    de.add_argument("--out", required=True, help="output folder")
    de.add_argument("--limit", type=at_least(1), default=None, help="decode at most this many samples")
    de.add_argument("--num-tokens", type=at_least(1), default=None,
                    help="decode from the first k tokens (1D tokenizers) or the first k codebooks (audio) only")
    de.add_argument("--steps", type=at_least(1), default=None, help="rectified-flow decoders: Euler steps")
    de.add_argument("--cfg-scale", type=float, default=None, help="rectified-flow decoders: guidance scale")
    de.add_argument("--seed", type=int, default=None, help="rectified-flow decoders: sample i uses seed + i")
    de.add_argument("--resolution", type=at_least(8), default=None, help="shapes: marching-cubes grid resolution (64)")
    de.add_argument("--mesh-format", choices=["ply", "obj", "glb"], default="ply", help="shapes: output mesh format")
    de.add_argument("--overwrite", action="store_true",
                    help="replace an --out that holds anything but an earlier decode of this modality")
    de.set_defaults(func=_cmd_decode)

    tz = sub.add_parser("tokenize", help="stream shards through an export into token shards (resumable)")
    inference_flags(tz)
    tz.add_argument("--data", required=True, nargs="+", help="input shards: pattern, folder, @list.txt, URL")
    tz.add_argument("--out", required=True, help="output folder of token shards + dataset.json")
    tz.add_argument("--split", choices=["train", "val"], default=None, help="for folders: only this split")
    tz.add_argument("--num-tokens", type=at_least(1), default=None, help="keep the first k tokens (1D tokenizers)")
    tz.add_argument("--workers", type=at_least(0), default=2, help="decoding workers per rank")
    tz.add_argument("--rank", type=at_least(0), default=None, help="this process's rank (default: $RANK or 0)")
    tz.add_argument("--world-size", type=at_least(1), default=None,
                    help="number of processes (default: $WORLD_SIZE or 1)")
    tz.add_argument("--overwrite", action="store_true",
                    help="replace an --out (or an interrupted run's staging folder) made with other settings")
    tz.set_defaults(func=_cmd_tokenize)

    from .prior.cli import add_parsers as add_prior_parsers

    add_prior_parsers(sub, inference_flags, at_least)

    from .speech.convert.command import add_parser as add_import_parser

    add_import_parser(sub)
    return p


# errors that come from what a user gave (files, folders, URLs, settings): one line and exit code 2
INPUT_ERRORS = (OSError, ValueError, TypeError, KeyError)


def _input_error_types() -> tuple[type[BaseException], ...]:
    extra: list[type[BaseException]] = []
    try:
        import yaml

        extra.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml comes with the stack
        pass
    try:
        from safetensors import SafetensorError

        extra.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    import tarfile

    return (*INPUT_ERRORS, tarfile.TarError, *extra)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, KeyError) else f"missing entry {exc.args[0]!r}" if exc.args else "KeyError"
    text = " ".join(text.split())
    name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    if isinstance(name, bytes):  # some writers (TensorBoard's) report bytes file names
        name = os.fsdecode(name)
    if name and str(name) not in text:
        text = f"{name}: {text}"
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. Input problems print ``tokenizers-mm: error: <one line naming the file / key>`` and
    return 2; ``--debug`` (anywhere in the arguments) or ``TOKENIZERS_MM_DEBUG=1`` shows the traceback too."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TOKENIZERS_MM_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv = [x for x in argv if x != "--debug"]
        debug = True
    logging.basicConfig(level=os.environ.get("TOKENIZERS_MM_LOG", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    from . import io as tio
    from . import quiet

    quiet.install()

    tio.COMMAND_LINE = ["tokenizers-mm", *argv]
    try:
        if argv and argv[0] in PROJECT_COMMANDS:
            a = _project_parser().parse_args(argv)
            return int(a.func(a) or 0)
        if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
            _project_parser().print_help()
            print("\nLightningCLI subcommands: fit, validate, test, predict (see `tokenizers-mm fit --help`).")
            return 0
        _lightning_cli(None if from_sys and argv == sys.argv[1:] else argv)
        return 0
    except _input_error_types() as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"tokenizers-mm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenizers-mm: interrupted; nothing half-written was left under a final name", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
