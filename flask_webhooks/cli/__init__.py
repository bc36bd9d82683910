"""``flask webhooks ...`` commands.

``list``, ``deliveries``, ``ping``, ``retry``, ``sweep``, ``prune``, ``secret``,
``worker``, ``events`` and ``preview``. Each exits non-zero on an error, with a message that says what
to do about it. One module per command group; importing this package
registers every command on :data:`webhooks_cli`.
"""

from __future__ import annotations

from . import deliveries
from . import events
from . import tools
from . import webhooks
from . import worker
from .common import parse_duration
from .common import webhooks_cli

__all__ = [
    "deliveries",
    "events",
    "parse_duration",
    "tools",
    "webhooks",
    "webhooks_cli",
    "worker",
]
