"""The sandbox webhook templates render in, with its size and time limits.

Templates (``body_template``, ``additional_headers`` values and a templated
``payload_url``) are written by whoever may edit webhooks, and they run in
the user's commit (the body) and in delivery workers (URL and headers). So
beyond Jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
(no access to internals, no mutation of the context), rendering is bounded:

* **size**: no value a template builds, and not its output, may be longer
  than :attr:`TemplateLimits.max_chars` characters. Binary operators
  (``+ * % **``), ``~`` concatenation, every filter and every call are
  checked, and the operations that can multiply a size (``*``, ``center``,
  ``'%9999999s'|format``, ``str.replace``, ``join``, ``lipsum`` ...) are
  refused *before* they allocate.
* **time**: a render gets :attr:`TemplateLimits.timeout` seconds of wall
  time, checked on every loop iteration (in steps), call, filter and
  operator; a template that runs longer fails with
  :exc:`TemplateTimeout`.

A violation fails the render with a :exc:`RenderError` naming the limit; the
caller records the delivery as ``failed`` with that message.

This package also holds the JSON conversion that the ``json`` filter and the
payload encoder (:mod:`flask_webhooks.payload`) share, so that imports go one
way: ``validation`` and ``payload`` import this package, never the reverse.
Its modules: :mod:`~flask_webhooks.templating.limits` (limits, budget,
size checks) and :mod:`~flask_webhooks.templating.sandbox` (environment,
rendering).
"""

from __future__ import annotations

from .limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from .limits import DEFAULT_TEMPLATE_TIMEOUT as DEFAULT_TEMPLATE_TIMEOUT
from .limits import MAX_RENDERED_CHARS as MAX_RENDERED_CHARS
from .limits import RenderError as RenderError
from .limits import TemplateLimits as TemplateLimits
from .limits import TemplateTimeout as TemplateTimeout
from .limits import TemplateTooLarge as TemplateTooLarge
from .sandbox import environment as environment
from .sandbox import finite as finite
from .sandbox import json_default as json_default
from .sandbox import json_text as json_text
from .sandbox import render as render
from .sandbox import template_syntax_error as template_syntax_error

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TEMPLATE_TIMEOUT",
    "MAX_RENDERED_CHARS",
    "RenderError",
    "TemplateLimits",
    "TemplateTimeout",
    "TemplateTooLarge",
    "environment",
    "finite",
    "json_default",
    "json_text",
    "render",
    "template_syntax_error",
]
