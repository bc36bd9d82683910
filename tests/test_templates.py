"""Templates (issue 4, part 2): body, headers and URL rendered in the sandbox,
captured for real and delivered to the local receiver."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
import types

import pytest
import sqlalchemy as sa
from flask_webhooks.payload import MAX_RENDERED_CHARS
from flask_webhooks.payload import render
from flask_webhooks.payload import render_body
from flask_webhooks.payload import render_headers
from flask_webhooks.payload import render_url
from flask_webhooks.payload import RenderError
from flask_webhooks.payload import template_syntax_error
from flask_webhooks.templating import TemplateLimits
from flask_webhooks.templating import TemplateTimeout
from flask_webhooks.templating import TemplateTooLarge

from tests.conftest import D
from tests.conftest import Status

SECRET = "s3cret-never-in-output"
#: Per-template cases run on SQLite; one fan-out test covers both databases.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def deliveries(webhooks, db):
    D_ = webhooks.Delivery
    return db.session.scalars(
        sa.select(D_).order_by(D_.created_at, D_.webhook_name)
    ).all()


def sites(models, db):
    return db.session.scalars(sa.select(models.Site.name)).all()


def add_site(models, db, **fields):
    values = dict(name="ams1", budget=D("12.50"), opened=dt.date(2026, 1, 2))
    values.update(fields)
    site = models.Site(**values)
    db.session.add(site)
    db.session.commit()
    return site


# -- body ---------------------------------------------------------------------


def test_body_template_is_rendered_signed_and_stored(
    webhooks, db, models, receiver, make_hook
):
    hook = make_hook(
        name="crm",
        body_template=(
            '{"site": {{ data.name|json }}, "event": "{{ event }}", '
            '"model": "{{ model }}", "hook": {{ webhook|json }}, '
            '"tags": {{ data.tags|json }}}'
        ),
    )
    site = add_site(models, db, name='ams "one"\n')
    (req,) = receiver.wait_for(1)
    assert json.loads(req.body) == {
        "site": 'ams "one"\n',
        "event": "created",
        "model": "site",
        "hook": {"id": hook.id, "name": "crm"},
        "tags": [],
    }
    assert req.headers["Content-Type"] == "application/json"
    expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == expected
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "succeeded"
    assert delivery.body == req.body
    assert delivery.object_id == str(site.id)


def test_json_filter(webhooks, db, models, receiver, make_hook):
    make_hook(body_template="{{ data|json(indent=2) }}")
    site = add_site(models, db)
    (req,) = receiver.wait_for(1)
    text = req.body.decode()
    assert "\n  " in text  # indented
    assert json.loads(text) == {
        "id": site.id,
        "name": "ams1",
        "status": "active",
        "tenant": None,
        "budget": "12.50",  # Decimal, as the default JSON body has it
        "opened": "2026-01-02",
        "tags": [],
    }


def test_body_template_sees_the_json_payload(webhooks, db, models, receiver, make_hook):
    # Raw snapshot values (Decimal, date, Enum) render as in the default JSON
    # body, in the body (rendered at capture) and in headers (at send time).
    values = (
        "{{ data.budget }}|{{ snapshots.postchange.budget }}|"
        "{{ snapshots.postchange.opened }}|{{ snapshots.postchange.status }}|"
        "{{ snapshots.prechange }}|{{ username }}|{{ request_id|length }}"
    )
    make_hook(body_template=values, additional_headers=f"X-Values: {values}")
    add_site(models, db, status=Status.planned)
    (req,) = receiver.wait_for(1)
    assert req.body == b"12.50|12.50|2026-01-02|planned|None|None|36"
    assert req.headers["X-Values"] == req.body.decode()


def test_updates_render_both_snapshots(webhooks, db, models, receiver, make_hook):
    site = add_site(models, db)
    make_hook(
        on_create=False,
        body_template=(
            "{{ event }}: {{ snapshots.prechange.name }} -> "
            "{{ snapshots.postchange.name }}"
        ),
    )
    site.name = "ams2"
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.body == b"updated: ams1 -> ams2"


def test_deletes_render_the_state_before(webhooks, db, models, receiver, make_hook):
    site = add_site(models, db)
    make_hook(on_create=False, body_template="{{ event }} {{ data.name }}")
    db.session.delete(site)
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.body == b"deleted ams1"


def test_templated_and_default_hooks_share_one_event(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="a-plain")
    make_hook(name="b-template", body_template="{{ webhook.name }}:{{ data.name }}")
    make_hook(name="c-plain")
    add_site(models, db)
    requests = receiver.wait_for(3)
    bodies = [r.body for r in requests]
    assert b"b-template:ams1" in bodies
    plain = [json.loads(b) for b in bodies if b != b"b-template:ams1"]
    assert plain[0] == plain[1]
    assert plain[0]["data"]["name"] == "ams1"
    assert [d.status for d in deliveries(webhooks, db)] == ["succeeded"] * 3


def test_render_error_fails_that_delivery_only(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="broken", body_template="{{ data.name + 1 }}")
    make_hook(name="fine")
    add_site(models, db)
    (req,) = receiver.wait_for(1)
    assert req.json()["data"]["name"] == "ams1"
    broken, fine = deliveries(webhooks, db)
    assert broken.webhook_name == "broken"
    assert broken.status == "failed"
    assert broken.last_error.startswith("body template error: TypeError:")
    assert broken.attempts == 0
    assert broken.body == b""
    assert fine.status == "succeeded"
    assert sites(models, db) == ["ams1"]  # the user's commit went through


def test_output_cap(webhooks, db, models, receiver, make_hook):
    make_hook(body_template="{% for i in range(100000) %}{{ 'x' * 200 }}{% endfor %}")
    add_site(models, db)
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert f"longer than {MAX_RENDERED_CHARS} characters" in delivery.last_error
    assert receiver.requests == []
    assert sites(models, db) == ["ams1"]


# -- headers ------------------------------------------------------------------


def test_additional_headers_are_rendered(webhooks, db, models, receiver, make_hook):
    hook = make_hook(
        name="hdr",
        additional_headers=(
            "\n"
            "Authorization: Bearer static-token\n"
            "X-Site: {{ data.name }}\n"
            "\n"
            "X-Event: {{ event }}/{{ model }}\r\n"
            "X-Hook: {{ webhook.name }}#{{ webhook.id }}\n"
            "X-Tags: {{ data.tags|map(attribute='slug')|join(',') }}\n"
        ),
    )
    db.session.add(models.Tag(slug="prod"))
    add_site(models, db, tags=[db.session.scalars(sa.select(models.Tag)).one()])
    (req,) = receiver.wait_for(1)
    assert req.headers["Authorization"] == "Bearer static-token"
    assert req.headers["X-Site"] == "ams1"
    assert req.headers["X-Event"] == "created/site"
    assert req.headers["X-Hook"] == f"hdr#{hook.id}"
    assert req.headers["X-Tags"] == "prod"
    (delivery,) = deliveries(webhooks, db)
    # The log shows the headers that were sent, credentials masked.
    assert delivery.request_headers["X-Site"] == "ams1"
    assert delivery.request_headers["Authorization"] == "<redacted>"


def test_signature_header_wins_over_additional_headers(
    webhooks, db, models, receiver, make_hook
):
    make_hook(additional_headers="X-Hook-Signature: forged\nX-Webhook-ID: forged")
    add_site(models, db)
    (req,) = receiver.wait_for(1)
    assert req.headers["X-Hook-Signature"] != "forged"
    assert req.headers["X-Webhook-ID"] == deliveries(webhooks, db)[0].id


@pytest.mark.parametrize(
    "name",
    [
        "evil\r\nX-Injected: yes",
        "evil\nX-Injected: yes",
        "evil\rX-Injected: yes",
        "evil\x0b",
        "trailing newline\n",
    ],
    ids=["crlf", "lf", "cr", "vertical-tab", "trailing-lf"],
)
def test_header_injection_is_refused_and_nothing_sent(
    webhooks, db, models, receiver, make_hook, name
):
    make_hook(additional_headers="X-Site: {{ data.name }}")
    add_site(models, db, name=name)
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert delivery.last_error == (
        "could not build the request: additional_headers 'X-Site': header "
        "'X-Site': rendered value contains a line break or another control "
        "character; not sent"
    )
    assert delivery.attempts == 0
    assert receiver.requests == []
    assert sites(models, db) == [name]


def test_header_render_error_fails_at_send_time(
    webhooks, db, models, receiver, make_hook
):
    make_hook(additional_headers="X-Count: {{ data.tags|length + data.name }}")
    add_site(models, db)
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert delivery.last_error.startswith(
        "could not build the request: additional_headers 'X-Count': TypeError"
    )
    assert receiver.requests == []


# -- URL ----------------------------------------------------------------------


def test_payload_url_is_rendered(webhooks, db, models, receiver, make_hook):
    base = receiver.url.rsplit("/", 1)[0]
    make_hook(
        payload_url=(
            base + "/hooks/{{ model }}/{{ data.id }}?name={{ data.name|urlencode }}"
        )
    )
    site = add_site(models, db, name="ams 1/b")
    (req,) = receiver.wait_for(1)
    assert req.path == f"/hooks/site/{site.id}?name=ams%201/b"
    (delivery,) = deliveries(webhooks, db)
    assert delivery.request_url == base + req.path


def test_payload_url_rendering_to_a_bad_url_fails(
    webhooks, db, models, receiver, make_hook
):
    base = receiver.url.rsplit("/", 1)[0]
    make_hook(payload_url=base + "/{{ data.name }}")
    add_site(models, db, name="has space")
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert delivery.last_error == (
        "could not build the request: payload_url rendered to "
        f"{base + '/has space'!r}: must not contain spaces or control characters"
    )
    assert receiver.requests == []


# -- sandbox ------------------------------------------------------------------

#: Templates that try to reach Python internals; rendering them fails.
ESCAPES_THAT_FAIL = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__.__builtins__ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ data.__class__.__base__.__subclasses__() }}",
    "{{ data.__setitem__('name', 'x') }}",
    "{{ data.update(name='x') }}",
    "{{ data.tags.append(1) }}",
    "{{ 'x' * 10 ** 9 }}",
    "{{ ((10 ** 100) ** 100) ** 100 }}",
    "{% for i in range(10 ** 7) %}{% endfor %}",
]
#: Templates that render, but to nothing useful: undefined or unsafe values
#: are empty, Flask objects are not in the context, the secret is not either.
ESCAPES_THAT_RENDER_EMPTY = [
    "{{ lipsum.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ range.__self__ }}",
    "{{ data.items.__self__ }}",
    "{{ '{0.__class__}'.format(data) }}",
    "{{ ''.join.__self__ }}",
    "{{ config }}{{ request }}{{ g }}{{ session }}{{ url_for }}{{ current_app }}",
    "{{ webhook.secret }}{{ webhook.payload_url }}{{ webhook.additional_headers }}",
    "{{ secret }}{{ os }}{{ __builtins__ }}",
]
_LEAKS = (SECRET, "<module", "<class", "<function", "environ", "/usr/", "root:")


def _no_leak(text):
    for marker in _LEAKS:
        assert marker not in text


@SQLITE_ONLY
@pytest.mark.parametrize("template", ESCAPES_THAT_FAIL)
def test_sandbox_escape_in_body_fails_safely(
    webhooks, db, models, receiver, make_hook, template
):
    make_hook(secret=SECRET, body_template=template)
    add_site(models, db)
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert delivery.last_error.startswith("body template error: ")
    assert "Error" in delivery.last_error
    _no_leak(delivery.last_error)
    assert receiver.requests == []
    assert sites(models, db) == ["ams1"]


@SQLITE_ONLY
@pytest.mark.parametrize("template", ESCAPES_THAT_RENDER_EMPTY)
def test_sandbox_escape_in_body_renders_harmlessly(
    webhooks, db, models, receiver, make_hook, template
):
    make_hook(secret=SECRET, body_template="[" + template + "]")
    add_site(models, db)
    (req,) = receiver.wait_for(1)
    assert req.body == b"[]"
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "succeeded"


def test_every_sandbox_escape_in_one_commit(webhooks, db, models, receiver, make_hook):
    templates = ESCAPES_THAT_FAIL + ESCAPES_THAT_RENDER_EMPTY
    for number, template in enumerate(templates):
        make_hook(name=f"t{number:02}", secret=SECRET, body_template=f"[{template}]")
    add_site(models, db)
    requests = receiver.wait_for(len(ESCAPES_THAT_RENDER_EMPTY))
    assert [r.body for r in requests] == [b"[]"] * len(ESCAPES_THAT_RENDER_EMPTY)
    rows = deliveries(webhooks, db)
    assert len(rows) == len(templates)
    for row in sorted(rows, key=lambda d: d.webhook_name):
        template = templates[int(row.webhook_name[1:])]
        expected = "failed" if template in ESCAPES_THAT_FAIL else "succeeded"
        assert row.status == expected, template
        _no_leak(row.last_error or "")
        _no_leak(row.body.decode())
    assert sites(models, db) == ["ams1"]


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os.environ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ data.update(name='x') }}",
    ],
)
def test_sandbox_escape_in_headers_and_url_fails_safely(
    webhooks, db, models, receiver, make_hook, template
):
    make_hook(name="in-header", secret=SECRET, additional_headers=f"X-Try: {template}")
    make_hook(name="in-url", secret=SECRET, payload_url=receiver.url + "/" + template)
    add_site(models, db)
    header, url = deliveries(webhooks, db)
    for delivery in (header, url):
        assert delivery.status == "failed"
        assert delivery.last_error.startswith("could not build the request: ")
        assert "SecurityError" in delivery.last_error
        _no_leak(delivery.last_error)
    assert "additional_headers 'X-Try'" in header.last_error
    assert receiver.requests == []
    assert sites(models, db) == ["ams1"]


def test_template_cannot_change_what_other_webhooks_see(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="a", body_template="{% set x = data.pop('name') %}{{ data }}")
    make_hook(name="b", body_template="{{ data.name }}")
    add_site(models, db)
    (req,) = receiver.wait_for(1)
    assert req.body == b"ams1"
    mutator = deliveries(webhooks, db)[0]
    assert mutator.webhook_name == "a"
    assert "SecurityError" in mutator.last_error


# -- the rendering functions ---------------------------------------------------


def test_syntax_check_never_runs_the_template():
    # Constant expressions are not folded at compile time: checking these on
    # save is instant and allocates nothing big.
    assert template_syntax_error("{{ 'x'|center(2000000000) }}") is None
    assert template_syntax_error("{{ 'x' * 10 ** 10 }}") is None
    assert template_syntax_error("{{ 10 ** 10 ** 10 ** 10 }}") is None


def test_syntax_errors_name_the_line():
    assert template_syntax_error("ok\n{{ broken") == (
        "line 2: unexpected end of template, expected 'end of print statement'."
    )
    assert template_syntax_error("{{ x|nosuch }}") == (
        "line 1: No filter named 'nosuch'."
    )
    assert template_syntax_error("no template") is None


def test_render_basics():
    context = {"data": {"n": D("1.5"), "when": dt.date(2026, 1, 2), "s": {"b", "a"}}}
    assert render("plain {not a template", context) == "plain {not a template"
    assert render("{{ data.n|json }}|{{ data.when|json }}", context) == (
        '"1.5"|"2026-01-02"'
    )
    assert render("{{ data.s|json }}", context) == '["a", "b"]'
    assert render("{{ missing }}|{{ data.nothing|default('d') }}", context) == "|d"
    assert render("{{ '<b>' }}", context) == "<b>"  # no HTML escaping
    assert render("line\n", context) == "line\n"
    with pytest.raises(RenderError, match="UndefinedError"):
        render("{{ missing.deeper.still }}", context)


# -- limits (issue 13, items 2 and 3) ------------------------------------------

#: Each would build hundreds of megabytes or more without the size checks.
SIZE_BOMBS = {
    "tilde-doubling": "{% set a = 'x' * 1000000 %}{% set a = a ~ a %}"
    "{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a }}",
    "plus-doubling": "{% set a = 'x' * 1000000 %}{% set a = a + a %}"
    "{% set a = a + a %}{% set a = a + a %}{% set a = a + a %}{{ a }}",
    "join-of-repeated-list": "{{ (['a' * 1048576] * 1024)|join }}",
    "print-repeated-list": "{{ ['a' * 1048576] * 100 }}",
    "center-filter": "{{ 'a'|center(10 ** 9) }}",
    "center-method": "{{ 'a'.center(10 ** 9) }}",
    "printf-filter": "{{ '%1000000000s'|format(1) }}",
    "printf-operator": "{{ '%1000000000s' % 1 }}",
    "str-format": "{{ '{:>1000000000}'.format(1) }}",
    "replace-empty": "{{ ('a' * 1000000).replace('', 'b' * 100) }}",
    "indent": "{{ ('a\n' * 500000)|indent(1000) }}",
    "repeat": "{{ 'ab' * (10 ** 9) }}",
}


@pytest.mark.parametrize("template", SIZE_BOMBS.values(), ids=SIZE_BOMBS.keys())
def test_size_bombs_fail_before_allocating(template):
    started = time.monotonic()
    with pytest.raises(RenderError) as info:
        render(template, {"data": {}})
    assert time.monotonic() - started < 0.5
    message = str(info.value)
    assert "limited to 10485760 (WEBHOOKS_TEMPLATE_MAX_CHARS)" in message or (
        "repetition would build" in message
    )


def test_size_limit_is_a_parameter():
    small = TemplateLimits(max_chars=100)
    assert render("{{ 'a' * 50 }}", {}, limits=small) == "a" * 50
    with pytest.raises(TemplateTooLarge, match="limited to 100 "):
        render("{{ 'a' * 50 ~ 'b' * 51 }}", {}, limits=small)
    with pytest.raises(TemplateTooLarge, match="longer than 100 characters"):
        render("{% for i in range(3) %}{{ 'a' * 40 }}{% endfor %}", {}, limits=small)


def test_lipsum_is_limited():
    assert render("{{ lipsum(2, html=False)|length > 0 }}", {}) == "True"
    with pytest.raises(RenderError, match=r"lipsum.*at most 20 paragraphs"):
        render("{{ lipsum(n=300000) }}", {})
    with pytest.raises(RenderError, match="at most 100 words"):
        render("{{ lipsum(1, max=10 ** 6) }}", {})


def test_ordinary_templates_are_unaffected_by_the_checks():
    context = {"data": {"name": "ams1", "tags": [{"slug": "a"}, {"slug": "b"}]}}
    template = (
        "{{ data.name|center(8) }}|{{ data.tags|map(attribute='slug')|join(',') }}|"
        "{{ '%05d'|format(42) }}|{{ '{}-{}'.format(1, 2) }}|{{ 'a' ~ 1 ~ none }}|"
        "{% for t in data.tags %}{{ loop.index }}{{ t.slug }}{% endfor %}|"
        "{{ [1, 2] + [3] }}|{{ 2 ** 10 }}"
    )
    assert render(template, context) == (
        "  ams1  |a,b|00042|1-2|a1None|1a2b|[1, 2, 3]|1024"
    )


BUSY = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)


@pytest.mark.parametrize(
    "template",
    [
        BUSY,
        "{% for i in range(100000) %}{% for c in 'x' * 100000 %}{% endfor %}"
        "{% endfor %}",
        "{% for i in range(100000) %}{{ ('ab' * 100000)|reverse|list|length }}"
        "{% endfor %}",
    ],
    ids=["nested-ranges", "nested-string-loop", "filters-in-a-loop"],
)
def test_time_budget_stops_a_busy_template(template):
    started = time.monotonic()
    with pytest.raises(TemplateTimeout) as info:
        render(template, {}, limits=TemplateLimits(timeout=0.2))
    assert 0.2 <= time.monotonic() - started < 1.0
    assert str(info.value) == (
        "template exceeded its time budget of 0.2 s (WEBHOOKS_TEMPLATE_TIMEOUT)"
    )


def test_default_time_budget_is_one_second():
    started = time.monotonic()
    with pytest.raises(TemplateTimeout, match="time budget of 1 s"):
        render(BUSY, {})
    assert time.monotonic() - started < 2.0


def test_commit_time_body_render_takes_the_budget():
    hook = types.SimpleNamespace(
        id=1, name="bomb", body_template=BUSY, http_content_type="application/json"
    )
    started = time.monotonic()
    with pytest.raises(TemplateTimeout):
        render_body(hook, {"data": {}}, None, limits=TemplateLimits(timeout=0.1))
    assert time.monotonic() - started < 0.6


def test_send_time_url_and_headers_take_the_budget():
    hook = types.SimpleNamespace(
        id=1,
        name="bomb",
        payload_url="http://127.0.0.1/" + BUSY,
        additional_headers="X-Busy: " + BUSY,
    )
    limits = TemplateLimits(timeout=0.1)
    with pytest.raises(TemplateTimeout):
        render_url(hook, {}, limits=limits)
    with pytest.raises(RenderError, match=r"'X-Busy'.*time budget of 0\.1 s"):
        render_headers(hook, {}, limits=limits)


@SQLITE_ONLY
def test_busy_body_template_fails_the_delivery_not_the_commit(
    webhooks, db, models, receiver, make_hook
):
    make_hook(body_template=BUSY)
    started = time.monotonic()
    add_site(models, db)
    assert time.monotonic() - started < 3.0
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert "template exceeded its time budget" in delivery.last_error
    assert receiver.requests == []
    assert sites(models, db) == ["ams1"]


# -- reserved headers at render time (issue 13, item 13) ------------------------


@pytest.mark.parametrize("name", ["Host", "connection", "Transfer-Encoding", "TE"])
def test_reserved_header_is_refused_at_render_time(name):
    hook = types.SimpleNamespace(id=1, name="h", additional_headers=f"{name}: x")
    with pytest.raises(RenderError, match=f"'{name}' cannot be set"):
        render_headers(hook, {})


@SQLITE_ONLY
def test_reserved_header_saved_before_validation_is_never_sent(
    webhooks, db, models, receiver, make_hook
):
    hook = make_hook()
    # Rows written before this rule existed (or by SQL) skip validation.
    db.session.execute(
        sa.update(webhooks.Webhook)
        .where(webhooks.Webhook.id == hook.id)
        .values(additional_headers="Host: internal.example")
    )
    db.session.commit()
    add_site(models, db)
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert "'Host' cannot be set" in delivery.last_error
    assert receiver.requests == []
