"""Blinker signals, sent in the process that made the attempt.

Connect with ``delivery_failed.connect(handler)``; handlers receive the Flask
app as ``sender`` and keyword arguments. Exceptions in handlers are logged and
never affect deliveries.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent when a delivery got a 2xx answer.
#: Keyword arguments: ``delivery_id`` (str), ``webhook_id`` (int).
delivery_succeeded = _signals.signal("delivery-succeeded")

#: Sent when a delivery ended ``failed`` (attempts exhausted, permanent error,
#: webhook disabled or deleted). Keyword arguments: ``delivery_id``,
#: ``webhook_id`` (int or None), ``error`` (str).
delivery_failed = _signals.signal("delivery-failed")

#: Sent when a webhook was disabled automatically (410 Gone, or
#: ``WEBHOOKS_DISABLE_AFTER_FAILURES`` reached). Keyword arguments:
#: ``webhook_id``, ``reason`` (str).
webhook_disabled = _signals.signal("webhook-disabled")
