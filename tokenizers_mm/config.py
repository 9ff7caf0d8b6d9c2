"""Small helpers between YAML / checkpoints and the dataclass options used across the package."""

from __future__ import annotations

import dataclasses
from typing import Any


def plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively: hyperparameters a weights-only load can read."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def as_config(cls: type, value: Any) -> Any:
    """Accept a dataclass instance, a dict of its fields (YAML, checkpoint) or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; valid: {sorted(names)}")
        return cls(**value)
    if not isinstance(value, cls):
        raise TypeError(f"expected {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    return value
