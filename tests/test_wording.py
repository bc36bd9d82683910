"""The plural helper used by CLI output and admin messages."""

from __future__ import annotations

import pytest
from flask_webhooks.wording import plural


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (0, "delivery", "0 deliveries"),
        (1, "delivery", "1 delivery"),
        (2, "delivery", "2 deliveries"),
        (1, "webhook", "1 webhook"),
        (3, "webhook", "3 webhooks"),
        (1, "attempt", "1 attempt"),
        (2, "attempt", "2 attempts"),
    ],
)
def test_plural(count: int, noun: str, expected: str) -> None:
    assert plural(count, noun) == expected


def test_plural_with_an_explicit_form() -> None:
    assert plural(1, "process", "processes") == "1 process"
    assert plural(4, "process", "processes") == "4 processes"
    assert plural(2, "due delivery", "due deliveries") == "2 due deliveries"
