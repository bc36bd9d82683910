"""The package version, importable without importing anything else."""

#: The version of flask-webhooks (``flask_webhooks.__version__``).
VERSION = "0.1.0.dev0"
