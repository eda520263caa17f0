"""Platform core shared by the gateway and the workers: settings, SQL job table, object store, Celery
app, job lifecycle and the job-kind registry. Nothing here imports torch."""
