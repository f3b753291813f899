"""The kernel: settings, job specs and shared vocabulary (statuses, task and queue names),
storage URIs and the object stores, record formats, errors.

Every other package builds on it; it imports nothing of ours (only the standard library,
pydantic, boto3 and pyarrow). Layers: ``cli → api | worker → services → db → barge``.
"""

__version__ = "0.1.0"
