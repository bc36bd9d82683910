"""The extension objects, shared by every app :func:`~example_app.create_app` makes."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks

db = SQLAlchemy()
webhooks = Webhooks(db=db)
