"""Hold one module per task (summary, review, ci, tests, deps) plus commands and bookkeeping.

Each model job module follows ``workers.jobs.contract.JobModule`` and is listed in
``workers.jobs.registry``; none imports Celery.
"""
