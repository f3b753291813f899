"""The text2text kind's run step: one shard of a sequence-to-sequence model (translation,
summarisation; ``worker.models.seq2seq``), its records run through ``worker.runners.records``.

Imports: ``worker.context``, ``worker.lease``, ``worker.models``, ``worker.runners.records``;
never ``api`` or ``cli``.
"""

from __future__ import annotations

from typing import Any

from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork
from worker.models import seq2seq
from worker.models.loaded import LoadedModel
from worker.runners import records


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """Run the shard's source texts through the model; return what was written."""
    loaded = records.load(ctx, work)
    return records.run(ctx, work, lease, loaded, predict)


def predict(
    loaded: LoadedModel, texts: list[Any], params: Any, seed: int, add_special_tokens: bool
) -> list[dict[str, Any]]:
    """One batch of source texts: a target for each, with its token usage."""
    return seq2seq.predict(loaded, texts, params, seed)
