"""Small helpers for the words in messages (CLI output, admin flashes)."""

from __future__ import annotations

#: Irregular plurals of the nouns our messages count.
_IRREGULAR = {"delivery": "deliveries", "retry": "retries"}


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` followed by ``noun`` in the right number.

    ``plural(1, "delivery")`` is ``"1 delivery"``, ``plural(2, "delivery")``
    ``"2 deliveries"``, ``plural(0, "webhook")`` ``"0 webhooks"``.

    :param many: the plural form, when adding ``s`` (or the known irregular
        form) is wrong.
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {many or _IRREGULAR.get(noun, noun + 's')}"
