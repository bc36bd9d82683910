"""Webhook validation (issue 4, part 5): every rule, with bad values, saved for
real through the session; the error names the field and nothing is written."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import types
import warnings

import certifi
import pytest
import sqlalchemy as sa
from flask_webhooks import WebhookValidationError
from flask_webhooks.signing import generate_secret
from flask_webhooks.validation import validate_webhook

VALID = dict(
    name="hook",
    models=["site"],
    on_create=True,
    payload_url="http://127.0.0.1:9/hook",
)


def save(webhooks, db, **fields):
    values = dict(VALID)
    values.update(fields)
    hook = webhooks.Webhook(**values)
    db.session.add(hook)
    db.session.commit()
    return hook


def count(webhooks, db):
    return db.session.scalar(sa.select(sa.func.count()).select_from(webhooks.Webhook))


def rejected(webhooks, db, **fields):
    """Save a webhook that must be refused; return the error after checking
    the session recovered and the table is still empty."""
    with pytest.raises(WebhookValidationError) as info:
        save(webhooks, db, **fields)
    db.session.rollback()
    assert count(webhooks, db) == 0
    return info.value


#: Tables of cases run one test per case on SQLite; on PostgreSQL one test
#: saves every case in turn (the same checks, without a schema per case).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def pem_copy(tmp_path):
    path = tmp_path / "ca.pem"
    shutil.copyfile(certifi.where(), path)
    return str(path)


def not_pem(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a certificate\n")
    return str(path)


def fifo(tmp_path):
    path = tmp_path / "ca.fifo"
    os.mkfifo(path)  # opening it would block: it must not be opened
    return str(path)


def empty_file(tmp_path):
    path = tmp_path / "empty.pem"
    path.write_bytes(b"")
    return str(path)


# (field the error is filed under, fields to set, part of the message).
# A callable value gets tmp_path.
BAD = {
    # name
    "name-empty": ("name", {"name": ""}, "must not be empty"),
    "name-blank": ("name", {"name": "   "}, "must not be empty"),
    "name-none": ("name", {"name": None}, "must not be empty"),
    "name-not-str": ("name", {"name": 42}, "must be a string"),
    "name-too-long": ("name", {"name": "x" * 101}, "at most 100 characters"),
    # models
    "models-empty": ("models", {"models": []}, "at least one model"),
    "models-none": ("models", {"models": None}, "at least one model"),
    "models-string": ("models", {"models": "site"}, "not the string 'site'"),
    "models-comma-string": (
        "models",
        {"models": "site,device"},
        "not the string 'site,device'",
    ),
    "models-dict": ("models", {"models": {"site": True}}, "got dict"),
    "models-unknown": ("models", {"models": ["site", "rack"]}, "not registered: rack"),
    "models-not-str": ("models", {"models": [1]}, "must be strings"),
    "models-repeated": ("models", {"models": ["site", "site"]}, "more than once"),
    # events
    "no-event": (
        "on_create",
        {"on_create": False, "on_update": False, "on_delete": False},
        "at least one event",
    ),
    # booleans
    "enabled-str": ("enabled", {"enabled": "yes"}, "True or False"),
    "on_update-int": ("on_update", {"on_update": 1}, "True or False"),
    "ssl_verification-none": (
        "ssl_verification",
        {"ssl_verification": None},
        "True or False",
    ),
    # payload_url
    "url-empty": ("payload_url", {"payload_url": ""}, "must not be empty"),
    "url-none": ("payload_url", {"payload_url": None}, "must not be empty"),
    "url-ftp": ("payload_url", {"payload_url": "ftp://127.0.0.1/x"}, "http:// or"),
    "url-no-scheme": ("payload_url", {"payload_url": "127.0.0.1/hook"}, "http:// or"),
    "url-javascript": (
        "payload_url",
        {"payload_url": "javascript:alert(1)"},
        "http:// or",
    ),
    "url-no-host": ("payload_url", {"payload_url": "http:///hook"}, "host name"),
    "url-only-scheme": ("payload_url", {"payload_url": "https://"}, "host name"),
    "url-bad-port": (
        "payload_url",
        {"payload_url": "http://127.0.0.1:99999/"},
        "not a valid URL",
    ),
    "url-bad-ipv6": ("payload_url", {"payload_url": "http://[::1/x"}, "not a valid"),
    "url-space": (
        "payload_url",
        {"payload_url": "http://127.0.0.1/a b"},
        "must not contain spaces",
    ),
    "url-too-long": (
        "payload_url",
        {"payload_url": "http://127.0.0.1/" + "a" * 500},
        "at most 500 characters",
    ),
    "url-template-syntax": (
        "payload_url",
        {"payload_url": "http://127.0.0.1/{{ data.id"},
        "template error",
    ),
    "url-template-scheme": (
        "payload_url",
        {"payload_url": "{{ data.url }}"},
        "cannot come from a template",
    ),
    "url-template-no-host": (
        "payload_url",
        {"payload_url": "http:///{{ data.id }}"},
        "host name",
    ),
    "url-template-bad-port": (
        "payload_url",
        {"payload_url": "http://127.0.0.1:0x1/{{ data.id }}"},
        "not a valid URL",
    ),
    "url-template-space": (
        "payload_url",
        {"payload_url": "http://127.0.0.1/{{ data.id }} x"},
        "outside template tags",
    ),
    # http_method
    "method-unknown": ("http_method", {"http_method": "CONNECT"}, "must be one of"),
    "method-empty": ("http_method", {"http_method": ""}, "must be one of"),
    "method-none": ("http_method", {"http_method": None}, "must be one of"),
    # http_content_type
    "ctype-empty": ("http_content_type", {"http_content_type": ""}, "not be empty"),
    "ctype-no-subtype": (
        "http_content_type",
        {"http_content_type": "json"},
        "not a media type",
    ),
    "ctype-crlf": (
        "http_content_type",
        {"http_content_type": "text/plain\r\nX-Evil: 1"},
        "single line",
    ),
    "ctype-too-long": (
        "http_content_type",
        {"http_content_type": "application/" + "x" * 100},
        "at most 100 characters",
    ),
    # additional_headers
    "header-no-colon": (
        "additional_headers",
        {"additional_headers": "X-Token abc"},
        "line 1: expected 'Name: Value'",
    ),
    "header-bad-name": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nBad Name: x"},
        "line 2: 'Bad Name' is not a valid header name",
    ),
    "header-empty-name": (
        "additional_headers",
        {"additional_headers": ": x"},
        "is not a valid header name",
    ),
    "header-template-syntax": (
        "additional_headers",
        {"additional_headers": "X-Id: {{ data.id"},
        "'X-Id': template error",
    ),
    "header-lone-cr": (
        "additional_headers",
        {"additional_headers": "X-A: a\rX-B: b"},
        "control character",
    ),
    "header-nul": (
        "additional_headers",
        {"additional_headers": "X-A: a\x00b"},
        "control character",
    ),
    "header-content-length": (
        "additional_headers",
        {"additional_headers": "Content-Length: 3"},
        "cannot be set",
    ),
    "header-transfer-encoding": (
        "additional_headers",
        {"additional_headers": "transfer-encoding: chunked"},
        "cannot be set",
    ),
    "header-host": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nHost: internal.example"},
        "'Host' cannot be set: the Host header always names",
    ),
    "header-connection": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nConnection: close"},
        "'Connection' cannot be set: it is a hop-by-hop header",
    ),
    "header-keep-alive": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nKeep-Alive: timeout=5"},
        "'Keep-Alive' cannot be set: it is a hop-by-hop header",
    ),
    "header-proxy-connection": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nProxy-Connection: close"},
        "'Proxy-Connection' cannot be set: it is a hop-by-hop header",
    ),
    "header-te": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nTE: trailers"},
        "'TE' cannot be set: it is a hop-by-hop header",
    ),
    "header-trailer": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nTrailer: X-A"},
        "'Trailer' cannot be set: it is a hop-by-hop header",
    ),
    "header-upgrade": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nUpgrade: websocket"},
        "'Upgrade' cannot be set: it is a hop-by-hop header",
    ),
    "header-host-templated": (
        "additional_headers",
        {"additional_headers": "X-Ok: 1\nhost: {{ data.name }}"},
        "'host' cannot be set: the Host header always names",
    ),
    "header-not-str": ("additional_headers", {"additional_headers": 5}, "a string"),
    # body_template
    "body-unclosed": (
        "body_template",
        {"body_template": '{"name": {{ data.name '},
        "template error: line 1",
    ),
    "body-unclosed-block": (
        "body_template",
        {"body_template": "{% for x in data %}{{ x }}"},
        "template error",
    ),
    "body-unknown-filter": (
        "body_template",
        {"body_template": "{{ data|nosuchfilter }}"},
        "No filter named 'nosuchfilter'",
    ),
    "body-not-str": ("body_template", {"body_template": ["{{ x }}"]}, "a string"),
    # signature_scheme and secret
    "scheme-unknown": (
        "signature_scheme",
        {"signature_scheme": "sha1"},
        "must be one of netbox, standard, both",
    ),
    "scheme-case": ("signature_scheme", {"signature_scheme": "NETBOX"}, "one of"),
    "standard-plain-secret": (
        "secret",
        {"signature_scheme": "standard", "secret": "s3cret"},
        "needs a Standard Webhooks secret",
    ),
    "both-bad-base64": (
        "secret",
        {"signature_scheme": "both", "secret": "whsec_not base64!"},
        "'whsec_' followed by base64",
    ),
    "standard-empty-key": (
        "secret",
        {"signature_scheme": "standard", "secret": "whsec_"},
        "needs a Standard Webhooks secret",
    ),
    "secret-too-long": ("secret", {"secret": "x" * 256}, "at most 255 characters"),
    "secret-not-str": ("secret", {"secret": b"bytes"}, "must be a string"),
    # ca_file_path
    "ca-relative": ("ca_file_path", {"ca_file_path": "ca.pem"}, "absolute path"),
    "ca-missing": (
        "ca_file_path",
        {"ca_file_path": lambda tmp: str(tmp / "missing.pem")},
        "does not exist",
    ),
    "ca-directory": (
        "ca_file_path",
        {"ca_file_path": lambda tmp: str(tmp)},
        "is a directory",
    ),
    "ca-not-pem": ("ca_file_path", {"ca_file_path": not_pem}, "not a CA bundle"),
    "ca-empty-file": ("ca_file_path", {"ca_file_path": empty_file}, "not a CA"),
    "ca-not-str": ("ca_file_path", {"ca_file_path": 7}, "must be a string"),
    "ca-fifo": ("ca_file_path", {"ca_file_path": fifo}, "not a regular file"),
    "ca-too-long": (
        "ca_file_path",
        {"ca_file_path": "/" + "a" * 4096},
        "at most 4096 characters",
    ),
    # conditions
    "conditions-json-string": (
        "conditions",
        {"conditions": '{"attr": "status", "value": "active"}'},
        "got a JSON string",
    ),
    "conditions-list": (
        "conditions",
        {"conditions": [{"attr": "status", "value": "active"}]},
        "got list",
    ),
    "conditions-unknown-key": (
        "conditions",
        {"conditions": {"atr": "status", "value": "active"}},
        "unknown key 'atr'",
    ),
    "conditions-op-type": (
        "conditions",
        {"conditions": {"attr": "name", "op": "gt", "value": "b"}},
        "value: 'gt' needs a number value, got str",
    ),
    "conditions-unknown-op": (
        "conditions",
        {"conditions": {"and": [{"attr": "name", "op": "like", "value": "x"}]}},
        "and[0].op: unknown operator 'like'",
    ),
    "conditions-empty-and": ("conditions", {"conditions": {"and": []}}, "empty list"),
    "conditions-upper-and": (
        "conditions",
        {"conditions": {"AND": [{"attr": "name", "value": "x"}]}},
        "lower case",
    ),
    "conditions-changed-with-value": (
        "conditions",
        {"conditions": {"attr": "name", "op": "changed", "value": 1}},
        "takes no value",
    ),
    "conditions-bad-regex": (
        "conditions",
        {"conditions": {"attr": "name", "op": "regex", "value": "("}},
        "invalid regular expression",
    ),
    # timeout
    "timeout-zero": ("timeout", {"timeout": 0}, "greater than 0"),
    "timeout-negative": ("timeout", {"timeout": -1.5}, "greater than 0"),
    "timeout-too-long": ("timeout", {"timeout": 300.5}, "at most 300 seconds"),
    "timeout-nan": ("timeout", {"timeout": float("nan")}, "greater than 0"),
    "timeout-inf": ("timeout", {"timeout": float("inf")}, "at most 300"),
    "timeout-string": ("timeout", {"timeout": "5"}, "must be a number"),
    "timeout-bool": ("timeout", {"timeout": True}, "must be a number"),
}


def check_bad_value(webhooks, db, tmp_path, case):
    field, fields, fragment = case
    fields = {k: (v(tmp_path) if callable(v) else v) for k, v in fields.items()}
    error = rejected(webhooks, db, **fields)
    assert field in error.errors, error.errors
    assert fragment in error.errors[field]
    assert f"{field}: " in str(error)
    # Only the bad field is reported: the other fields are valid.
    assert list(error.errors) == [field]


@SQLITE_ONLY
@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_value_is_refused_and_nothing_saved(webhooks, db, tmp_path, case):
    check_bad_value(webhooks, db, tmp_path, case)


@POSTGRES_ONLY
def test_every_bad_value_is_refused_on_postgres(webhooks, db, tmp_path):
    for name, case in BAD.items():
        try:
            check_bad_value(webhooks, db, tmp_path, case)
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from e


GOOD = {
    "minimal": {},
    "https": {"payload_url": "https://127.0.0.1/hook"},
    "ipv6": {"payload_url": "http://[::1]:8080/hook"},
    "templated-path": {"payload_url": "http://127.0.0.1/{{ model }}/{{ data.id }}"},
    "templated-host": {"payload_url": "https://{{ data.name }}.localhost/x"},
    "templated-query": {"payload_url": "http://127.0.0.1/h?id={{ data.id }}"},
    "lower-method": {"http_method": "put"},
    "every-method": {"http_method": "DELETE"},
    "content-type-params": {"http_content_type": "application/json; charset=utf-8"},
    "form": {"http_content_type": "application/x-www-form-urlencoded"},
    "headers-blank-lines": {
        "additional_headers": "\nX-One: 1\r\n\n   \nX-Two:\t{{ data.id }}\n"
    },
    "header-empty-value": {"additional_headers": "X-Empty:"},
    "body-template": {"body_template": '{"n": {{ data.name|json }}}'},
    "standard": {"signature_scheme": "standard", "secret": generate_secret()},
    "both": {"signature_scheme": "both", "secret": generate_secret()},
    "standard-unsigned": {"signature_scheme": "standard", "secret": ""},
    "netbox-any-secret": {"signature_scheme": "netbox", "secret": "whatever"},
    "ca-file": {"ca_file_path": certifi.where()},
    "ca-empty-means-none": {"ca_file_path": ""},
    "tls-off": {"ssl_verification": False},
    "conditions": {"conditions": {"and": [{"attr": "status", "value": "active"}]}},
    "conditions-empty": {"conditions": {}},
    "timeout-max": {"timeout": 300},
    "timeout-small": {"timeout": 0.5},
    "all-events": {"on_create": True, "on_update": True, "on_delete": True},
    "only-delete": {"on_create": False, "on_delete": True},
    "several-models": {"models": ["site", "device", "tag"]},
}


@SQLITE_ONLY
@pytest.mark.parametrize("fields", GOOD.values(), ids=GOOD.keys())
def test_valid_configurations_are_saved(webhooks, db, fields):
    hook = save(webhooks, db, **fields)
    db.session.expire_all()
    assert count(webhooks, db) == 1
    for key, value in fields.items():
        assert getattr(hook, key) == value


def test_every_valid_configuration_round_trips(webhooks, db):
    hooks = {
        name: webhooks.Webhook(**{**VALID, "name": name, **fields})
        for name, fields in GOOD.items()
    }
    db.session.add_all(hooks.values())
    db.session.commit()
    db.session.expire_all()
    assert count(webhooks, db) == len(GOOD)
    for name, fields in GOOD.items():
        for key, value in fields.items():
            assert getattr(hooks[name], key) == value, (name, key)


def test_several_bad_fields_are_all_named(webhooks, db):
    error = rejected(
        webhooks,
        db,
        name="",
        models=["nope"],
        payload_url="ftp://x",
        timeout=0,
        body_template="{{",
    )
    assert set(error.errors) == {
        "name",
        "models",
        "payload_url",
        "timeout",
        "body_template",
    }
    text = str(error)
    assert text.startswith("invalid webhook: ")
    for field in error.errors:
        assert f"{field}: " in text


def test_error_type_is_public_and_picklable():
    import flask_webhooks

    assert flask_webhooks.WebhookValidationError is WebhookValidationError
    assert issubclass(WebhookValidationError, ValueError)
    error = WebhookValidationError({"name": "must not be empty"})
    copy = pickle.loads(pickle.dumps(error))
    assert copy.errors == {"name": "must not be empty"}
    assert str(copy) == str(error)


# -- name uniqueness ----------------------------------------------------------


def test_duplicate_name_is_a_validation_error_not_integrity_error(webhooks, db):
    save(webhooks, db, name="crm")
    with pytest.raises(WebhookValidationError) as info:
        save(webhooks, db, name="crm")
    db.session.rollback()
    assert info.value.errors == {"name": "a webhook named 'crm' already exists"}
    assert count(webhooks, db) == 1


def test_duplicate_names_pending_in_one_flush(webhooks, db):
    db.session.add_all(
        [
            webhooks.Webhook(**{**VALID, "name": "twin"}),
            webhooks.Webhook(**{**VALID, "name": "twin"}),
        ]
    )
    with pytest.raises(WebhookValidationError, match="'twin' already exists"):
        db.session.commit()
    db.session.rollback()
    assert count(webhooks, db) == 0


def test_rename_onto_existing_name_refused_and_row_unchanged(webhooks, db):
    save(webhooks, db, name="first")
    second = save(webhooks, db, name="second")
    second.name = "first"
    with pytest.raises(WebhookValidationError, match="'first' already exists"):
        db.session.commit()
    db.session.rollback()
    names = db.session.scalars(
        sa.select(webhooks.Webhook.name).order_by(webhooks.Webhook.id)
    ).all()
    assert names == ["first", "second"]


def test_updating_a_webhook_keeps_its_own_name(webhooks, db):
    hook = save(webhooks, db, name="same")
    hook.enabled = False
    hook.name = "same"
    db.session.commit()
    hook.payload_url = "http://127.0.0.1:9/other"
    db.session.commit()
    assert count(webhooks, db) == 1


def test_update_is_validated_too(webhooks, db):
    hook = save(webhooks, db)
    hook.timeout = 1000
    with pytest.raises(WebhookValidationError, match="timeout"):
        db.session.commit()
    db.session.rollback()
    db.session.expire_all()
    assert hook.timeout is None


def test_updates_report_only_changed_fields(webhooks, db, tmp_path):
    # A CA file removed after saving does not stop anyone from disabling or
    # renaming the webhook; changing the field itself is checked.
    path = pem_copy(tmp_path)
    hook = save(webhooks, db, ca_file_path=path)
    os.remove(path)
    assert hook.validate() == {}
    hook.enabled = False
    hook.name = "renamed"
    db.session.commit()
    hook.ca_file_path = str(tmp_path / "other.pem")
    assert set(hook.validate()) == {"ca_file_path"}
    with pytest.raises(WebhookValidationError, match="ca_file_path: "):
        db.session.commit()
    db.session.rollback()
    db.session.expire_all()
    assert (hook.name, hook.enabled, hook.ca_file_path) == ("renamed", False, path)


def test_scheme_change_checks_the_unchanged_secret(webhooks, db):
    hook = save(webhooks, db, secret="plain-netbox-secret")
    hook.signature_scheme = "standard"
    with pytest.raises(WebhookValidationError) as info:
        db.session.commit()
    db.session.rollback()
    assert list(info.value.errors) == ["secret"]
    hook.signature_scheme = "standard"
    hook.secret = generate_secret()
    db.session.commit()
    hook.on_create = False  # no event left: reported although on_create
    with pytest.raises(WebhookValidationError, match="on_create: choose at least"):
        db.session.commit()  # is the only field that changed
    db.session.rollback()


def test_validate_unsaved_object_with_explicit_session(webhooks, db):
    # What the admin does with form data before adding anything to the session.
    save(webhooks, db, name="taken")
    fresh = webhooks.Webhook(**{**VALID, "name": "taken"})
    assert fresh.validate() == {}  # not in a session: uniqueness not checked
    errors = validate_webhook(fresh, webhooks.registry, session=db.session)
    assert errors == {"name": "a webhook named 'taken' already exists"}
    assert (
        validate_webhook(
            webhooks.Webhook(**{**VALID, "name": "free"}),
            webhooks.registry,
            session=db.session,
        )
        == {}
    )
    assert fresh not in db.session


def test_validate_plain_object_form_data(tmp_path):
    # Any object with the fields works, without an app or a database.
    form = types.SimpleNamespace(
        name="x" * 101,
        enabled=True,
        models="site,device",
        on_create=False,
        on_update=False,
        on_delete=False,
        payload_url="http://127.0.0.1/{{",
        http_method="GET",
        http_content_type="application/json",
        additional_headers="",
        body_template="",
        secret="",
        signature_scheme="netbox",
        ssl_verification=True,
        ca_file_path=str(tmp_path),
        conditions=None,
        timeout=None,
    )
    errors = validate_webhook(form, None)
    assert set(errors) == {
        "name",
        "models",
        "on_create",
        "payload_url",
        "ca_file_path",
    }


def test_models_unchecked_without_registry():
    form = types.SimpleNamespace(**{**VALID, "models": ["anything"]})
    for key, value in (
        ("enabled", True),
        ("on_update", False),
        ("on_delete", False),
        ("http_method", "POST"),
        ("http_content_type", "application/json"),
        ("additional_headers", ""),
        ("body_template", ""),
        ("secret", ""),
        ("signature_scheme", "netbox"),
        ("ssl_verification", True),
        ("ca_file_path", None),
        ("conditions", None),
        ("timeout", None),
    ):
        setattr(form, key, value)
    assert validate_webhook(form, None) == {}


# -- CA bundle readability ------------------------------------------------------


def _validate_as_nobody(form):
    """Run validate_webhook in a forked child that dropped root privileges."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child
        # only runs the validator and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_fd, json.dumps(validate_webhook(form, None)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(output)


def test_unreadable_ca_file(webhooks, db):
    # Not under tmp_path: pytest keeps that private to its user, and the
    # unprivileged child below must reach the file to be refused by it.
    folder = tempfile.mkdtemp(prefix="webhooks-ca-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "ca.pem")
    shutil.copyfile(certifi.where(), path)
    os.chmod(path, 0)
    try:
        if os.geteuid() != 0:
            errors = rejected(webhooks, db, ca_file_path=path).errors
        else:
            # root reads any file: validate as an unprivileged user instead.
            form = webhooks.Webhook(**{**VALID, "ca_file_path": path})
            fields = {c.key: getattr(form, c.key) for c in form.__table__.columns}
            errors = _validate_as_nobody(types.SimpleNamespace(**fields))
    finally:
        shutil.rmtree(folder)
    assert errors == {"ca_file_path": f"{path!r} is not readable: Permission denied"}


def test_readable_ca_copy_is_accepted(webhooks, db, tmp_path):
    hook = save(webhooks, db, ca_file_path=pem_copy(tmp_path))
    assert hook.ca_file_path == str(tmp_path / "ca.pem")
