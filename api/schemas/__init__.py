"""The HTTP shapes of the API: request bodies (with their examples) and responses, one module
per area; routers map what the services return onto them.

- ``errors``: the error body of every /v1 call and the error responses an operation declares;
- ``jobs``: the job body (inference or fine-tune) and jobs, events, shards and files;
- ``models``: registering a model version, and registered versions;
- ``drops``: drop-folder rules;
- ``admin``: tenants, keys and the audit log;
- ``openai_files``, ``openai_batches``, ``openai_fine_tuning``: the OpenAI-compatible surface's
  bodies (its answers are OpenAI's objects, built where each is described).
"""
