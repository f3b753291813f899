"""The Celery worker: thin tasks over plain functions, in rooms that show its processes. The
control worker (queue ``control``) plans, finalizes, reconciles and scans drop folders; a GPU
worker (queue ``gpu``, one process per GPU) runs units of work. What each kind of job does at
each of those steps is one object in one registry.

At the top (the boundary, and what every process shares):

- ``celery_app``: the Celery app and the per-process start (``worker_process_init``);
- ``tasks``: the Celery tasks (ids in, one plain function call; their names never change);
- ``context``: per-process resources and the task scopes (``session()``, ``unit_of_work()``:
  the outbox, messages sent after the commit);
- ``lifecycle``: a unit of work's claim, run (its kind's run step) and every way it ends;
- ``lease``: the claimed unit (``ShardWork``), the lease its attempt holds (``Stop``,
  ``LeaseLost``), what its run comes to (``Result``, ``Outcome``), ``job_event``;
- ``takeover``: taking over a unit whose worker died, as soon as its lease ends (the shard
  task, before its claim);
- ``shard``: what the shard runners share: ``ShardRun``, part writers and record ids, windows,
  reading ahead;
- ``usage``: what each attempt used (seconds, tokens, energy from NVML), written when it
  ends; ``samples``: progress samples from the heartbeats, and their pruning; ``presence``:
  each worker process noting it is alive (queues, device, warm models);
- ``metrics``: the worker's Prometheus metrics; ``coldstart``: the seconds this process spent
  on first imports and model loads (what an attempt's throughput leaves out); ``flower``: the
  ``barge flower`` process (Celery's ``flower`` command with Flower's open pages behind its
  auth).

The rooms:

- ``kinds/``: the registry of job kinds (``JobKind``, ``kind_for``) and each kind's plan and
  finalize steps, without torch;
- ``control/``: the control worker's processes (``planner``, ``finalize``, ``reconciler``,
  ``drops``), which ask the registry and never import a model;
- ``runners/``: each kind's run step, on GPU workers (text, text2text, ONNX, images, OpenAI
  batches, ``finetune/``);
- ``models/``: loading, caches and prediction (and generation engines).

Direction, kept by import contracts (``pyproject.toml``): ``tasks`` → ``celery_app`` →
``control`` | ``lifecycle`` | ``takeover`` → ``runners`` → ``kinds`` → ``shard`` → ``lease`` →
``models`` → ``metrics`` | ``context`` | ``coldstart``; no cycle inside any package. The
worker may import ``services``, ``db`` and ``barge``; never ``api`` or ``cli``.
"""
