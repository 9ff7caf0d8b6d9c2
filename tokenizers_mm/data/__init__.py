"""The shared webdataset streaming layer of tokenizers-mm (images, audio, meshes)."""

from .datamodule import ShardDataModule
from .samples import AudioOptions, ImageOptions, MeshOptions, make_decoder
from .urls import expand_urls

__all__ = ["ShardDataModule", "ImageOptions", "AudioOptions", "MeshOptions", "make_decoder", "expand_urls"]
