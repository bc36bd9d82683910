"""NetBox-style webhooks for Flask + Flask-SQLAlchemy.

The public names are imported lazily, so a receiver that only needs
:mod:`flask_webhooks.signing` does not import Flask, SQLAlchemy or Huey.
"""

from __future__ import annotations

import importlib
import typing as t

from .version import VERSION as __version__

if t.TYPE_CHECKING:
    from .capture.listeners import BulkStatementWarning as BulkStatementWarning
    from .extension import Webhooks as Webhooks
    from .validation import WebhookValidationError as WebhookValidationError

_LAZY = {
    "BulkStatementWarning": ".capture.listeners",
    "Webhooks": ".extension",
    "WebhookValidationError": ".validation",
}

__all__ = [
    "BulkStatementWarning",
    "WebhookValidationError",
    "Webhooks",
    "__version__",
]


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_webhooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
