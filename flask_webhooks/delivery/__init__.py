"""Delivery: from a queued id to a recorded attempt.

:mod:`~.tasks` (the Huey tasks and enqueueing), :mod:`~.engine` (one task's
run), :mod:`~.claim` (the lease), :mod:`~.attempt` (the signed request and
the retry schedule), :mod:`~.results` (recording, webhook health, signals)
and :mod:`~.recovery` (sweep and manual requeue).
"""
