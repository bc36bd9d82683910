"""A Flask view decorator that rejects webhook requests with bad signatures.

For receivers written with Flask; the checks themselves live in
:mod:`flask_webhooks.signing`, which has no Flask dependency.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec
from typing import TypeVar

from flask import abort
from flask import request

from .signing import _standard_problem
from .signing import decode_standard_secret
from .signing import DEFAULT_TOLERANCE
from .signing import SIGNATURE_HEADER
from .signing import STANDARD_SIGNATURE_HEADER
from .signing import verify

__all__ = ["RECEIVER_SCHEMES", "verify_webhook"]

RECEIVER_SCHEMES = ("netbox", "standard", "any")
"""Schemes :func:`verify_webhook` accepts. ``any`` takes whichever valid
signature headers the request carries."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def verify_webhook(
    secret: str | Callable[[], str],
    *,
    scheme: str = "netbox",
    tolerance: int = DEFAULT_TOLERANCE,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a Flask view so it only runs for correctly signed requests.

    A request with a missing, invalid or stale signature is answered with
    ``401 Unauthorized`` and a short description of the problem (it never
    contains the secret or the expected signature). The body is read with
    ``request.get_data(cache=True)``, so the view can still use
    ``request.get_data()`` or ``request.get_json()``.

    .. code-block:: python

        @app.post("/hooks/netbox")
        @verify_webhook(lambda: current_app.config["NETBOX_WEBHOOK_SECRET"])
        def netbox_hook():
            event = request.get_json()
            ...

    :param secret: The shared secret, or a function without arguments that
        returns it, called for every request inside the request context
        (handy to read ``current_app.config`` lazily). An empty secret is a
        configuration error and raises :exc:`RuntimeError` (a 500), so that
        a forgotten setting cannot silently accept unsigned requests.
    :param scheme: ``"netbox"`` checks ``X-Hook-Signature``; ``"standard"``
        checks the Standard Webhooks headers and needs a ``whsec_`` secret;
        ``"any"`` accepts the request if any signature headers present
        verify (Standard Webhooks headers are only checked when the secret
        is a ``whsec_`` secret).
    :param tolerance: For Standard Webhooks, the maximum age (and clock
        skew into the future) of ``webhook-timestamp`` in seconds.
    :raises ValueError: At decoration time for an unknown scheme, or for
        ``scheme="standard"`` with a plain-string secret that is not a
        ``whsec_`` secret.
    """
    if scheme not in RECEIVER_SCHEMES:
        raise ValueError(
            f"unknown receiver scheme {scheme!r}; expected one of {', '.join(RECEIVER_SCHEMES)}"
        )
    if scheme == "standard" and isinstance(secret, str):
        # Fail at import time rather than on the first request.
        decode_standard_secret(secret)

    def decorator(view: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(view)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            problem = _check_request(_resolve(secret), scheme, tolerance)
            if problem is not None:
                abort(401, description=f"Webhook rejected: {problem}.")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _resolve(secret: str | Callable[[], str]) -> str:
    value = secret() if callable(secret) else secret
    if not value:
        raise RuntimeError(
            "verify_webhook: the webhook secret is empty; configure it, or remove the"
            " decorator if the sender does not sign its requests"
        )
    return value


def _check_request(secret: str, scheme: str, tolerance: int) -> str | None:
    """Return why the current request fails verification, or ``None``."""
    body = request.get_data(cache=True)
    headers = dict(request.headers.items())

    if scheme == "netbox":
        return _netbox_problem(secret, body)
    if scheme == "standard":
        return _standard_problem(secret, headers, body, tolerance=tolerance)

    # scheme == "any": any present, valid signature is enough.
    has_netbox = SIGNATURE_HEADER in request.headers
    has_standard = STANDARD_SIGNATURE_HEADER in request.headers
    if not (has_netbox or has_standard):
        return f"missing signature header ({SIGNATURE_HEADER} or {STANDARD_SIGNATURE_HEADER})"
    problems: list[str] = []
    if has_netbox:
        problem = _netbox_problem(secret, body)
        if problem is None:
            return None
        problems.append(problem)
    if has_standard:
        try:
            problem = _standard_problem(secret, headers, body, tolerance=tolerance)
        except ValueError:
            problem = "Standard Webhooks signatures are not accepted here"
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems)


def _netbox_problem(secret: str, body: bytes) -> str | None:
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        return f"missing {SIGNATURE_HEADER} header"
    if not verify(secret, body, signature):
        return f"invalid {SIGNATURE_HEADER}"
    return None
