"""One attempt: build the signed request, send it, decide what comes next.

:func:`build_request` renders the URL and headers (templates work on the
stored payload), adds the delivery headers and signs the stored body bytes;
:func:`make_attempt` sends it through the transport and classifies the
answer (success, retry after :func:`retry_delay`, or failure).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import typing as t

from .. import models as m
from ..payload import render_headers
from ..payload import render_url
from ..payload import template_context
from ..rotation import signing_secrets
from ..signing import signature_headers
from ..transport.message import HTTPRequest
from ..version import VERSION
from .results import Attempt

if t.TYPE_CHECKING:
    from ..state import WebhooksState

USER_AGENT = f"flask-webhooks/{VERSION}"
#: Longest wait a ``Retry-After`` header can ask for (24 hours).
MAX_RETRY_AFTER = 24 * 3600.0
#: Shortest wait a ``Retry-After`` header can ask for.
MIN_RETRY_AFTER = 1.0


def retry_delay(
    schedule: t.Sequence[float],
    attempts: int,
    *,
    retry_after: float | None = None,
    at_least_step: bool = False,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when
    the schedule is exhausted (``len(schedule) + 1`` attempts made).

    The schedule step gets +/-20 % jitter. A ``Retry-After`` from the
    receiver replaces it, clamped to [:data:`MIN_RETRY_AFTER`,
    :data:`MAX_RETRY_AFTER`] (never below a step that is itself shorter than
    the minimum). With ``at_least_step`` (a 429 or a timeout: the receiver is
    overloaded) the wait is never shorter than the jittered step.

    :param rng: the random source for the jitter (tests pass a seeded one).
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    step = float(schedule[attempts - 1]) * (rng or random).uniform(0.8, 1.2)
    if retry_after is None:
        return step
    wanted = min(max(retry_after, min(MIN_RETRY_AFTER, step)), MAX_RETRY_AFTER)
    return max(wanted, step) if at_least_step else wanted


def make_attempt(
    state: WebhooksState,
    row: t.Any,
    hook: t.Any,
    start: dt.datetime,
    *,
    pinned: bool,
    rng: random.Random | None,
) -> Attempt:
    """Send one claimed delivery (or decide it cannot be sent)."""
    cfg = state.config
    number = int(row.attempts)

    def unsent(reason: str, *, count_failure: bool = False) -> Attempt:
        return Attempt(
            row.id,
            number,
            hook,
            start,
            start,
            m.FAILED,
            error=reason,
            count_failure=count_failure,
            redactor=cfg.redactor,
        )

    if hook is None:
        return unsent("webhook was deleted")
    if not hook.enabled:
        return unsent(
            "webhook is disabled"
            + (f": {hook.disabled_reason}" if hook.disabled_reason else "")
        )
    try:
        request = build_request(state, row, hook, number)
    except Exception as e:
        return unsent(f"could not build the request: {e}", count_failure=True)

    result = state.transport().send(request)
    finished = start + dt.timedelta(seconds=result.duration) if pinned else m.utcnow()
    disable_reason: str | None = None
    retry_in: float | None = None
    if result.ok:
        status = m.SUCCEEDED
    elif result.status_code == 410:
        status = m.FAILED
        disable_reason = "the receiver answered 410 Gone"
    elif not result.retryable:
        status = m.FAILED
    else:
        overloaded = result.status_code == 429 or result.error_kind == "timeout"
        retry_in = retry_delay(
            cfg.retry_schedule,
            number,
            retry_after=result.retry_after,
            at_least_step=overloaded,
            rng=rng,
        )
        status = m.RETRYING if retry_in is not None else m.FAILED
    return Attempt(
        row.id,
        number,
        hook,
        start,
        finished,
        status,
        error=None if result.ok else result.error,
        retry_in=retry_in,
        next_attempt_at=(
            finished + dt.timedelta(seconds=retry_in) if retry_in is not None else None
        ),
        request=request,
        result=result,
        disable_reason=disable_reason,
        redactor=cfg.redactor,
    )


def build_request(
    state: WebhooksState,
    row: t.Any,
    hook: t.Any,
    attempt: int,
    *,
    timestamp: int | None = None,
) -> HTTPRequest:
    """The HTTP request for one attempt, signed for this attempt.

    The body bytes are the stored ones (identical on every attempt); URL and
    additional headers are rendered from the stored payload when they are
    templates. Timeouts: the webhook's ``timeout`` (else ``WEBHOOKS_TIMEOUT``)
    for reads, ``WEBHOOKS_CONNECT_TIMEOUT`` (never longer than the read
    timeout) for connecting. TLS: ``ssl_verification`` and ``ca_file_path``.

    :param timestamp: Unix time for the Standard Webhooks signature (default
        now).
    """
    body: bytes = row.body or b""
    needs_context = "{" in (hook.payload_url or "") or "{" in (
        hook.additional_headers or ""
    )
    context: dict[str, t.Any] = {}
    if needs_context:
        payload = json.loads(row.payload if row.payload is not None else body)
        context = template_context(payload, hook)
    limits = state.config.template_limits
    url = render_url(hook, context, limits=limits)
    headers: dict[str, str] = {
        "Content-Type": row.content_type or "application/json",
        "User-Agent": USER_AGENT,
    }
    headers.update(render_headers(hook, context, limits=limits))
    headers["X-Webhook-ID"] = row.id
    headers["X-Webhook-Attempt"] = str(attempt)
    if row.sequence is not None:
        headers["X-Webhook-Sequence"] = str(row.sequence)
    # Signatures are set last: they win over additional headers.
    unix = int(time.time()) if timestamp is None else timestamp
    # During a secret rotation the old secret signs too (see rotation.py).
    secret, previous = signing_secrets(hook, dt.datetime.fromtimestamp(unix, dt.UTC))
    headers.update(
        signature_headers(
            hook.signature_scheme or "netbox",
            secret,
            row.id,
            body,
            timestamp=unix,
            previous_secret=previous,
        )
    )
    timeout = float(hook.timeout) if hook.timeout else state.config.timeout
    verify: bool | str = bool(hook.ssl_verification)
    if verify and hook.ca_file_path:
        verify = hook.ca_file_path
    connect_timeout = min(state.config.connect_timeout, timeout)
    return HTTPRequest(
        method=(hook.http_method or "POST").upper(),
        url=url,
        headers=headers,
        body=body,
        connect_timeout=connect_timeout,
        read_timeout=timeout,
        verify=verify,
        # A trickling answer must not outlive the lease (connect + timeout +
        # margin): allow at most the margin's worth of extra time.
        total_timeout=connect_timeout
        + timeout
        + min(timeout, state.config.lease_margin / 2),
    )
