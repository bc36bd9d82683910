"""The ``webhooks`` command as a Flask CLI plugin (``flask.commands`` entry point).

Flask looks an app's own commands up only after loading the app; without
one (no ``--app``, no ``FLASK_APP``, no ``app.py`` here) it says *Could not
locate a Flask application* and then *No such command 'webhooks'*. Plugin
commands exist before the app is loaded, so this group can answer instead,
saying how to point ``flask`` at the app. With an app it defers to the
app's own ``webhooks`` group (the one ``init_app`` adds), so it changes
nothing for an app that loads.
"""

from __future__ import annotations

import click
from flask import current_app
from flask import Flask
from flask.cli import NoAppException
from flask.cli import ScriptInfo

#: What to do when ``flask`` finds no app.
NO_APP_HINT = (
    "flask webhooks runs inside your app: tell flask where it is with "
    "`flask --app yourapp webhooks ...` or `export FLASK_APP=yourapp` "
    "(a module, package or `module:factory()`)"
)


class WebhooksPluginGroup(click.Group):
    """``flask webhooks``: the loaded app's ``webhooks`` group, or a hint."""

    def _app(self, ctx: click.Context) -> Flask:
        try:
            app = ctx.ensure_object(ScriptInfo).load_app()
        except NoAppException as e:
            raise click.UsageError(f"{e.format_message()}\n{NO_APP_HINT}") from None
        if not current_app or current_app._get_current_object() is not app:  # type: ignore[attr-defined]
            ctx.with_resource(app.app_context())
        return app

    def _target(self, ctx: click.Context) -> click.Group:
        app = self._app(ctx)
        group = app.cli.get_command(ctx, "webhooks")
        if not isinstance(group, click.Group) or group is self:
            raise click.UsageError(
                f"the app {app.name!r} does not set up flask-webhooks: call "
                "Webhooks(app, db=db) or webhooks.init_app(app, db=db) in it"
            )
        return group

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._target(ctx).get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        try:
            return self._target(ctx).list_commands(ctx)
        except click.UsageError:
            return []  # --help without an app: usage only; a command says why


webhooks_plugin = WebhooksPluginGroup(
    "webhooks",
    help="Webhook deliveries, workers and maintenance (needs your app: "
    "flask --app yourapp webhooks ...).",
)
