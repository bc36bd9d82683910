"""Create the tables and seed a fresh database with a few objects and the
demo webhook."""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app

from .events import SITE_DECOMMISSIONED
from .extensions import db
from .extensions import webhooks
from .models import Device
from .models import Site
from .models import Status
from .models import Tag
from .models import Tenant

#: Name of the seeded webhook that sends everything to the demo receiver.
DEMO_WEBHOOK = "demo-receiver"


def init_db() -> list[str]:
    """Create missing tables; seed an empty database; point the demo webhook
    at this server's receiver. Returns what was done, one line per step.

    Call inside an app context. Safe to call on every start.
    """
    done: list[str] = []
    db.create_all()
    if db.session.scalar(sa.select(sa.func.count()).select_from(Site)) == 0:
        _seed_inventory()
        done.append("seeded tenants, tags, sites and devices")
    url = current_app.config["DEMO_RECEIVER_URL"]
    Webhook = webhooks.Webhook
    hook = db.session.scalar(sa.select(Webhook).where(Webhook.name == DEMO_WEBHOOK))
    if hook is None:
        # Created after the inventory, so seeding sends nothing.
        db.session.add(
            Webhook(
                name=DEMO_WEBHOOK,
                enabled=True,
                models=["site", "device", "tenant", "tag"],
                on_create=True,
                on_update=True,
                on_delete=True,
                event_types=[SITE_DECOMMISSIONED],
                payload_url=url,
                secret=current_app.config["DEMO_WEBHOOK_SECRET"],
                signature_scheme="both",
            )
        )
        db.session.commit()
        done.append(f"created webhook {DEMO_WEBHOOK!r} -> {url}")
    elif hook.payload_url != url and _is_demo_receiver_url(hook.payload_url):
        # Same database, another PORT: follow the server.
        old = hook.payload_url
        hook.payload_url = url
        db.session.commit()
        done.append(f"webhook {DEMO_WEBHOOK!r} now sends to {url} (was {old})")
    return done


def _is_demo_receiver_url(url: str) -> bool:
    split = urlsplit(url)
    return (
        split.hostname in ("127.0.0.1", "localhost")
        and split.path.rstrip("/") == "/receiver"
    )


def _seed_inventory() -> None:
    acme = Tenant(name="Acme Corp", slug="acme", description="The usual customer")
    globex = Tenant(name="Globex", slug="globex")
    prod = Tag(name="Production", slug="prod", color="e53935")
    edge = Tag(name="Edge", slug="edge", color="1e88e5")
    lab = Tag(name="Lab", slug="lab", color="43a047")
    ams = Site(
        name="Amsterdam 1",
        slug="ams1",
        status=Status.active,
        tenant=acme,
        tags=[prod, edge],
        description="Primary data centre",
    )
    fra = Site(
        name="Frankfurt 2",
        slug="fra2",
        status=Status.planned,
        tenant=globex,
        tags=[lab],
    )
    db.session.add_all([acme, globex, prod, edge, lab, ams, fra])
    db.session.add_all(
        [
            Device(name="ams1-core-1", serial="SN1001", site=ams, tenant=acme),
            Device(name="ams1-core-2", serial="SN1002", site=ams, tenant=acme),
            Device(name="fra2-lab-1", serial="SN2001", site=fra, status=Status.planned),
        ]
    )
    db.session.commit()
