"""Blinker signals about deliveries and webhooks, for alerting and metrics.

They are sent in the process that made the attempt (the worker), after the
result is committed. Handlers receive the Flask app as ``sender`` and keyword
arguments; accept ``**extra`` too, more may be added. An exception in a
handler is logged and never affects the delivery. ::

    from flask_webhooks.signals import delivery_failed

    @delivery_failed.connect
    def alert(app, delivery_id, webhook_id, error, **extra):
        app.logger.error("webhook delivery %s failed: %s", delivery_id, error)
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent when a delivery got a 2xx answer. Keyword arguments:
#: ``delivery_id`` (str), ``webhook_id`` (int), ``status_code`` (int),
#: ``attempts`` (int, including this one).
delivery_succeeded = _signals.signal("delivery-succeeded")

#: Sent when a delivery ended ``failed``: attempts exhausted, a permanent
#: error (blocked or invalid URL, 410 Gone, a template that fails), or its
#: webhook was disabled or deleted. Keyword arguments: ``delivery_id``,
#: ``webhook_id`` (int, None when the webhook was deleted), ``error`` (str),
#: ``status_code`` (int or None), ``attempts`` (int).
delivery_failed = _signals.signal("delivery-failed")

#: Sent once when the delivery engine disabled a webhook: the receiver
#: answered 410 Gone, or ``WEBHOOKS_DISABLE_AFTER_FAILURES`` deliveries failed
#: in a row. The reason and time are stored on the webhook
#: (``disabled_reason``, ``disabled_at``). Keyword arguments: ``webhook_id``
#: (int), ``webhook_name`` (str), ``reason`` (str).
webhook_disabled = _signals.signal("webhook-disabled")
