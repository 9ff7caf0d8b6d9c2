"""Filters for third-party console noise that is not the user's business, installed in one place.

Each filter names one exact message of one library, so the user's own warnings, Lightning's warnings about the
user's configuration and every error still reach the console:

- Lightning's "💡 Tip: ... litlogger ..." advertisement (an INFO record of ``pytorch_lightning.utilities.rank_zero``
  at every ``Trainer`` construction);
- torch's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated (raised inside Lightning's own
  pytree helper, not fixable from here);
- Lightning's "Your `IterableDataset` has `__len__` defined" warning: the project's streaming datasets define
  ``__len__`` per rank and per worker on purpose (the epoch length of a webdataset stream).

:func:`install` is called by the CLI entry point and when :mod:`tokenizers_mm.harness` is imported (before any
``Trainer`` exists); calling it again changes nothing.
"""

from __future__ import annotations

import logging
import warnings

#: ``(message regex, category)`` of the third-party warnings that are dropped.
WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
)
#: Loggers that print Lightning's rank-zero INFO messages (the standalone and the unified package).
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")
#: Substrings of the log records that are dropped from those loggers.
LOG_MESSAGES = ("[litlogger](",)


class _DropMessages(logging.Filter):
    """Drops records whose formatted message contains one of ``LOG_MESSAGES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in LOG_MESSAGES)


_FILTER = _DropMessages()


def install() -> None:
    """Add the warning filters (once) and the log filter to Lightning's rank-zero loggers (once each)."""
    present = {(f[1].pattern if f[1] is not None else None, f[2]) for f in warnings.filters}
    for message, category in WARNINGS:
        if (message, category) not in present:
            warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
