"""Transport: the HTTP client of deliveries, without Flask or the database.

:mod:`~.message` (request and result values, headers, error classification),
:mod:`~.policy` (where a request may connect) and :mod:`~.client` (the
connection pools that send).
"""
