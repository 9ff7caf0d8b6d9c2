"""Training recipes: which YAML files under ``configs/`` make up each recipe, and the config they resolve to.

A recipe of a model family is its family's base file followed by the recipe's own file, which holds only what
differs from the base; LightningCLI applies several ``--config`` in order::

    tokenizers-mm fit --config configs/image/base_1d_tiny.yaml --config configs/image/titok_tiny.yaml

Merging is jsonargparse's: a later file overrides the keys it names, option groups (``trainer``, ``data``, the
model's ``init_args`` and their dataclass options such as ``encoder`` or ``optimizer``) merge key by key, and a
list (``trainer.callbacks``, ``scales``, ``levels``) replaces the earlier list whole.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# recipe name -> its files, relative to configs/, in the order LightningCLI applies them
RECIPES: dict[str, tuple[str, ...]] = {
    "titok_tiny": ("image/base_1d_tiny.yaml", "image/titok_tiny.yaml"),
    "onedpiece_tiny": ("image/base_1d_tiny.yaml", "image/onedpiece_tiny.yaml"),
    "flextok_tiny": ("image/base_1d_tiny.yaml", "image/flextok_tiny.yaml"),
    "titok_b": ("image/base_1d_b.yaml", "image/titok_b.yaml"),
    "onedpiece_b": ("image/base_1d_b.yaml", "image/onedpiece_b.yaml"),
    "flextok_b": ("image/base_1d_b.yaml", "image/flextok_b.yaml"),
    "flextok_flow_tiny": ("image/base_flow_tiny.yaml", "image/flextok_flow_tiny.yaml"),
    "flextok_flow_reflow_tiny": ("image/base_flow_tiny.yaml", "image/flextok_flow_reflow_tiny.yaml"),
    "flextok_flow_b": ("image/flextok_flow_b.yaml",),
    "fsq_ae_tiny": ("image/fsq_ae_tiny.yaml",),
    "vat_tiny": ("shape/base_vat.yaml", "shape/vat_tiny.yaml"),
    "vat_b": ("shape/base_vat.yaml", "shape/vat_b.yaml"),
}


def files(recipe: str, root: str = CONFIGS) -> list[str]:
    """Absolute paths of a recipe's YAML files in order. ``recipe`` is a name of ``RECIPES`` or a single config
    given relative to ``configs/`` without ``.yaml`` (e.g. ``speech/codec_tiny``)."""
    if recipe in RECIPES:
        return [os.path.join(root, f) for f in RECIPES[recipe]]
    path = os.path.join(root, f"{recipe}.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"recipe {recipe!r}: not one of {sorted(RECIPES)} and no file {path}")
    return [path]


def config_args(recipe: str, root: str = CONFIGS) -> list[str]:
    """``--config`` arguments of a recipe for ``tokenizers-mm fit`` (or LightningCLI's ``args``)."""
    return [arg for path in files(recipe, root) for arg in ("--config", path)]


def resolve(paths: Sequence[str]) -> dict[str, Any]:
    """The effective config LightningCLI builds from these YAML files in order (``fit --print_config``), with every
    default filled in, as a dict."""
    import yaml

    from .cli import main

    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")  # LightningCLI's note about args given beside sys.argv
        try:
            code = main(["fit", *[arg for p in paths for arg in ("--config", str(p))], "--print_config"])
        except SystemExit as exc:
            code = exc.code
    if code not in (0, None):
        raise ValueError(f"configs {list(map(str, paths))} do not resolve (exit code {code}; see the error above)")
    return yaml.safe_load(out.getvalue())
