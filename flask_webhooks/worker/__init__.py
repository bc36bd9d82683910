"""Workers: the queue, the consumers that run deliveries, the sweeper.

:mod:`~.queue` (Huey from ``WEBHOOKS_QUEUE_URL``), :mod:`~.serializer` (the
JSON message format of those queues), :mod:`~.consumers` (embedded threads
and ``flask webhooks worker``) and :mod:`~.sweeper` (the periodic sweep and
worker heartbeats).
"""

from .serializer import ForeignMessageError
from .serializer import JSONSerializer

__all__ = ["ForeignMessageError", "JSONSerializer"]
