"""A JSON serializer for Huey messages: the queue carries data, never code.

Huey pickles its task messages by default, and unpickling runs whatever the
message says: anyone who can write to the queue (Redis, the SQLite file, the
PostgreSQL table) would run code in every worker. flask-webhooks' tasks take
only delivery ids (strings and lists of strings), so the queues it builds use
:class:`JSONSerializer` instead. A message that is not this JSON (a pickle,
garbage, a message of another format) is logged and dropped without being
interpreted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import typing as t

from huey.registry import Message
from huey.serializer import Serializer
from huey.serializer import SignedSerializer

logger = logging.getLogger(__name__)

#: Marks a JSON document as a message of this serializer (and its version).
FORMAT = "flask-webhooks/1"
_DATETIME = "$datetime"
_TIMEDELTA = "$timedelta"
_MESSAGE = "$message"
_TUPLE = "$tuple"


class ForeignMessageError(ValueError):
    """Queue data that :class:`JSONSerializer` did not write: it is dropped."""


class JSONSerializer:
    """Huey serializer writing messages as JSON (``Huey(serializer=...)``).

    Encodes what Huey stores: task messages (``huey.registry.Message``,
    nested for pipelines), heartbeat dicts, and values made of ``None``,
    booleans, numbers, strings, lists, tuples, string-keyed dicts, datetimes
    and timedeltas. Anything else (an ORM object, a custom class) raises
    :class:`TypeError` at enqueue time: pass ids and plain values.

    :meth:`deserialize` never unpickles or imports anything: data that is not
    a document written by this class raises :class:`ForeignMessageError`
    after a warning in the log; Huey's consumer then logs the error and
    drops the message.
    """

    def serialize(self, data: t.Any) -> bytes:
        """``data`` as JSON bytes.

        :raises TypeError: ``data`` holds a value JSON cannot carry.
        """
        document = {"format": FORMAT, "data": _encode(data)}
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()

    def deserialize(self, data: bytes) -> t.Any:
        """The value :meth:`serialize` wrote.

        :raises ForeignMessageError: ``data`` is not a document written by
            this serializer (logged as a warning, with its first bytes).
        """
        try:
            document = json.loads(bytes(data).decode("utf-8"))
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError("not a flask-webhooks queue message")
            return _decode(document["data"])
        except Exception as e:
            preview = bytes(data[:40]) if data is not None else b""
            logger.warning(
                "flask-webhooks: dropped a queue message that is not flask-webhooks "
                "JSON (%d bytes starting %r: %s); it was not executed. Something "
                "other than flask-webhooks writes to this queue (see 'The queue is "
                "a trust boundary' in the security docs)",
                len(data) if data is not None else 0,
                preview,
                e,
            )
            raise ForeignMessageError(
                f"not a flask-webhooks queue message: {type(e).__name__}: {e}"
            ) from None


def _encode(value: t.Any) -> t.Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Message):
        return {_MESSAGE: {k: _encode(v) for k, v in value._asdict().items()}}
    if isinstance(value, dt.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TIMEDELTA: value.total_seconds()}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("queue messages: dict keys must be strings")
        if len(value) == 1 and next(iter(value)).startswith("$"):
            raise TypeError("queue messages: a one-key dict's key may not start with $")
        return {k: _encode(v) for k, v in value.items()}
    raise TypeError(
        f"queue messages carry plain values only (ids, strings, numbers, lists, "
        f"dicts, datetimes), not {type(value).__name__}"
    )


def _decode(value: t.Any) -> t.Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == _MESSAGE:
            if not isinstance(inner, dict) or not set(inner) <= set(Message._fields):
                raise ValueError("malformed task message")
            fields = {k: _decode(v) for k, v in inner.items()}
            if not isinstance(fields.get("name"), str):
                raise ValueError("task message without a name")
            args = fields.get("args")
            if args is not None and not isinstance(args, tuple | list):
                raise ValueError("task message args must be a list")
            if args is not None:
                fields["args"] = tuple(args)
            kwargs = fields.get("kwargs")
            if kwargs is not None and not isinstance(kwargs, dict):
                raise ValueError("task message kwargs must be an object")
            return Message(**fields)
        if key == _DATETIME:
            return dt.datetime.fromisoformat(inner)
        if key == _TIMEDELTA:
            return dt.timedelta(seconds=float(inner))
        if key == _TUPLE:
            if not isinstance(inner, list):
                raise ValueError("malformed tuple")
            return tuple(_decode(v) for v in inner)
    return {k: _decode(v) for k, v in value.items()}


def pickles(huey: t.Any) -> bool:
    """Whether ``huey`` unpickles what it reads from its queue without checking
    a signature first (Huey's default serializer)."""
    serializer = getattr(huey, "serializer", None)
    return isinstance(serializer, Serializer) and not isinstance(
        serializer, SignedSerializer
    )
