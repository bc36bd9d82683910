"""``flask webhooks ...`` commands.

``list``, ``deliveries``, ``ping``, ``retry``, ``sweep``, ``prune``, ``secret``,
``worker`` and ``events``. Each exits non-zero on an error, with a message that says what
to do about it. One module per command group; importing this package
registers every command on :data:`webhooks_cli`.
"""

from __future__ import annotations

from . import deliveries
from . import events
from . import webhooks
from . import worker
from .common import webhooks_cli
from .deliveries import parse_duration

__all__ = [
    "deliveries",
    "events",
    "parse_duration",
    "webhooks",
    "webhooks_cli",
    "worker",
]
