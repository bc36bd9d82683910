"""The demo receiver at ``/receiver/``: what a webhook consumer would run.

It accepts webhook requests, checks their signatures with flask-webhooks' own
receiver helpers (:mod:`flask_webhooks.signing`), stores what it got in
:class:`~example_app.models.ReceivedWebhook` and shows it: an HTML page, or
JSON with ``?format=json`` (newest first).

A request whose signature does not verify is stored too (so you can see it)
but answered ``401``, like a real receiver would; flask-webhooks then retries
it on its schedule.
"""

from __future__ import annotations

import json
import typing as t

import sqlalchemy as sa
from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import Response
from flask import url_for
from flask_webhooks.signing import SIGNATURE_HEADER
from flask_webhooks.signing import STANDARD_SIGNATURE_HEADER
from flask_webhooks.signing import verify
from flask_webhooks.signing import verify_standard
from werkzeug.wrappers import Response as BaseResponse

from .extensions import db
from .models import ReceivedWebhook

bp = Blueprint("receiver", __name__, url_prefix="/receiver")

#: Headers worth keeping with a received request (the rest is noise here).
_KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "X-Webhook-ID",
    "X-Webhook-Attempt",
    "X-Webhook-Sequence",
    SIGNATURE_HEADER,
    "webhook-id",
    "webhook-timestamp",
    STANDARD_SIGNATURE_HEADER,
)


def check_signatures(
    secret: str, headers: t.Mapping[str, str], body: bytes
) -> tuple[bool, list[str]]:
    """Verify every signature the request carries; return (verified, notes).

    Verified means at least one signature was present and all present ones
    are valid: ``X-Hook-Signature`` (NetBox) and, when its headers are there,
    Standard Webhooks.
    """
    notes: list[str] = []
    results: list[bool] = []
    netbox_sig = headers.get(SIGNATURE_HEADER)
    if netbox_sig:
        ok = verify(secret, body, netbox_sig)
        results.append(ok)
        notes.append(f"{SIGNATURE_HEADER}: {'valid' if ok else 'INVALID'}")
    if headers.get(STANDARD_SIGNATURE_HEADER):
        try:
            ok = verify_standard(secret, headers, body)
            notes.append(f"Standard Webhooks: {'valid' if ok else 'INVALID'}")
        except ValueError:
            ok = False
            notes.append(
                "Standard Webhooks: the receiver's secret is not a whsec_ secret"
            )
        results.append(ok)
    if not results:
        notes.append("no signature headers")
    return bool(results) and all(results), notes


@bp.route("/", methods=["POST", "PUT", "PATCH", "DELETE"])
@bp.route("", methods=["POST", "PUT", "PATCH", "DELETE"])
def receive() -> tuple[Response, int]:
    body = request.get_data(cache=True)
    secret = current_app.config["DEMO_WEBHOOK_SECRET"]
    verified, notes = check_signatures(
        secret, t.cast("t.Mapping[str, str]", request.headers), body
    )
    event = model = object_id = None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        event = _text(payload.get("event"))
        model = _text(payload.get("model"))
        data = payload.get("data")
        if isinstance(data, dict) and data.get("id") is not None:
            object_id = str(data["id"])
    entry = ReceivedWebhook(
        method=request.method,
        event=event,
        model=model,
        object_id=object_id,
        delivery_id=request.headers.get("X-Webhook-ID"),
        attempt=request.headers.get("X-Webhook-Attempt"),
        verified=verified,
        verification="\n".join(notes),
        headers={k: v for k in _KEPT_HEADERS if (v := request.headers.get(k))},
        body=body.decode("utf-8", "replace"),
    )
    db.session.add(entry)
    db.session.commit()
    if not verified:
        return jsonify(received=entry.id, verified=False, problems=notes), 401
    return jsonify(received=entry.id, verified=True), 200


def _text(value: t.Any) -> str | None:
    return None if value is None else str(value)[:100]


@bp.get("/")
def show() -> t.Any:
    try:
        limit = max(1, min(int(request.args.get("limit", 100)), 1000))
    except ValueError:
        limit = 100
    entries = db.session.scalars(
        sa.select(ReceivedWebhook)
        .order_by(ReceivedWebhook.received_at.desc(), ReceivedWebhook.id.desc())
        .limit(limit)
    ).all()
    if request.args.get("format") == "json":
        return jsonify([e.to_json() for e in entries])
    total = db.session.scalar(sa.select(sa.func.count()).select_from(ReceivedWebhook))
    return render_template(
        "example_app/receiver.html", entries=entries, total=total, limit=limit
    )


@bp.post("/clear")
def clear() -> BaseResponse:
    db.session.execute(sa.delete(ReceivedWebhook))
    db.session.commit()
    return redirect(url_for(".show"))
