"""Sphinx configuration for the flask-webhooks docs (``make docs``)."""

from __future__ import annotations

import html
import importlib
import re
import typing as t
from pathlib import Path

import flask_webhooks
from sphinx import addnodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

project = "flask-webhooks"
author = "flask-webhooks contributors"
copyright = "flask-webhooks contributors"
release = flask_webhooks.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
root_doc = "index"
default_role = "code"
pygments_style = "friendly"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True}
# The API reference documents the package, not the third-party libraries its
# signatures mention; nothing else is imported at build time.

# `make docs` builds with -n: a reference that resolves nowhere fails the
# build. The docs build offline (no intersphinx), so names from the standard
# library and third-party packages cannot resolve; they are listed here.
nitpick_ignore_regex = [
    # typing aliases and stdlib, as written in signatures and docstrings
    (r"py:.*", r"t\..*"),
    (r"py:.*", r"(collections\.abc|ipaddress|socket|ssl|re|time)\..*"),
    (r"py:class", r"(dt|datetime)\.(datetime|timedelta)"),
    (r"py:mod", r"(secrets|ipaddress|requests|re|regex)"),
    (r"py:class", r"(dt|datetime)\.(datetime|timedelta)"),
    # third-party classes in signatures
    (r"py:class", r"(flask\.app\.)?Flask|SQLAlchemy|Session|ma\.Schema|huey_mod\.Huey"),
    (r"py:class", r"marshmallow\.schema\.Schema"),
    (r"py:class", r"jinja2\..*"),
    (r"py:class", r"requests\..*"),
]
nitpick_ignore = [
    # Internal types named in public signatures and docstrings, not part of
    # the documented API (yet): flask_webhooks.registry, .models, .extension.
    ("py:class", "AccessCheck"),
    ("py:class", "Network"),
    ("py:class", "Registry"),
    ("py:class", "Webhook"),
    ("py:class", "WebhooksState"),
    ("py:class", "flask_webhooks.admin.base.Extension"),
    ("py:class", "flask_webhooks.registry.Registration"),
    ("py:class", "flask_webhooks.models.WebhookBase"),
    ("py:class", "flask_webhooks.models.DeliveryBase"),
    ("py:class", "flask_webhooks.models.DeliveryAttemptBase"),
    ("py:func", "flask_webhooks.delivery.attempt.build_request"),
    ("py:func", "validate_webhook"),
    ("py:class", "SessionFactory"),
    ("py:class", "URLPolicy"),
    ("py:class", "flask_webhooks.transport.policy.URLPolicy"),
    ("py:exc", "BlockedAddress"),
]

html_theme = "furo"
html_title = f"flask-webhooks {release}"
html_static_path: list[str] = []


def _viewcode_alias_ids(app: t.Any, doctree: t.Any) -> None:
    """Give documented objects the anchor viewcode's [docs] links use.

    viewcode links every object of a source module to ``<name>.<object>``
    with the name the module was first documented under: ``flask_webhooks``
    for :mod:`flask_webhooks.validation` (``WebhookValidationError`` is
    documented there), so ``validate_webhook``'s link pointed nowhere.
    """
    modules = getattr(app.env, "_viewcode_modules", {})
    for sig in doctree.findall(addnodes.desc_signature):
        modname, fullname = sig.get("module"), sig.get("fullname")
        if not modname or not fullname or not sig["ids"]:
            continue
        try:
            obj: t.Any = importlib.import_module(modname)
            for part in fullname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue
        entry = modules.get(getattr(obj, "__module__", None) or modname)
        if isinstance(entry, tuple) and entry[3] != modname:
            alias = f"{entry[3]}.{fullname}"
            if alias not in sig["ids"]:
                sig["ids"].append(alias)


def _check_anchors(app: t.Any, exception: Exception | None) -> None:
    """Warn (a failure under -W) about internal links to missing anchors."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    pages = {p: p.read_text("utf-8") for p in out.rglob("*.html")}
    ids = {p: set(re.findall(r'\bid="([^"]+)"', text)) for p, text in pages.items()}
    for page, text in pages.items():
        for href, anchor in re.findall(r'href="([^"#:]*)#([^"]+)"', text):
            target = (page.parent / href).resolve() if href else page
            if target in ids and html.unescape(anchor) not in ids[target]:
                logger.warning(
                    "broken link in %s: %s#%s", page.relative_to(out), href, anchor
                )


def setup(app: t.Any) -> None:
    app.connect("doctree-read", _viewcode_alias_ids, priority=600)
    app.connect("build-finished", _check_anchors)
