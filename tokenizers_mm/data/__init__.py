"""The shared webdataset streaming layer of tokenizers-mm (images, audio, meshes, token shards).

Names are imported lazily, so inference code (``pipelines``) can use the decoders without importing
Lightning, which only :class:`ShardDataModule` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ShardDataModule": ".datamodule",
    "ImageOptions": ".samples", "AudioOptions": ".samples", "MeshOptions": ".samples",
    "TokenOptions": ".samples", "make_decoder": ".samples",
    "expand_urls": ".urls",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
