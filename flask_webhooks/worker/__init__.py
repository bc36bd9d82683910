"""Workers: the queue, the consumers that run deliveries, the sweeper.

:mod:`~.queue` (Huey from ``WEBHOOKS_QUEUE_URL``), :mod:`~.consumers`
(embedded threads and ``flask webhooks worker``) and :mod:`~.sweeper` (the
periodic sweep and worker heartbeats).
"""
