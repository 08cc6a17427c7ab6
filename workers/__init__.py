"""Worker side of cibot: Celery app, jobs, model client, context packing, ledger."""
