"""Shape metrics live in :mod:`tokenizers_mm.eval.shape_metrics`; this name stays for the training module's
import (``shape/tokenizer.py``) until it imports from there."""

from ..eval.shape_metrics import surface_metrics, volume_iou

__all__ = ["surface_metrics", "volume_iou"]
