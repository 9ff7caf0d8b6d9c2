"""Evaluation helpers: image metrics (PSNR, SSIM, FID), classical codec baselines and rate-distortion plots.

Submodules are imported on demand (``tokenizers_mm.eval.image_metrics``, ``.baselines``, ``.plots``) so that
importing this package stays cheap.
"""
