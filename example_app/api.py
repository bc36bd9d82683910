"""A tiny JSON API, so changes can be made with curl.

``GET/POST /api/sites``, ``GET/PATCH/DELETE /api/sites/<id>``, the same for
``/api/devices``. Every write commits one transaction, which flask-webhooks
turns into one event per changed object.
"""

from __future__ import annotations

import re
import typing as t

import marshmallow as ma
import sqlalchemy as sa
from flask import abort
from flask import Blueprint
from flask import jsonify
from flask import request
from flask import Response
from flask import url_for
from werkzeug.exceptions import HTTPException

from .extensions import db
from .models import Device
from .models import Site
from .models import Tag
from .models import Tenant
from .schemas import DeviceInput
from .schemas import DeviceSchema
from .schemas import SiteInput
from .schemas import SiteSchema

bp = Blueprint("api", __name__, url_prefix="/api")

site_schema = SiteSchema()
device_schema = DeviceSchema()


class APIError(Exception):
    """A 400 with field errors: ``{"errors": {field: [messages]}}``."""

    def __init__(self, errors: t.Mapping[str, t.Any], status: int = 400) -> None:
        super().__init__(errors)
        self.errors = dict(errors)
        self.status = status


@bp.errorhandler(APIError)
def _api_error(e: APIError) -> tuple[Response, int]:
    return jsonify(errors=e.errors), e.status


@bp.errorhandler(HTTPException)
def _http_error(e: HTTPException) -> tuple[Response, int]:
    return jsonify(error=e.description), e.code or 500


@bp.get("/")
def index() -> Response:
    return jsonify(
        sites=url_for(".list_sites", _external=True),
        devices=url_for(".list_devices", _external=True),
    )


def _body(schema: ma.Schema, partial: bool) -> dict[str, t.Any]:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise APIError(
            {"_body": ["send a JSON object (Content-Type: application/json)"]}
        )
    try:
        return t.cast(dict[str, t.Any], schema.load(payload, partial=partial))
    except ma.ValidationError as e:
        raise APIError(t.cast(dict[str, t.Any], e.normalized_messages())) from None


def _slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"


def _get(model: type[t.Any], object_id: int) -> t.Any:
    obj = db.session.get(model, object_id)
    if obj is None:
        abort(404, description=f"{model.__name__.lower()} {object_id} not found")
    return obj


def _tenant(values: dict[str, t.Any]) -> None:
    tenant_id = values.get("tenant_id")
    if tenant_id is not None and db.session.get(Tenant, tenant_id) is None:
        raise APIError({"tenant_id": [f"no tenant with id {tenant_id}"]})


def _commit() -> None:
    try:
        db.session.commit()
    except sa.exc.IntegrityError as e:
        db.session.rollback()
        raise APIError(
            {"_db": [f"conflicts with an existing object: {e.orig}"]}, 409
        ) from None


# -- sites -----------------------------------------------------------------------


@bp.get("/sites")
def list_sites() -> Response:
    sites = db.session.scalars(sa.select(Site).order_by(Site.id)).all()
    return jsonify(site_schema.dump(sites, many=True))


@bp.get("/sites/<int:site_id>")
def get_site(site_id: int) -> Response:
    return jsonify(site_schema.dump(_get(Site, site_id)))


def _apply_site(site: Site, values: dict[str, t.Any]) -> None:
    _tenant(values)
    if "tags" in values:
        slugs = values.pop("tags")
        tags = db.session.scalars(sa.select(Tag).where(Tag.slug.in_(slugs))).all()
        missing = sorted(set(slugs) - {tag.slug for tag in tags})
        if missing:
            raise APIError({"tags": [f"unknown tag slug(s): {', '.join(missing)}"]})
        site.tags = list(tags)
    for key, value in values.items():
        setattr(site, key, value)


@bp.post("/sites")
def create_site() -> tuple[Response, int, dict[str, str]]:
    values = _body(SiteInput(), partial=False)
    values.setdefault("slug", _slugify(values["name"]))
    site = Site()
    _apply_site(site, values)
    db.session.add(site)
    _commit()
    location = url_for(".get_site", site_id=site.id)
    return jsonify(site_schema.dump(site)), 201, {"Location": location}


@bp.patch("/sites/<int:site_id>")
def update_site(site_id: int) -> Response:
    site = _get(Site, site_id)
    _apply_site(site, _body(SiteInput(), partial=True))
    _commit()
    return jsonify(site_schema.dump(site))


@bp.delete("/sites/<int:site_id>")
def delete_site(site_id: int) -> tuple[str, int]:
    db.session.delete(_get(Site, site_id))
    _commit()
    return "", 204


# -- devices ---------------------------------------------------------------------


@bp.get("/devices")
def list_devices() -> Response:
    devices = db.session.scalars(sa.select(Device).order_by(Device.id)).all()
    return jsonify(device_schema.dump(devices, many=True))


@bp.get("/devices/<int:device_id>")
def get_device(device_id: int) -> Response:
    return jsonify(device_schema.dump(_get(Device, device_id)))


def _apply_device(device: Device, values: dict[str, t.Any]) -> None:
    _tenant(values)
    site_id = values.get("site_id")
    if site_id is not None and db.session.get(Site, site_id) is None:
        raise APIError({"site_id": [f"no site with id {site_id}"]})
    for key, value in values.items():
        setattr(device, key, value)


@bp.post("/devices")
def create_device() -> tuple[Response, int, dict[str, str]]:
    device = Device()
    _apply_device(device, _body(DeviceInput(), partial=False))
    db.session.add(device)
    _commit()
    location = url_for(".get_device", device_id=device.id)
    return jsonify(device_schema.dump(device)), 201, {"Location": location}


@bp.patch("/devices/<int:device_id>")
def update_device(device_id: int) -> Response:
    device = _get(Device, device_id)
    _apply_device(device, _body(DeviceInput(), partial=True))
    _commit()
    return jsonify(device_schema.dump(device))


@bp.delete("/devices/<int:device_id>")
def delete_device(device_id: int) -> tuple[str, int]:
    db.session.delete(_get(Device, device_id))
    _commit()
    return "", 204
