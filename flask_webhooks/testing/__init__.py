"""Helpers for testing an application that uses flask-webhooks.

Two ways to check what your app sends, from its own test suite:

:func:`capture_deliveries`
    No network, no worker: while the context is open, deliveries run
    synchronously right after each commit (like the ``immediate://`` queue)
    and the HTTP requests they would send are recorded instead of sent. The
    whole delivery pipeline runs (outbox row, request building, signing,
    attempt log), only the transport is replaced.

:class:`RecordingReceiver`
    A real HTTP server on ``127.0.0.1`` that records every request and
    answers as scripted (status, headers, body, delay: :class:`Answer`), for
    end-to-end tests that go through the real transport.

.. code-block:: python

    from flask_webhooks.testing import capture_deliveries

    def test_new_site_notifies_the_crm(app, db):
        with capture_deliveries(app) as sent:
            db.session.add(Site(name="Berlin 1"))
            db.session.commit()

        (request,) = sent.requests
        assert request.webhook == "crm"
        assert request.json()["event"] == "created"
        assert request.verify("the-webhook-secret")

.. versionadded:: 0.1
"""

from .receiver import Answer
from .receiver import ReceivedRequest
from .receiver import RecordingReceiver
from .recorder import capture_deliveries
from .recorder import CapturedRequest
from .recorder import DeliveryRecorder

__all__ = [
    "Answer",
    "CapturedRequest",
    "DeliveryRecorder",
    "ReceivedRequest",
    "RecordingReceiver",
    "capture_deliveries",
]
