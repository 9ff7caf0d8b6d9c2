"""Inference on exported tokenizers, without Lightning or the training code.

The export format and ``pipelines.load`` arrive with the export issue; this package is kept free of any
training-side import so that it stays light.
"""
