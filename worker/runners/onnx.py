"""The ONNX kind's run step: one shard of a user's own network (``worker.models.onnx``), for
``regress`` (ONNX models only) and for an ``embed`` or ``classify`` job whose model directory
holds an ONNX model (``worker.runners.text`` hands it over once the model is loaded).

Two paths. The records path reads each record through the model's ``barge.json``
(``OnnxRunner.read``) and runs it like any text record (``worker.runners.records``). The
columnar path, for ONNX models that read numeric features only, over Parquet: the feature
columns of each record batch are read as arrays (only the id and feature columns are read at
all) straight into the input matrix, an integer or text id column is kept as an Arrow array,
and the outputs go to the part as columns (``write_columns``: Parquet from the arrays, JSONL
without a dict per row), so a record costs the worker no Python dict and no per-value check.

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
from worker.shard import INT64_MAX, INT64_MIN, ShardRun, coerce_id, input_info, prefetch

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
    return run_loaded(ctx, work, lease, loaded)


def run_loaded(ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: LoadedModel) -> Result:
    """Run the shard with its ONNX model loaded: the columnar path where it applies, else the
    records path (a packed shard's too)."""
    if not applies(loaded, work):
        return records.run(ctx, work, lease, loaded, predict)
    info = input_info(ctx, work)
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
        size, write the results (as columns) and errors in input order."""
        import numpy as np

        n = batch.num_rows
        problems: dict[int, str] = {}  # by row in the batch: why it cannot run (the first)
        ids = self._ids(batch, first_row, problems)
        # Each input's matrix in the dtype its graph input takes, converted once (the same
        # values as converting each batch's rows), C-contiguous: rows are then views.
        features = {
            b.input: np.ascontiguousarray(
                self._features(batch, b, problems), dtype=self.runner.feeds[b.input].dtype
            )
            for b in self.bindings
        }
        good = np.ones(n, dtype=bool)
        good[list(problems)] = False
        rows_of_good = np.flatnonzero(good)
        every_row = not problems  # then a batch's rows are a slice of the matrices: views
        if problems:
            metrics.RECORDS.labels(self.loaded.task, "failed").inc(len(problems))
        ran: list[Any] = []  # rows (in the batch) whose results are in ``chunks``, in order
        chunks: list[dict[str, Any]] = []
        step = self.spec.batch_size
        try:
            for start in range(0, len(rows_of_good), step):
                self.next_batch()
                picked = rows_of_good[start : start + step]
                rows = slice(start, start + step) if every_row else picked
                feeds = {name: matrix[rows] for name, matrix in features.items()}
                started = time.monotonic()
                done, failed = self._predict(feeds, len(picked))
                metrics.observe_counts(
                    self.loaded.task,
                    time.monotonic() - started,
                    len(picked) - len(failed),
                    len(failed),
                    self.loaded.device,
                )
                for i, problem in failed.items():
                    problems[int(picked[i])] = problem
                ran.append(np.delete(picked, list(failed)) if failed else picked)
                chunks.extend(done)
                self.lease.succeeded = self.part.count + sum(len(r) for r in ran)
                self.lease.failed = self.errors.count + len(problems)
        finally:
            self._write(ids, ran, chunks, first_row, problems)

    def _write(
        self,
        ids: Any,
        ran: list[Any],
        chunks: list[dict[str, Any]],
        first_row: int,
        problems: dict[int, str],
    ) -> None:
        """Write what ran (ids and result columns) and the errors, in input order."""
        import numpy as np

        if chunks:
            rows = np.concatenate(ran)
            self.part.write_columns(ids.take(rows), _concat(chunks))
        self.errors.write_rows(
            [
                {
                    "id": ids[i].as_py(),
                    "source": self.work.source,
                    "line": first_row + i + 1,
                    "error": problems[i],
                }
                for i in sorted(problems)
            ]
        )
        self.lease.succeeded = self.part.count
        self.lease.failed = self.errors.count

    def _predict(
        self, feeds: dict[str, Any], n: int
    ) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """The result columns of the records that ran (in order, in one chunk or several) and
        the problem of each that did not (by index): as on the record path, a record whose
        output, run alone, is still over the output bound."""
        try:
            return [self.runner.predict_columns(feeds, n, self.params)], {}
        except OutputTooLarge as exc:
            if n == 1:
                return [], {0: str(exc)}
        chunks: list[dict[str, Any]] = []
        failed: dict[int, str] = {}
        for i in range(n):
            done, problem = self._predict({k: v[i : i + 1] for k, v in feeds.items()}, 1)
            chunks.extend(done)
            if problem:
                failed[i] = problem[0]
        return chunks, failed

    def _ids(self, batch: Any, first_row: int, problems: dict[int, str]) -> Any:
        """Each row's id as an Arrow array: its position without ``id_field``; an integer or
        text column as it is; any other value by value (``coerce_id``), None with its problem
        set where it cannot be an id."""
        import pyarrow as pa

        id_field = self.spec.id_field
        n = batch.num_rows
        offset = self.work.record_offset + (first_row - self.work.rng.start_record)
        if not id_field:
            return pa.array(range(offset, offset + n), pa.int64())
        if id_field not in batch.schema.names:
            problems.update(dict.fromkeys(range(n), f"record has no id field {id_field!r}"))
            return pa.nulls(n, pa.string())
        column = batch.column(id_field)
        kind = column.type
        if column.null_count == 0 and (
            pa.types.is_signed_integer(kind) or pa.types.is_string(kind)
        ):
            return column.cast(pa.int64()) if pa.types.is_integer(kind) else column
        ids: list[Any] = []
        for i, value in enumerate(column.to_pylist()):
            rec_id, problem = coerce_id(value)
            if problem is not None:
                problems.setdefault(i, f"{problem} (id_field {id_field!r})")
            ids.append(rec_id)
        if all(type(i) is int and INT64_MIN <= i <= INT64_MAX for i in ids if i is not None):
            return pa.array(ids, pa.int64())
        return pa.array([i if i is None or isinstance(i, str) else str(i) for i in ids])

    def _features(self, batch: Any, binding: FeatureInput, problems: dict[int, str]) -> Any:
        """The binding's float64 matrix [rows, features] (column-major: each column is written
        whole); a row whose value is not a finite number (checked value by value, as the record
        path does) gets its problem, the first in field order, unless an earlier field already
        gave it one."""
        import numpy as np
        import pyarrow as pa

        n = batch.num_rows
        matrix = np.zeros((n, len(binding.feature_fields)), dtype=np.float64, order="F")
        names = set(batch.schema.names)
        for j, name in enumerate(binding.feature_fields):
            if name not in names:
                for i in range(n):
                    problems.setdefault(i, f"record has no feature field {name!r}")
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
                else:
                    problems.setdefault(i, problem)
        return matrix


def _concat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Result columns of several chunks as one column each (numpy or Arrow, as they came)."""
    import numpy as np
    import pyarrow as pa

    if len(chunks) == 1:
        return chunks[0]
    out: dict[str, Any] = {}
    for name, first in chunks[0].items():
        parts = [c[name] for c in chunks]
        out[name] = (
            pa.concat_arrays(parts) if isinstance(first, pa.Array) else np.concatenate(parts)
        )
    return out
