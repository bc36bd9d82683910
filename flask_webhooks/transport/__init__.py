"""Transport: the HTTP client of deliveries, without Flask or the database.

:mod:`~.message` (request and result values, headers, error classification),
:mod:`~.policy` (where a request may connect), :mod:`~.adapter` (the
requests adapter that enforces the policy) and :mod:`~.client` (the
per-thread ``requests.Session`` that sends).
"""
