"""Bulk jobs: the API tier checks, decodes and crops images and queues them in chunks (jobs/api.py); model workers
(`python -m jobs.worker`, Celery with a Redis broker) score each chunk in one forward (jobs/tasks.py) and write
results idempotently into the job store (jobs/store.py). Nothing here is imported by /predict."""
