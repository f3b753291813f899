"""Business rules shared by the HTTP API and the worker: what a job is and may do.

- ``submission``: the checks a job must pass against the stores, and its creation;
- ``locations``: the one rule for where a job may read and write;
- ``scopes``: tenants' storage scopes, checked before the store is touched;
- ``quotas``: how much one tenant may hold and ask for;
- ``jobs``: presenting, cancelling;
- ``estimates``: a dry run: the checks of a submission, then its records, tokens, shards and an
  estimated duration and device-hours from the throughput its model reached before;
- ``retries``: retrying only what a finished job did not finish (a child job over its failed
  and unprocessed records, counted once across parent and children);
- ``usage``: what a job's attempts used (device seconds, tokens, energy, a cost estimate) and
  a model's measured steady rate;
- ``console``: what the console's pages show (jobs found by id or metadata, a job's charts,
  timeline and first errors, workers, the registry);
- ``job_files``: listing and reading a job's output files for its tenant;
- ``registry``: resolving model names, registering versions;
- ``drops``: drop-folder rules and the job an object becomes;
- ``tenants``: tenants, API keys and roles, the request's principal;
- ``audit``: the append-only audit log of changes;
- ``webhooks``: tenants' webhook endpoints, the checks their targets pass (at create and at
  each send) and how deliveries are signed (Standard Webhooks, as OpenAI signs);
- ``durations``: durations and times as people write them (``30d``, ``1h30m``);
- ``openai_files``, ``openai_batches``, ``openai_fine_tuning``: the OpenAI-compatible surface's
  files, batches (run as inference jobs) and fine-tuning jobs (run as Barge fine-tunes);
- ``openai_models``: the OpenAI surface's model objects (aliases and registered names);
- ``openai_requests``: the parameters an OpenAI batch request may carry, checked per line;
- ``unit_of_work``: a session plus the messages to send once it commits;
- ``context``: what a service acts in (``ServiceContext``: the unit of work, the settings, the
  object store and the acting principal: a key, a worker doing a tenant's work, or the local
  operator), built once by each boundary.

Services take a ``ServiceContext`` (and a small command where a call needs more than an id),
call repositories (``db``) and the kernel (``barge``), and return rows or typed views that the
API's schemas and the CLI show; they never commit (their caller, a request or a task scope,
does) and never import ``api``, ``worker`` or torch.
"""
