"""The limits of a render: sizes, the time budget, and the checks that
enforce them (used by :mod:`flask_webhooks.templating.sandbox`).

A render sets its :class:`TemplateLimits` in a thread-local budget for its
duration; the sandbox's hooks call :func:`tick` (time) and
:func:`check_size` / :func:`check_value` (size). The ``*_size`` functions
bound what an operation would build *before* it runs, so a refused value is
never allocated.
"""

from __future__ import annotations

import functools
import re
import string
import threading
import time
import typing as t
from dataclasses import dataclass

from jinja2.exceptions import SecurityError
from jinja2.utils import generate_lorem_ipsum

#: Default of ``WEBHOOKS_TEMPLATE_TIMEOUT``: seconds one render may take.
DEFAULT_TEMPLATE_TIMEOUT = 1.0
#: Default of ``WEBHOOKS_TEMPLATE_MAX_CHARS``: the longest value a template
#: may build and the longest text it may render, in characters.
MAX_RENDERED_CHARS = 10 * 1024 * 1024
#: Largest exponent ``**`` accepts in a template.
MAX_POWER = 100
#: Most items ``*`` may build in a template (a string or a list).
MAX_REPEAT = 1024 * 1024
#: Largest integer ``*`` and ``**`` may build in a template, in bits.
MAX_INT_BITS = 64 * 1024
#: ``lipsum()`` limits: paragraphs, and words per paragraph.
MAX_LIPSUM_PARAGRAPHS = 20
MAX_LIPSUM_WORDS = 100
#: Loop iterations between two clock reads (each item is counted).
ITERATIONS_PER_CHECK = 128


class RenderError(ValueError):
    """A template could not be rendered (undefined filter, sandbox violation,
    a limit exceeded, a rendered header with a line break, ...).

    The delivery it was rendered for is recorded as ``failed`` with this
    message; the user's transaction is never affected.
    """


class TemplateTooLarge(RenderError):
    """A template built a value, or rendered text, over the size limit
    (``WEBHOOKS_TEMPLATE_MAX_CHARS``)."""


class TemplateTimeout(RenderError):
    """A template ran past its time budget (``WEBHOOKS_TEMPLATE_TIMEOUT``)."""


@dataclass(frozen=True)
class TemplateLimits:
    """How much one render may cost.

    :param timeout: seconds of wall time one render may take
        (``WEBHOOKS_TEMPLATE_TIMEOUT``); None means no time limit.
    :param max_chars: the longest value a template may build and the longest
        text it may render, in characters (``WEBHOOKS_TEMPLATE_MAX_CHARS``).
    """

    timeout: float | None = DEFAULT_TEMPLATE_TIMEOUT
    max_chars: int = MAX_RENDERED_CHARS


#: The limits used when a caller passes none.
DEFAULT_LIMITS = TemplateLimits()


# -- the budget of the render in progress -------------------------------------


class _Budget(threading.local):
    deadline: float | None = None
    timeout: float | None = None
    max_chars: int = MAX_RENDERED_CHARS


budget = _Budget()


def tick() -> None:
    """Fail the render in progress if its time is up."""
    deadline = budget.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateTimeout(
            f"template exceeded its time budget of {budget.timeout:g} s "
            "(WEBHOOKS_TEMPLATE_TIMEOUT)"
        )


def too_large(what: str, size: int) -> TemplateTooLarge:
    return TemplateTooLarge(
        f"{what} would build about {size} characters; templates are limited to "
        f"{budget.max_chars} (WEBHOOKS_TEMPLATE_MAX_CHARS)"
    )


def weight(value: t.Any, limit: int, depth: int = 0) -> int:
    """About how many characters ``value`` makes as text, counting stops
    once past ``limit``. Strings count their length, containers their items
    (two characters each for the separators) plus the items' weight."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, list | tuple | dict | set | frozenset):
        if depth > 32:
            return limit + 1  # deeper than any payload: refused
        total = 2 * len(value)
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            total += weight(item, limit, depth + 1)
            if total > limit:
                break
        return total
    return 1


def check_size(what: str, size: int) -> None:
    if size > budget.max_chars:
        raise too_large(what, size)


def check_value(what: str, value: t.Any) -> t.Any:
    check_size(what, weight(value, budget.max_chars))
    return value


def _int_arg(value: t.Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def printf_size(fmt: str, args: t.Any) -> int:
    """An upper bound of ``fmt % args`` in characters."""
    size = len(fmt) + weight(args, budget.max_chars)
    star_args = [_int_arg(a) for a in (args if isinstance(args, tuple) else ())]
    for width, precision in _PRINTF.findall(fmt):
        for number in (width, precision):
            if number == "*":
                size += max((abs(a) for a in star_args), default=0)
            elif number:
                size += int(number) if len(number) < 20 else 10**20
    return size


def format_size(fmt: str, args: t.Any, kwargs: t.Any) -> int:
    """An upper bound of ``fmt.format(*args, **kwargs)`` in characters."""
    size = len(fmt) + weight(args, budget.max_chars)
    size += weight(kwargs, budget.max_chars)
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise SecurityError("nested replacement fields in a format spec")
        for number in re.findall(r"\d+", spec or ""):
            size += int(number) if len(number) < 20 else 10**20
    return size


def method_size(name: str, text: str | bytes, args: tuple[t.Any, ...]) -> int:
    """An upper bound of the result of ``text.<name>(*args)`` for the string
    methods that can make a string much longer than its inputs."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        return max(len(text), _int_arg(args[0]))
    if name == "expandtabs":
        tab = _int_arg(args[0]) if args else 8
        sep = "\t" if isinstance(text, str) else b"\t"
        return len(text) + text.count(sep) * tab  # type: ignore[arg-type]
    if name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str | bytes) and isinstance(new, str | bytes):
            hits = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
            if len(args) > 2 and _int_arg(args[2]) >= 0:
                hits = min(hits, _int_arg(args[2]))
            return len(text) + hits * len(new)
    if name == "join" and args:
        items = args[0]
        count = len(items) if hasattr(items, "__len__") else 0
        return weight(items, budget.max_chars) + count * len(text)
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max(
            (weight(v, budget.max_chars) for v in args[0].values()), default=1
        )
        return len(text) * max(longest, 1)
    return len(text)


# Filters that can build much more than they are given, with a bound of their
# result: (value, *args) -> characters.
def _center_size(value: t.Any, width: t.Any = 80, *_: t.Any) -> int:
    return max(len(str(value)), _int_arg(width))


def _indent_size(value: t.Any, width: t.Any = 4, *_: t.Any, **__: t.Any) -> int:
    text = str(value)
    per_line = len(width) if isinstance(width, str) else _int_arg(width)
    return len(text) + (text.count("\n") + 1) * per_line


def _join_size(value: t.Any, d: t.Any = "", *_: t.Any, **__: t.Any) -> int:
    count = len(value) if hasattr(value, "__len__") else 0
    return weight(value, budget.max_chars) + count * len(str(d))


def _replace_size(
    value: t.Any, old: t.Any = "", new: t.Any = "", count: t.Any = None, **_: t.Any
) -> int:
    return method_size("replace", str(value), (str(old), str(new), count or -1))


def _format_filter_size(value: t.Any, *args: t.Any, **kwargs: t.Any) -> int:
    return printf_size(str(value), kwargs or args)


def _count_size(value: t.Any, count: t.Any = 1, *_: t.Any, **__: t.Any) -> int:
    # batch(n, fill) and slice(n, fill) build up to n items.
    return weight(value, budget.max_chars) + 2 * _int_arg(count)


def _wordwrap_size(
    value: t.Any, width: t.Any = 79, *args: t.Any, **kwargs: t.Any
) -> int:
    text = str(value)
    wrap = kwargs.get("wrapstring", args[1] if len(args) > 1 else None) or "\n"
    lines = len(text) // max(_int_arg(width), 1) + text.count(" ") + 1
    return len(text) + lines * len(str(wrap))


_FILTER_SIZES: dict[str, t.Callable[..., int]] = {
    "center": _center_size,
    "indent": _indent_size,
    "join": _join_size,
    "replace": _replace_size,
    "format": _format_filter_size,
    "batch": _count_size,
    "slice": _count_size,
    "wordwrap": _wordwrap_size,
}


def checked_filter(name: str, func: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """``func`` with the budget checks: time, the size of its input and of its
    result, and (for the filters of ``_FILTER_SIZES``) the size it would build."""
    size_of = _FILTER_SIZES.get(name)
    pass_arg = getattr(func, "jinja_pass_arg", None)

    @functools.wraps(func)
    def checked(*args: t.Any, **kwargs: t.Any) -> t.Any:
        tick()
        # Context/environment arguments come first when the filter asks.
        values = args[1:] if pass_arg is not None else args
        if values:
            check_value(f"the |{name} filter's input", values[0])
            if size_of is not None:
                check_size(f"|{name}", size_of(*values, **kwargs))
        return check_value(f"the result of |{name}", func(*args, **kwargs))

    return checked


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """``lipsum()`` limited to :data:`MAX_LIPSUM_PARAGRAPHS` paragraphs of at
    most :data:`MAX_LIPSUM_WORDS` words."""
    if not (0 <= _int_arg(n) <= MAX_LIPSUM_PARAGRAPHS) or not (
        0 < _int_arg(min) <= _int_arg(max) <= MAX_LIPSUM_WORDS
    ):
        raise SecurityError(
            f"lipsum(n={n!r}, min={min!r}, max={max!r}): at most "
            f"{MAX_LIPSUM_PARAGRAPHS} paragraphs of at most {MAX_LIPSUM_WORDS} words"
        )
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))
