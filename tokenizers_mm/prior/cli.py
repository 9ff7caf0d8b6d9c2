"""The prior's commands: ``compress``, ``decompress``, ``sample`` and ``tokens report``.

Each writes into a staging folder beside ``--out`` (:class:`tokenizers_mm.io.OutputFolder`) and swaps it in when
complete; input problems are one-line ``ValueError`` / ``OSError`` messages naming the file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import numpy as np

SUFFIX = ".tmmc"


def _load(a: argparse.Namespace) -> tuple[Any, Any]:
    import pipelines

    tok = pipelines.load(a.model, device=getattr(a, "device", None) or "cpu")
    prior = pipelines.load(a.prior, modality="prior")
    prior.check_tokenizer(tok)
    return tok, prior


def _input_files(tok: Any, inputs: list[str]) -> list[str]:
    from pipelines.files import expand_inputs

    return expand_inputs(inputs, tok.extensions)


def _stems(files: list[str]) -> list[str]:
    """Output names of ``files``: the file name without extension, prefixed by its folder's name when two inputs
    share a file name (``ColdRipple/tile_00.png`` -> ``ColdRipple_tile_00``)."""
    from pipelines.base import file_stems

    names = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if len(set(names)) < len(names):
        names = [f"{os.path.basename(os.path.dirname(os.path.abspath(f)))}_{n}" for f, n in zip(files, names)]
    return file_stems(names, "sample")


def _nominal_bytes(num_tokens: int, codebook_size: int) -> int:
    return math.ceil(num_tokens * math.log2(codebook_size) / 8)


def _target(a: argparse.Namespace, modality: str) -> tuple[str, float] | None:
    given = [(m, getattr(a, f"target_{m}")) for m in ("psnr", "mel", "stoi", "iou")
             if getattr(a, f"target_{m}", None) is not None]
    if len(given) > 1:
        raise ValueError(f"give one quality target, got {['--target-' + m for m, _ in given]}")
    if not given:
        return None
    metric, value = given[0]
    from .rate import TARGETS

    if TARGETS[metric][0] != modality:
        raise ValueError(f"--target-{metric} applies to {TARGETS[metric][0]} tokenizers; {a.model!r} is a "
                         f"{modality} tokenizer")
    return metric, float(value)


def encode_with_target(tok: Any, files: list[str], keys: list[str], num_tokens: int | None,
                       target: tuple[str, float] | None, chunk_seconds: float = 30.0) -> tuple[list, list, list]:
    """ids per file (``[k]`` / ``[n, F]``), the modality extra per file, and the rate-control choices (or Nones)."""
    from .rate import choose_audio, choose_image, choose_shape

    if tok.modality == "image":
        images = tok.to_model_input(files)
        if target:
            choices = choose_image(tok, images, target[1], files)
            return [c.ids for c in choices], [0] * len(files), choices
        ids = tok.encode(images, num_tokens=num_tokens)
        return list(ids), [0] * len(files), [None] * len(files)
    if tok.modality == "speech":
        waves = [tok.read(f) for f in files]
        extra = [int(w.shape[-1]) for w in waves]
        if target:
            choices = [choose_audio(tok, w, target[1], target[0], f) for w, f in zip(waves, files)]
            return [c.ids for c in choices], extra, choices
        ids = [tok.encode(w, num_tokens=num_tokens, chunk_seconds=chunk_seconds)[0] for w in waves]
        return ids, extra, [None] * len(files)
    if target:
        choices = choose_shape(tok, files, target[1], files)
        return [c.ids for c in choices], [0] * len(files), choices
    ids = tok.encode(files, num_tokens=num_tokens)
    return list(ids), [0] * len(files), [None] * len(files)


def cmd_compress(a: argparse.Namespace) -> int:
    from ..io import OutputFolder, write_bytes_atomic, write_json_atomic

    tok, prior = _load(a)
    target = _target(a, tok.modality)
    files = _input_files(tok, a.inputs)
    stems = _stems(files)
    folder = OutputFolder(a.out, {"command": "compress", "modality": tok.modality,
                                  "model": {"sha256": tok.model_id, "prior": prior.model_id},
                                  "settings": {"num_tokens": a.num_tokens, "target": target}},
                          overwrite=a.overwrite, identity=("command", "modality"),
                          inputs=[a.model, a.prior, *files]).check()
    try:
        ids, extra, choices = encode_with_target(tok, files, stems, a.num_tokens, target)
        rows = []
        for f, stem, i, e, c in zip(files, stems, ids, extra, choices):
            blob = prior.compress(tok, i, e)
            write_bytes_atomic(os.path.join(folder.path, stem + SUFFIX), blob)
            n = int(i.numel())
            row = {"file": f, "out": stem + SUFFIX, "shape": list(i.shape), "tokens": n,
                   "nominal_bytes": _nominal_bytes(n, tok.codebook_size), "file_bytes": len(blob)}
            if c is not None:
                row.update(budget=c.budget, quality=round(c.quality, 4))
            rows.append(row)
        summary = {"model": os.path.abspath(a.model), "prior": os.path.abspath(a.prior), "files": rows,
                   "target": {"metric": target[0], "value": target[1]} if target else None,
                   "nominal_bytes": sum(r["nominal_bytes"] for r in rows),
                   "file_bytes": sum(r["file_bytes"] for r in rows)}
        if target:
            summary["rate_control"] = rate_savings(tok, prior, ids, choices, target)
        write_json_atomic(os.path.join(folder.path, "summary.json"), summary)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    for r in rows:
        extra_txt = f"  budget {r['budget']} -> {r['quality']}" if "budget" in r else ""
        print(f"{r['out']}: {r['tokens']} tokens, {r['nominal_bytes']} B nominal, {r['file_bytes']} B file{extra_txt}")
    print(f"compressed {len(rows)} file(s): {summary['file_bytes']} B in files ({summary['nominal_bytes']} B nominal) "
          f"-> {a.out}/")
    if target:
        rc = summary["rate_control"]
        print(f"rate control: mean {target[0]} {rc['mean_quality']:.3f} at {rc['mean_budget']:.2f} tokens on average; "
              f"a fixed budget of {rc['fixed_budget']} {'reaches' if rc['fixed_reaches_mean_quality'] else 'reaches only'} "
              f"mean {rc['fixed_mean_quality']:.3f}: "
              f"{rc['nominal_bytes_saved']} B nominal saved ({rc['saved_fraction']:.1%})")
    return 0


def rate_savings(tok: Any, prior: Any, ids: list, choices: list, target: tuple[str, float]) -> dict[str, Any]:
    """Bytes of the rate-controlled files against the smallest fixed budget whose mean quality over the same inputs
    is at least theirs (nominal bytes, and real file bytes of both)."""
    from .rate import TARGETS

    higher = TARGETS[target[0]][2]
    mean_q = float(np.mean([c.quality for c in choices]))
    budgets = sorted(choices[0].qualities)
    means = {k: float(np.mean([c.qualities[k] for c in choices])) for k in budgets}
    reach = [k for k in budgets if (means[k] >= mean_q if higher else means[k] <= mean_q)]
    # no fixed budget reaches the mean quality of the chosen ones: compare with the best fixed budget
    fixed = reach[0] if reach else (max if higher else min)(budgets, key=lambda k: means[k])
    fixed_q = float(np.mean([c.qualities[fixed] for c in choices]))
    chosen_nominal = sum(_nominal_bytes(int(i.numel()), tok.codebook_size) for i in ids)
    fixed_ids = [c.full[:fixed] for c in choices]
    fixed_nominal = sum(_nominal_bytes(int(i.numel()), tok.codebook_size) for i in fixed_ids)
    chosen_file = sum(len(prior.compress(tok, i)) for i in ids)
    fixed_file = sum(len(prior.compress(tok, i)) for i in fixed_ids)
    return {"mean_quality": mean_q, "mean_budget": float(np.mean([c.budget for c in choices])),
            "budgets": [c.budget for c in choices], "fixed_budget": fixed, "fixed_mean_quality": fixed_q,
            "fixed_reaches_mean_quality": bool(reach),
            "nominal_bytes": chosen_nominal, "fixed_nominal_bytes": fixed_nominal,
            "nominal_bytes_saved": fixed_nominal - chosen_nominal,
            "saved_fraction": (fixed_nominal - chosen_nominal) / max(fixed_nominal, 1),
            "file_bytes": chosen_file, "fixed_file_bytes": fixed_file, "file_bytes_saved": fixed_file - chosen_file}


def cmd_decompress(a: argparse.Namespace) -> int:
    from pipelines.base import file_stems

    from ..io import OutputFolder

    tok, prior = _load(a)
    files = []
    for p in a.inputs:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(SUFFIX))
        elif not os.path.isfile(p):
            raise FileNotFoundError(f"compressed file {p!r} does not exist")
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no {SUFFIX} files in {a.inputs}")
    stems = file_stems([os.path.splitext(os.path.basename(f))[0] for f in files], "sample")
    decoded = []
    for f in files:  # every file is checked before anything is written
        with open(f, "rb") as fh:
            ids, head = prior.decompress(tok, fh.read(), f)
        decoded.append((ids, head))
    folder = OutputFolder(a.out, {"command": "decompress", "modality": tok.modality,
                                  "model": {"sha256": tok.model_id, "prior": prior.model_id}},
                          overwrite=a.overwrite, identity=("command", "modality"),
                          inputs=[a.model, a.prior, *files]).check()
    try:
        for stem, (ids, head) in zip(stems, decoded):
            from ..io import write_bytes_atomic

            buf = __import__("io").BytesIO()
            np.save(buf, ids.numpy())
            write_bytes_atomic(os.path.join(folder.path, stem + ".ids.npy"), buf.getvalue())
            tok.save_decoded([ids], folder.path, [stem], lengths=[head.extra], **_decode_options(a))
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    from ..registry import spec

    print(f"decompressed {len(files)} file(s) into {a.out}/ (ids as .ids.npy and the decoded "
          f"{spec(tok.modality).files} files)")
    return 0


def _decode_options(a: argparse.Namespace) -> dict[str, Any]:
    """The decoder options a command line gave (shapes: the marching-cubes ``resolution``)."""
    return {"resolution": a.resolution} if getattr(a, "resolution", None) else {}


def cmd_sample(a: argparse.Namespace) -> int:
    from ..io import OutputFolder, write_json_atomic

    tok, prior = _load(a)
    if prior.layout == "rvq":  # frames of n_q codes (speech): the number of frames and of codebooks are free
        frames = a.frames or prior.prior.max_frames
        ids = prior.sample(a.n, frames, a.num_tokens, a.temperature, a.top_k, a.seed)
    else:
        k = a.num_tokens or tok.num_tokens
        ids = prior.sample(a.n, k, None, a.temperature, a.top_k, a.seed)
    folder = OutputFolder(a.out, {"command": "sample", "modality": tok.modality,
                                  "model": {"sha256": tok.model_id, "prior": prior.model_id},
                                  "settings": {"n": a.n, "seed": a.seed, "temperature": a.temperature,
                                               "top_k": a.top_k}},
                          overwrite=a.overwrite, identity=("command", "modality"), inputs=[a.model, a.prior]).check()
    try:
        names = [f"sample_{i:03d}" for i in range(a.n)]
        tok.save_decoded(list(ids), folder.path, names, overview="grid.png", **_decode_options(a))
        write_json_atomic(os.path.join(folder.path, "ids.json"), {"ids": ids.tolist()})
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    print(f"sampled {a.n} token sequence(s) of shape {list(ids.shape[1:])} (seed {a.seed}, temperature "
          f"{a.temperature}, top-k {a.top_k}) and decoded them into {a.out}/")
    return 0


def cmd_tokens_report(a: argparse.Namespace) -> int:
    from ..io import OutputFolder
    from .report import token_report

    prior = None
    if a.prior:
        import pipelines

        prior = pipelines.load(a.prior, modality="prior")
    folder = OutputFolder(a.out, {"command": "tokens report", "inputs": {"data": a.data, "split": a.split}}, overwrite=a.overwrite,
                          identity=("command",), inputs=[*(p for p in a.data if os.path.exists(p)),
                                                         *([a.prior] if a.prior else [])]).check()
    try:
        report = token_report(a.data, folder.path, prior, limit=a.limit, split=a.split)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    report = folder.relocate(report)
    print(json.dumps({k: report[k] for k in ("samples", "codebook_size", "unigram_entropy_bits",
                                             "prior_bits_per_token", "zipf_exponent")}, indent=1))
    print(f"report: {os.path.join(a.out, 'report.json')}, plot: {os.path.join(a.out, 'tokens.png')}")
    return 0


def add_parsers(sub: Any, inference_flags: Any, at_least: Any) -> None:
    """Register the prior's subcommands on the project parser's ``sub`` (subparsers)."""
    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", required=True, help="tokenizer export folder")
        q.add_argument("--prior", required=True, help="prior export folder (tokenizers-mm export of a prior run)")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--overwrite", action="store_true", help="replace an --out holding anything else")

    c = sub.add_parser("compress", help="range-code files' token ids with a prior (one .tmmc file per input)")
    common(c)
    c.add_argument("inputs", nargs="+", help="image / audio / mesh files or folders of them")
    c.add_argument("--num-tokens", type=at_least(1), default=None, help="fixed budget: first k tokens / codebooks")
    c.add_argument("--target-psnr", type=float, default=None, help="images: fewest tokens reaching this PSNR (dB)")
    c.add_argument("--target-mel", type=float, default=None, help="speech: fewest codebooks at most this mel distance")
    c.add_argument("--target-stoi", type=float, default=None, help="speech: fewest codebooks reaching this STOI")
    c.add_argument("--target-iou", type=float, default=None,
                   help="shapes: fewest scales whose decoded occupancy reaches this volume IoU against the input's own "
                        "inside / outside labels (8192 points uniform in the normalized cube)")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="decode .tmmc files back to ids (bit-exact) and to images / WAV / meshes")
    common(d)
    d.add_argument("inputs", nargs="+", help=".tmmc files or folders of them")
    d.add_argument("--resolution", type=at_least(8), default=None, help="shapes: marching-cubes resolution (64)")
    d.set_defaults(func=cmd_decompress)

    s = sub.add_parser("sample", help="generate token sequences with a prior and decode them")
    common(s)
    s.add_argument("--n", type=at_least(1), default=16, help="number of samples")
    s.add_argument("--num-tokens", type=at_least(1), default=None, help="tokens per sample (speech: codebooks)")
    s.add_argument("--frames", type=at_least(1), default=None, help="speech: frames per sample (the prior's context)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=at_least(1), default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resolution", type=at_least(8), default=None, help="shapes: marching-cubes resolution (64)")
    s.set_defaults(func=cmd_sample)

    t = sub.add_parser("tokens", help="statistics of token shards")
    tsub = t.add_subparsers(dest="tokens_cmd", required=True)
    r = tsub.add_parser("report", help="per-position entropy and usage, Zipf plot, unigram entropy vs the prior")
    r.add_argument("--data", required=True, nargs="+", help="token shards (tokenizers-mm tokenize): folder, pattern")
    r.add_argument("--prior", default=None, help="prior export: adds its cross-entropy in bits per token")
    r.add_argument("--out", required=True, help="output folder (report.json, tokens.png)")
    r.add_argument("--limit", type=at_least(1), default=None, help="read at most this many samples")
    r.add_argument("--split", choices=["train", "val"], default=None, help="for folders: only this split")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_tokens_report)
