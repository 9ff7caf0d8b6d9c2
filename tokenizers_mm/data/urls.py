"""Turn what a user writes in a config into a concrete, ordered list of shard URLs.

Accepted forms (freely mixed in a list):

- a local brace pattern: ``data/train-{000000..000031}.tar``
- a local directory: every ``*.tar`` inside it, sorted; with a ``split`` (``train`` / ``val``) only
  the shards whose name starts with that split
- a local file or glob: ``data/*.tar``
- a text file listing one URL per line: ``@shards.txt``
- a remote URL: ``http(s)://host/train-{000000..000031}.tar`` or a ``pipe:`` command, for example
  ``pipe:aws s3 cp s3://bucket/train-{000000..000031}.tar -`` (brace patterns are expanded inside
  them too; nothing remote is touched until the loader reads it)
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence

import braceexpand

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://")


def is_remote(url: str) -> bool:
    """True for URLs the loader must open through a pipe or HTTP rather than the filesystem."""
    return url.startswith(REMOTE_PREFIXES)


def _expand_one(spec: str, split: str | None) -> list[str]:
    spec = os.path.expanduser(spec.strip())
    if not spec:
        return []
    if spec.startswith("@"):
        path = spec[1:]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard list file {path!r} does not exist (from {spec!r})")
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        return expand_urls(lines, split=split)
    if is_remote(spec):
        return list(braceexpand.braceexpand(spec))
    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if n.endswith(".tar"))
        if split is not None:
            names = [n for n in names if n.startswith(f"{split}-")]
        if not names:
            wanted = f"{split}-*.tar" if split else "*.tar"
            raise FileNotFoundError(f"directory {spec!r} holds no shards matching {wanted!r}")
        return [os.path.join(spec, n) for n in names]
    out: list[str] = []
    for piece in braceexpand.braceexpand(spec):
        if any(ch in piece for ch in "*?["):
            matches = sorted(glob.glob(piece))
            if not matches:
                raise FileNotFoundError(f"glob {piece!r} matches no file")
            out.extend(matches)
        else:
            if not os.path.exists(piece):
                raise FileNotFoundError(f"shard {piece!r} does not exist (from {spec!r})")
            out.append(piece)
    return out


def expand_urls(urls: str | Sequence[str] | Iterable[str], split: str | None = None) -> list[str]:
    """Expand a URL spec (string or list of strings) into a flat list of shard URLs.

    A single string may hold several specs separated by ``::`` (webdataset's convention).
    Raises ``FileNotFoundError`` naming the spec when a local shard, directory or list is missing,
    and ``ValueError`` when the result is empty.
    """
    if isinstance(urls, str):
        specs = urls.split("::")
    else:
        specs = list(urls)
    out: list[str] = []
    for spec in specs:
        out.extend(_expand_one(str(spec), split))
    if not out:
        raise ValueError(f"no shards found for {urls!r}")
    return out
