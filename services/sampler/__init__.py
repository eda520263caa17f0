"""The sampler service: generation / completions / embeddings over HTTP (`app.py`), and the `sample` and
`evaluate` job kinds of the `sample` queue (`kinds.py`, `sample_job.py`, `evaluate.py`)."""
