"""The ONNX kind's run step: one shard of a user's own network (``worker.models.onnx``), for
``regress`` (ONNX models only) and for an ``embed`` or ``classify`` job whose model directory
holds an ONNX model (``worker.runners.text`` hands it over once the model is loaded).

Two paths. The records path reads each record through the model's ``barge.json``
(``OnnxRunner.read``) and runs it like any text record (``worker.runners.records``). The
columnar path, for ONNX models that read numeric features only, over Parquet: the feature
columns of each record batch are read as arrays (only the id and feature columns are read at
all), so a record costs the worker no Python dict and no per-value check.

The columnar path writes exactly what the records path writes for the same shard: the
same part rows in input order, the same per-record errors (a row whose feature is missing,
null, non-numeric, boolean, NaN or infinite is checked value by value with
``barge.records.tabular.numeric_value``, so its error names the first bad field as the record
path's would; a text column of numbers is read value by value too; a record whose output is
over ``BARGE_ONNX_MAX_OUTPUT_VALUES`` is found by running its batch record by record), the same
ids (``coerce_id``), the same progress, cancel checks between batches and fencing before the PUT.

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.metrics``, ``worker.models``,
``worker.runners.records``, ``worker.shard``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from barge.onnxdirs import FeatureInput
from barge.records import Limits
from barge.records.parquet import row_batches
from barge.records.tabular import numeric_value
from barge.storage import ObjectInfo
from worker import metrics
from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork, Stop
from worker.models.loaded import LoadedModel
from worker.models.onnx import OnnxRunner, OutputTooLarge
from worker.runners import records
from worker.shard import ShardRun, coerce_id, input_info, prefetch

READ_ROWS = 8192  # rows per Arrow record batch read
READ_AHEAD = 2  # record batches read ahead on a background thread while the model runs


def applies(loaded: LoadedModel, work: ShardWork) -> bool:
    """Whether this shard can take the columnar path: an ONNX model fed by feature fields only,
    over a Parquet object."""
    runner = loaded.model
    return (
        isinstance(runner, OnnxRunner)
        and work.fmt.name == "parquet"
        and all(isinstance(b, FeatureInput) for b in runner.config.inputs)
    )


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """Run the shard's records through the ONNX model; return what was written."""
    loaded = records.load(ctx, work)
    return run_loaded(ctx, work, lease, loaded, input_info(ctx, work))


def run_loaded(
    ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: LoadedModel, info: ObjectInfo
) -> Result:
    """Run the shard with its ONNX model loaded: the columnar path where it applies, else the
    records path."""
    if not applies(loaded, work):
        return records.run(ctx, work, lease, loaded, info, predict)
    with ctx.scratch() as tmp:
        shard = _ColumnarShard(ctx, work, lease, loaded, tmp)
        return shard.upload(shard.process(info))


def predict(
    loaded: LoadedModel, inputs: list[Any], params: Any, seed: int, add_special_tokens: bool
) -> list[dict[str, Any]]:
    """One batch of records, each as the model's ``read`` made it into its inputs."""
    runner = loaded.model
    assert isinstance(runner, OnnxRunner)
    return runner.predict(inputs, params)


class _ColumnarShard(ShardRun[LoadedModel]):
    """One columnar shard's run (``worker.shard.ShardRun``): Arrow record batches of the
    id and feature columns, read ahead on a background thread."""

    def __init__(
        self, ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: LoadedModel, tmp: Path
    ):
        super().__init__(ctx, work, lease, loaded, tmp)
        runner = loaded.model
        assert isinstance(runner, OnnxRunner)
        self.runner = runner
        self.bindings = [b for b in runner.config.inputs if isinstance(b, FeatureInput)]

    def process(self, info: ObjectInfo) -> Stop | None:
        """Every record, record batch by record batch (read ahead on a background thread); the
        ``Stop`` that cut the shard short, if any."""
        reading = prefetch(self._batches(info), READ_AHEAD, "barge-columns")
        return self.walk(reading, lambda item: self._record_batch(*item))

    def _batches(self, info: ObjectInfo) -> Iterator[tuple[int, Any]]:
        """(row index in the object, Arrow record batch) of the shard's rows, only the columns
        the job reads."""
        wanted = [f for b in self.bindings for f in b.feature_fields]
        if self.spec.id_field:
            wanted.append(self.spec.id_field)
        limits = Limits.from_settings(self.ctx.settings)
        return row_batches(
            self.ctx.store, info, self.work.rng, limits, lambda b: b, wanted, READ_ROWS
        )

    def _record_batch(self, first_row: int, batch: Any) -> None:
        """Check a record batch's ids and features, run its good rows in batches of the job's
        size, write the results and errors in input order."""
        import numpy as np

        n = batch.num_rows
        problems: list[str | None] = [None] * n
        ids = self._ids(batch, first_row, problems)
        features = {b.input: self._features(batch, b, problems) for b in self.bindings}
        good = np.asarray([p is None for p in problems], dtype=bool)
        rows_of_good = np.flatnonzero(good)
        results: list[dict[str, Any] | None] = [None] * n
        rejected = n - len(rows_of_good)
        if rejected:
            metrics.RECORDS.labels(self.loaded.task, "failed").inc(rejected)
        step = self.spec.batch_size
        try:
            for start in range(0, len(rows_of_good), step):
                self.next_batch()
                picked = rows_of_good[start : start + step]
                feeds = {name: matrix[picked] for name, matrix in features.items()}
                started = time.monotonic()
                outcomes = self._predict(feeds, len(picked))
                metrics.observe_batch(
                    self.loaded.task, time.monotonic() - started, outcomes, self.loaded.device
                )
                for i, (ok, value) in zip(picked.tolist(), outcomes, strict=True):
                    if ok:
                        results[i] = {"id": ids[i], **value}
                    else:
                        problems[i] = value
                        rejected += 1
                self.lease.succeeded = self.part.count + sum(r is not None for r in results)
                self.lease.failed = self.errors.count + rejected
        finally:
            self.part.write_rows([r for r in results if r is not None])
            self.errors.write_rows(
                [
                    {
                        "id": ids[i],
                        "source": self.work.source,
                        "line": first_row + i + 1,
                        "error": problem,
                    }
                    for i, problem in enumerate(problems)
                    if problem is not None
                ]
            )
            self.lease.succeeded = self.part.count
            self.lease.failed = self.errors.count

    def _predict(self, feeds: dict[str, Any], n: int) -> list[tuple[bool, Any]]:
        """Each record's outcome: its result, or (as on the record path) the output bound's
        error of a record whose output, run alone, is still over it."""
        try:
            return [(True, p) for p in self.runner.predict_arrays(feeds, n, self.params)]
        except OutputTooLarge as exc:
            if n == 1:
                return [(False, str(exc))]
        return [
            outcome
            for i in range(n)
            for outcome in self._predict({k: v[i : i + 1] for k, v in feeds.items()}, 1)
        ]

    def _ids(self, batch: Any, first_row: int, problems: list[str | None]) -> list[Any]:
        """Each row's id (``coerce_id``), or None with its problem set."""
        id_field = self.spec.id_field
        offset = self.work.record_offset + (first_row - self.work.rng.start_record)
        if not id_field:
            return list(range(offset, offset + batch.num_rows))
        if id_field not in batch.schema.names:
            problems[:] = [f"record has no id field {id_field!r}"] * batch.num_rows
            return [None] * batch.num_rows
        ids: list[Any] = []
        for i, value in enumerate(batch.column(id_field).to_pylist()):
            rec_id, problem = coerce_id(value)
            if problem is not None:
                problems[i] = f"{problem} (id_field {id_field!r})"
            ids.append(rec_id)
        return ids

    def _features(self, batch: Any, binding: FeatureInput, problems: list[str | None]) -> Any:
        """The binding's float64 matrix [rows, features]; a row whose value is not a finite
        number (checked value by value, as the record path does) gets its problem, the first
        in field order, unless an earlier field already gave it one."""
        import numpy as np
        import pyarrow as pa

        n = batch.num_rows
        matrix = np.zeros((n, len(binding.feature_fields)), dtype=np.float64)
        names = set(batch.schema.names)
        for j, name in enumerate(binding.feature_fields):
            if name not in names:
                for i in range(n):
                    if problems[i] is None:
                        problems[i] = f"record has no feature field {name!r}"
                continue
            column = batch.column(name)
            if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
                values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
                matrix[:, j] = values
                bad = np.flatnonzero(~np.isfinite(values)).tolist()
                python = {i: column[i].as_py() for i in bad}
            else:  # text, booleans, decimals, ...: value by value
                bad = list(range(n))
                python = dict(enumerate(column.to_pylist()))
            for i in bad:
                number, problem = numeric_value(python[i], name)
                if problem is None:
                    matrix[i, j] = number
                elif problems[i] is None:
                    problems[i] = problem
        return matrix
