"""``tokenizers-mm import --from ARCH --weights DIR --out EXPORT``: a ``transformers`` codec folder -> an export.

The export is a normal one (:func:`tokenizers_mm.export.export_codec`: config, safetensors, model card, written
beside ``--out`` and swapped in); its ``training`` entry records the source folder and architecture instead of a
run, and the model card names them.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def import_to_export(name: str, weights: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Import ``weights`` (a ``transformers`` folder of architecture ``name``) and export it to ``out``."""
    from ...export import export_codec, input_spec
    from . import import_reference
    from .common import CONFIG_FILE, WEIGHTS_FILE

    codec, ref_cfg = import_reference(name, weights)
    training = {"module": f"imported {name} ({ref_cfg.get('architectures') or ref_cfg.get('model_type')})",
                "weights": "imported",
                "imported_from": {"architecture": name, "folder": os.path.abspath(weights),
                                  "model_type": ref_cfg.get("model_type"),
                                  "transformers_version": ref_cfg.get("transformers_version")}}
    sources = [os.path.join(weights, CONFIG_FILE), os.path.join(weights, WEIGHTS_FILE)]
    return export_codec(codec, out, input_spec(codec, {}), training, overwrite=overwrite, sources=sources)


def _run(a: argparse.Namespace) -> int:
    cfg = import_to_export(a.source, a.weights, a.out, overwrite=a.overwrite)
    t = cfg["tokens"]
    print(f"imported {a.source} from {a.weights} into {a.out}: {cfg['weights']['parameters']:,} parameters, "
          f"{t['num_quantizers']} codebooks x {t['codebook_sizes'][0]} codes at {t['frame_rate']:g} frames/s "
          f"({t['bitrates_kbps']} kbps)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``import`` on the project's subcommand parser."""
    from . import CONVERTERS, PLANNED

    p = sub.add_parser("import", help="import a transformers speech codec folder (EnCodec, DAC, Mimi, X-Codec 2) as an export")
    p.add_argument("--from", dest="source", required=True, choices=sorted([*CONVERTERS, *PLANNED]),
                   help="architecture of the folder")
    p.add_argument("--weights", required=True, help="transformers folder: config.json + model.safetensors")
    p.add_argument("--out", required=True, help="export folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that holds anything but an export")
    p.set_defaults(func=_run)
