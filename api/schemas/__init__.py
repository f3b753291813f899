"""The HTTP shapes of the API: request bodies (with their examples) and responses, one module
per area; routers map what the services return onto them.

- ``errors``: the error body of every /v1 call and the error responses an operation declares;
- ``jobs``: the job body (inference or fine-tune) and jobs, events, shards and files;
- ``models``: registering a model version, and registered versions;
- ``drops``: drop-folder rules;
- ``webhooks``: webhook endpoints and their deliveries;
- ``admin``: tenants, keys and the audit log;
- ``openai_files``, ``openai_batches``, ``openai_fine_tuning``, ``openai_models``: the
  OpenAI-compatible surface's bodies and its answers, OpenAI's objects (``file``, ``batch``,
  ``fine_tuning.job`` with its events and checkpoints, ``model``), built from what the services
  return;
- ``openai_common``: what those answers share: a list page, times as Unix seconds.
"""
