"""tokenizers-mm: training pipeline for discrete tokenizers of images, 3D shapes and speech."""

__version__ = "0.1.0"
