"""Sphinx configuration for the flask-webhooks docs (``make docs``)."""

from __future__ import annotations

import flask_webhooks

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

html_theme = "furo"
html_title = f"flask-webhooks {release}"
html_static_path: list[str] = []
