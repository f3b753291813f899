"""Fine-tuning: one unit of work per job, trained in slices under a lease.

- ``run``: the claimed run (load data and model, resume, train, checkpoint, hand off, finish
  and register the model); its ``RUNNER`` is what ``worker.runners`` hands the lifecycle;
- ``checkpoints``: writing, pruning and (only from this job's own files) restoring checkpoints;
- ``training``: the ``Trainer`` (model, optimizer, schedule, losses, evaluation) as plain code;
- ``data``: reading and checking datasets (no torch: the planner uses it too).

Importing this package imports none of them (the planner needs ``data`` without torch).
Imports: ``barge``, ``db``, ``services``, ``worker``; never ``api`` or ``cli``.
"""
