"""``flask webhooks`` before an app is found: the ``flask.commands`` plugin.

Run as real ``flask`` processes (the plugin is found through the installed
package's entry points, as in a user's shell).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def flask(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLASK_APP"}
    return subprocess.run(
        [sys.executable, "-m", "flask", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_an_app_says_how_to_name_it(tmp_path: Path) -> None:
    result = flask(tmp_path, "webhooks", "list")
    assert result.returncode == 2
    assert "Could not locate a Flask application" in result.stderr
    assert "No such command" not in result.stderr
    assert "flask --app yourapp webhooks" in result.stderr
    assert "FLASK_APP" in result.stderr


def test_an_app_without_the_extension(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(
        'from flask import Flask\napp = Flask("plain")\n'
    )
    result = flask(tmp_path, "--app", "plain", "webhooks", "list")
    assert result.returncode == 2
    assert "the app 'plain' does not set up flask-webhooks" in result.stderr


def test_an_app_with_the_extension_gets_its_commands(tmp_path: Path) -> None:
    (tmp_path / "hooked.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            from flask_sqlalchemy import SQLAlchemy
            from flask_webhooks import Webhooks

            app = Flask("hooked", instance_path={str(tmp_path / "instance")!r})
            app.config.update(
                SQLALCHEMY_DATABASE_URI="sqlite:///{tmp_path / "app.sqlite"}",
                WEBHOOKS_QUEUE_URL="immediate://",
            )
            db = SQLAlchemy(app)
            Webhooks(app, db=db)
            with app.app_context():
                db.create_all()
            """
        )
    )
    result = flask(tmp_path, "--app", "hooked", "webhooks", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No webhooks yet")
    helped = flask(tmp_path, "--app", "hooked", "--help")
    assert helped.stdout.count("webhooks") == 1
