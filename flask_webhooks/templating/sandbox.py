"""The sandboxed Jinja2 environment, rendering, and the ``json`` filter's
strict JSON conversion (shared with :mod:`flask_webhooks.payload`)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import functools
import json
import math
import operator
import time
import typing as t
import uuid

from jinja2 import nodes
from jinja2 import pass_context
from jinja2 import TemplateSyntaxError
from jinja2.compiler import CodeGenerator
from jinja2.compiler import Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.sandbox import SandboxedEnvironment

from .limits import budget
from .limits import check_size
from .limits import check_value
from .limits import checked_filter
from .limits import DEFAULT_LIMITS
from .limits import format_size
from .limits import ITERATIONS_PER_CHECK
from .limits import lipsum
from .limits import MAX_INT_BITS
from .limits import MAX_POWER
from .limits import MAX_REPEAT
from .limits import method_size
from .limits import printf_size
from .limits import RenderError
from .limits import TemplateLimits
from .limits import TemplateTooLarge
from .limits import tick
from .limits import weight

# -- JSON values ---------------------------------------------------------------


def json_default(value: t.Any) -> t.Any:
    """Make the values schemas and columns produce JSON-safe.

    Decimal becomes a string (no precision lost), UUID a string, date and time
    ISO 8601, Enum its name, bytes base64, sets sorted lists, timedelta seconds.
    """
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def finite(value: t.Any) -> t.Any:
    """``value`` with every NaN and ±Infinity float replaced by None.

    RFC 8259 JSON has no such numbers; like NetBox (Django REST framework),
    they are sent as ``null``. Values :func:`json_default` converts are
    converted first, so a set holding NaN is covered too.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        return {
            (None if isinstance(k, float) and not math.isfinite(k) else k): finite(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    try:
        return finite(json_default(value))
    except TypeError:
        return value  # the encoder reports it


def json_text(value: t.Any, *, indent: int | None = None) -> str:
    """Strict JSON text (RFC 8259) of ``value``: NaN and ±Infinity become
    ``null``, other types go through :func:`json_default`."""
    try:
        return json.dumps(
            value,
            default=json_default,
            ensure_ascii=False,
            indent=indent,
            allow_nan=False,
        )
    except ValueError as e:
        if "float" not in str(e):
            raise
    return json.dumps(
        finite(value),
        default=json_default,
        ensure_ascii=False,
        indent=indent,
        allow_nan=False,
    )


# -- the sandbox ---------------------------------------------------------------


class _BudgetCodeGenerator(CodeGenerator):
    """Compiles ``{% for %}`` loops so each iteration is counted against the
    time budget, and ``~`` so the size of what it joins is checked."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("budget_iter"), [node.iter], [], None, None
        )
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


@pass_context
def _finalize(context: t.Any, value: t.Any) -> t.Any:
    # Needing the context keeps Jinja2 from evaluating constant expressions
    # while compiling: a syntax check on save never runs template code.
    # Printing a value turns it into text: check its size first.
    tick()
    return check_value("an output expression", value)


def _sized(value: t.Any) -> bool:
    return isinstance(value, str | bytes | list | tuple)


def _is_int(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_filter(value: t.Any, indent: int | None = None) -> str:
    """``{{ value|json }}``: the value as strict JSON text (``indent`` optional)."""
    return json_text(value, indent=indent)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox every webhook template renders in.

    Jinja2's sandbox blocks attribute access to internals (``__class__``,
    ``__globals__``, ``mro``, ...), unsafe ``str.format`` and ranges over
    100,000 items; the immutable variant also refuses methods that modify
    lists, dicts and sets (``data.update(...)``, ``tags.append(...)``), so one
    webhook's template cannot change what the next one sees.

    On top of that, operators, ``~``, filters and calls are checked against
    the render's :class:`TemplateLimits` (see the module docstring), and the
    compiler never evaluates expressions (no constant folding), so checking a
    template's syntax on save cannot run it.
    """

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    code_generator_class = _BudgetCodeGenerator

    def __init__(self) -> None:
        super().__init__(
            autoescape=False,
            keep_trailing_newline=True,
            optimized=False,
            finalize=_finalize,
        )
        self.globals["lipsum"] = lipsum

    def budget_iter(self, iterable: t.Iterable[t.Any]) -> t.Iterator[t.Any]:
        """What ``{% for %}`` loops iterate over: ``iterable``, with the clock
        read every few items."""
        tick()
        count = 0
        for item in iterable:
            count += 1
            if count >= ITERATIONS_PER_CHECK:
                count = 0
                tick()
            yield item

    def checked_concat(self, parts: t.Iterable[t.Any]) -> str:
        """``a ~ b ~ c``: the parts as text, joined, within the size limit."""
        tick()
        texts = []
        size = 0
        for part in parts:
            check_value("'~'", part)
            text = str(part)
            size += len(text)
            check_size("'~'", size)
            texts.append(text)
        return "".join(texts)

    def call(
        __self,
        __context: t.Any,
        __obj: t.Any,
        *args: t.Any,
        **kwargs: t.Any,
    ) -> t.Any:
        tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "call")
        if isinstance(owner, str | bytes):
            check_size(f".{name}()", method_size(name, owner, args))
        result = super().call(__context, __obj, *args, **kwargs)
        return check_value(f"the result of {name}()", result)

    def wrap_str_format(self, value: t.Any) -> t.Callable[..., str] | None:
        """``str.format`` / ``format_map`` with the size of the result
        bounded before formatting (``'{:>999999999}'.format(x)``)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, name = value.__self__, value.__name__

        def checked(*args: t.Any, **kwargs: t.Any) -> str:
            fields = args[0] if name == "format_map" and args else kwargs
            check_size(f".{name}()", format_size(str(text), args, fields))
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(
        self, context: t.Any, operator_: str, left: t.Any, right: t.Any
    ) -> t.Any:
        tick()
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise SecurityError(f"exponent {right!r} is larger than {MAX_POWER}")
            if (
                _is_int(left)
                and _is_int(right)
                and left.bit_length() * right > MAX_INT_BITS
            ):
                raise SecurityError("the result of ** would be too large")
            return operator.pow(left, right)
        limit = budget.max_chars
        if operator_ == "+":
            if not (_is_int(left) or isinstance(left, float)):
                check_size("'+'", weight(left, limit) + weight(right, limit))
            return operator.add(left, right)
        if operator_ == "%":
            if isinstance(left, str):
                check_size("'%' formatting", printf_size(left, right))
            return operator.mod(left, right)
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError("the result of * would be too large")
        elif (_sized(left) and _is_int(right)) or (_sized(right) and _is_int(left)):
            seq, times = (left, right) if _sized(left) else (right, left)
            if len(seq) * times > MAX_REPEAT:
                raise SecurityError(
                    f"repetition would build {len(seq) * times} items "
                    f"(limit {MAX_REPEAT})"
                )
            check_size("'*'", weight(seq, limit) * max(times, 0))
        return operator.mul(left, right)


@functools.cache
def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment every webhook template renders in.

    An :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`; autoescaping
    is off (bodies are JSON or text, not HTML); undefined values render as
    empty strings, as in NetBox; the ``json`` filter is added; every filter
    is wrapped with the budget checks; ``lipsum`` is limited.
    """
    env = _Sandbox()
    env.filters["json"] = _json_filter
    env.filters = {
        name: checked_filter(name, func) for name, func in env.filters.items()
    }
    return env


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> t.Any:
    return environment().from_string(source)


def template_syntax_error(source: str) -> str | None:
    """The syntax error message of a template, or None when it compiles."""
    if not source or ("{" not in source):
        return None
    try:
        _compile(source)
    except TemplateSyntaxError as e:
        return f"line {e.lineno}: {e.message}"
    return None


def render(
    source: str,
    context: t.Mapping[str, t.Any],
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> str:
    """Render ``source`` in the sandbox; plain strings are returned untouched.

    :param limits: the time budget and size limit of this render.
    :raises TemplateTimeout: the render ran past ``limits.timeout``.
    :raises TemplateTooLarge: a value or the output went over
        ``limits.max_chars``.
    :raises RenderError: any other problem while rendering.
    """
    if "{" not in source:
        return source
    state = budget
    saved = (state.deadline, state.timeout, state.max_chars)
    state.timeout = limits.timeout
    state.deadline = (
        None if limits.timeout is None else time.monotonic() + limits.timeout
    )
    state.max_chars = limits.max_chars
    try:
        template = _compile(source)
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > limits.max_chars:
                raise TemplateTooLarge(
                    f"rendered output is longer than {limits.max_chars} characters "
                    "(WEBHOOKS_TEMPLATE_MAX_CHARS)"
                )
            parts.append(chunk)
    except RenderError:
        raise
    except Exception as e:
        raise RenderError(f"{type(e).__name__}: {e}") from e
    finally:
        state.deadline, state.timeout, state.max_chars = saved
    return "".join(parts)
