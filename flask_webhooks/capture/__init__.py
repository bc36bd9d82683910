"""Capture: committed changes of registered models become outbox rows.

:mod:`~.listeners` (session and model listeners, the journal of a
transaction), :mod:`~.journal` (one journal entry), :mod:`~.index` (which
enabled webhooks want which model events), :mod:`~.outbox` (journal entries
to events and delivery rows) and :mod:`~.writer` (the rows, written in the
user's transaction).
"""
