"""The kernel: settings, job specs and shared vocabulary (statuses, task and queue names),
storage URIs and the object stores, record formats, errors.

- ``settings``: the one settings object (``BARGE_*``); ``logs``: log output of every process;
- ``specs``: job specs, validated once; ``status``: job and shard statuses; ``queue``: the
  Celery configuration and task names the API and the worker share;
- ``uris``: the one rule for a storage URI; ``storage``: the object stores (S3, local);
  ``paths``: the one place a key becomes a local file name;
- ``records``: input formats and bounded record streams;
- ``modeldirs``, ``onnxdirs``: model directories and what Barge can load; ``chat``: the checks
  on chat messages;
- ``errors``: errors with an HTTP status and a message that says what to fix;
  ``jsonvalues``: JSON values a column cannot store faithfully.

Every other package builds on it; it imports nothing of ours (only the standard library,
pydantic, boto3 and pyarrow). Layers: ``cli → api | worker → services → db → barge``.
"""

__version__ = "0.1.0"
