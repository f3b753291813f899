"""The control room: what the control worker runs (the ``control`` queue), never loading a
model, never importing ``worker.models``, ``worker.runners`` or torch (an import contract, and a
test that imports it in a fresh interpreter, keep it so).

- ``planner``: planning a job (its kind's plan step), checking quotas, starting it and
  dispatching its units;
- ``finalize``: once every unit settled, its kind's finalize step, ``_manifest.json`` and
  ``_SUCCESS``, the final state;
- ``reconciler``: re-sending lost or expired work, finalizing settled jobs, expiring OpenAI
  batches;
- ``drops``: drop folders (new objects become jobs; finished ones are settled);
- ``webhooks``: sending the webhook outbox's due deliveries, with back-off.
- ``retention``: deleting finished jobs' old events and progress samples, in batches.

Imports: ``barge``, ``db``, ``services``, ``worker.context``, ``worker.kinds``; never ``api`` or
``cli``.
"""
