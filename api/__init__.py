"""The HTTP API (FastAPI). Never imports torch or the worker: it sends tasks by name."""
