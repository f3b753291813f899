"""The text kind's run step: one shard of ``embed``, ``classify`` or ``generate`` over a Hugging
Face model (``worker.models.text``), its records run through ``worker.runners.records``.

A job of ``embed`` or ``classify`` may name an ONNX model directory instead: which family a
model is can only be told from its directory, which this step is the first to fetch (planning
and finalizing are the same records plan and manifest for both), so a shard whose model loads
as ONNX runs under the ONNX kind's run step (``worker.runners.onnx.run_loaded``).

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.models``,
``worker.runners.records``, ``worker.runners.onnx``; never ``api`` or ``cli``.
"""

from __future__ import annotations

from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork
from worker.models import text
from worker.models.onnx import OnnxRunner
from worker.runners import onnx, records


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """Run the shard's records through the model; return what was written."""
    loaded = records.load(ctx, work)
    if isinstance(loaded.model, OnnxRunner):  # the directory holds an ONNX model
        return onnx.run_loaded(ctx, work, lease, loaded)
    return records.run(ctx, work, lease, loaded, text.predict)
