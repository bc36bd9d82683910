"""A queue URL whose client library is missing names the extra to install.

The libraries are installed here (the dev extra has them), so their absence
is simulated the way Python itself reports it: a ``None`` entry in
``sys.modules`` makes ``import`` raise ``ModuleNotFoundError``.
"""

from __future__ import annotations

import sys

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.worker.queue import make_huey


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("redis://127.0.0.1:6379/9", "redis", "redis"),
        ("rediss://:pw@127.0.0.1:6379/9", "redis", "redis"),
        ("postgresql://postgres@127.0.0.1:5432/x", "psycopg", "postgres"),
        ("postgresql+psycopg://postgres@127.0.0.1/x", "psycopg", "postgres"),
    ],
)
def test_missing_client_library_names_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModuleNotFoundError) as info:
        make_huey(url, str(tmp_path))
    message = str(info.value)
    assert f'pip install "flask-webhooks[{extra}]"' in message
    assert f"needs the {module!r} package" in message
    assert info.value.name == module
    assert ":pw@" not in message, "the URL's password is not shown"


def test_init_app_reports_the_missing_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    app = Flask("extras", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.sqlite'}",
        WEBHOOKS_QUEUE_URL="redis://127.0.0.1:6379/9",
    )
    db = SQLAlchemy(app)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ModuleNotFoundError, match=r"flask-webhooks\[redis\]"):
        Webhooks(app, db=db)
