"""NetBox-style webhooks for Flask + Flask-SQLAlchemy."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from .capture import BulkStatementWarning as BulkStatementWarning
from .extension import Webhooks as Webhooks
from .validation import WebhookValidationError as WebhookValidationError

__all__ = [
    "BulkStatementWarning",
    "WebhookValidationError",
    "Webhooks",
    "__version__",
]
