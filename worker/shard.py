"""What the inference shard runners share (text, text2text and ONNX records through
``worker.runners.records``, images ``worker.runners.images``, ONNX columns
``worker.runners.onnx``, OpenAI batches ``worker.runners.openai_batch``):

- ``ShardRun``: the spooled part and errors files (in ``ctx.scratch()``), the walk over the
  shard's work that stops at a ``Stop`` and closes both files however it ends, and the fenced
  upload. Each runner keeps its own window loop;
- the part writers (``JsonlPart``, ``ParquetPart``): spool a shard's rows to a local file, then
  upload it in one atomic PUT (``put_part``, ``part_result``); and the rule for what a record id
  may be (``coerce_id``);
- reading: ``read_records`` (a shard's records, of its object or, packed, of its objects),
  ``input_info`` (what reading a shard's records needs to know of its object),
  ``windows`` and ``prefetch`` (reading ahead on a background thread, so that the store's I/O
  and decoding overlap the model).

No torch. Imports: ``barge``, ``worker.context``, ``worker.lease``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

from barge.errors import NotFound, PermanentJobError
from barge.records import Limits, Record, iter_range, packs, planned_object
from barge.specs import InferenceSpec
from barge.storage import ObjectInfo, ObjectStore, S3Uri
from worker.context import WorkerContext
from worker.lease import Lease, Outcome, Result, ShardWork, Stop

M = TypeVar("M")  # the loaded model: a LoadedModel, or a VisionModel for image tasks
T = TypeVar("T")


class ShardRun(Generic[M]):
    """One inference shard's run: its job's spec and parameters, its model, its lease (which
    carries the progress the heartbeat records) and its part and errors files in ``tmp``
    (``part``: a writer of the runner's own, else one of the job's output format)."""

    def __init__(
        self,
        ctx: WorkerContext,
        work: ShardWork,
        lease: Lease,
        loaded: M,
        tmp: Path,
        part: JsonlPart | ParquetPart | None = None,
    ):
        spec = work.spec
        assert isinstance(spec, InferenceSpec)
        self.ctx = ctx
        self.work = work
        self.spec = spec
        self.params = spec.task_params()
        self.lease = lease
        self.loaded = loaded
        self.part = part if part is not None else make_part(spec.output_format, tmp / "part")
        self.errors = JsonlPart(tmp / "errors")
        self.batches = 0  # batches started

    def next_batch(self) -> None:
        """Before each batch: the lease's checks (job status, time limit, heartbeat), except
        before the first, where the claim's check, moments old, stands (a small shard of one
        batch reads the job's status once, at its claim)."""
        if self.batches:
            self.lease.between_batches()
        self.batches += 1

    def walk(self, steps: Iterable[T], step: Callable[[T], None]) -> Stop | None:
        """``step`` over ``steps``; the ``Stop`` that cut the shard short, if any. The input
        object vanishing midway fails the job (no retry can read it); both files are closed
        however the walk ends."""
        try:
            for item in steps:
                step(item)
        except Stop as exc:
            return exc
        except NotFound:
            raise PermanentJobError(f"input object {self.work.source} disappeared") from None
        finally:
            self.part.close()
            self.errors.close()
        return None

    def upload(self, stopped: Stop | None, usage: dict[str, int] | None = None) -> Result:
        """Check this attempt still holds the shard (fencing), then PUT the part and the
        errors file (``part_result``)."""
        self.lease.fence()
        return part_result(
            self.ctx,
            self.work,
            self.spec.output,
            self.part,
            self.errors,
            stopped is not None,
            usage=usage,
        )


RecordId = str | int | float
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ROW_GROUP_ROWS = 8192  # a Parquet part is written in row groups of at most this many rows


def coerce_id(value: object) -> tuple[RecordId | None, str | None]:
    """A record id as the outputs write it, or why it cannot be one (a per-record error).

    Strings, integers (not bools) and finite floats are kept; dates and times become ISO 8601
    text, bytes their UTF-8 text, a ``Decimal`` its string. Anything else (null, booleans,
    lists, objects, NaN, infinities, bytes that are not UTF-8) is refused.
    """
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool) or value is None:
        return None, f"id must be a string or a number, got {_kind(value)}"
    if isinstance(value, int):
        return int(value), None
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value), None
        return None, f"id must be a string or a finite number, got {value!r}"
    if isinstance(value, Decimal):
        if value.is_finite():
            return str(value), None
        return None, f"id must be a string or a finite number, got Decimal {str(value)!r}"
    if isinstance(value, date | time):  # datetime is a date
        return value.isoformat(), None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError as exc:
            return None, f"id is bytes that are not UTF-8 text ({exc.reason} at byte {exc.start})"
    return None, f"id must be a string or a number, got {_kind(value)}"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    return type(value).__name__


class JsonlPart:
    ext = "jsonl"

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._f = path.open("w", encoding="utf-8")

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        self._f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.count += len(rows)

    def write_columns(self, ids: Any, columns: dict[str, Any]) -> None:
        """Rows given as arrays (as ``ParquetPart.write_columns`` takes them), written as the
        same lines ``write_rows`` writes for their dicts, without making the dicts: each column
        is encoded as JSON at once and cut into its rows' texts."""
        n = len(ids)
        if not n:
            return
        texts = [json_texts(ids), *(json_texts(values) for values in columns.values())]
        # One %-template per line: '{"id": %s, "<name>": %s}\n' (a '%' of a name doubled).
        names = "".join(", " + json.dumps(name).replace("%", "%%") + ": %s" for name in columns)
        line = '{"id": %s' + names + "}\n"
        self._f.write("".join([line % row for row in zip(*texts, strict=True)]))
        self.count += n

    def close(self) -> None:
        self._f.close()


class ParquetPart:
    """Rows ``{"id": <coerced id>, <result>}`` spooled to an Arrow stream next to ``path`` (the
    id as text); ``close()`` builds the Parquet file, batch by batch, once every id is known:
    the id column is int64 when every id of the part is an integer that fits, else string
    (numbers as their decimal text). An empty part is a file with only a string ``id`` column.
    Result columns keep the types Arrow infers from the first rows (label string, score double,
    text string), except ``embedding``, a fixed-size list of float32 as long as the first row's
    vector, and ``scores``, a map label -> double (``typed_results``).

    ``write_columns`` takes ids and results as Arrow arrays (a columnar runner's), with no
    Python object per row."""

    ext = "parquet"

    def __init__(self, path: Path, results_schema: Any = None):
        self.path = path
        self.count = 0
        self._spool_path = path.with_name(path.name + ".spool.arrows")
        self._sink: Any = None  # the spool file and its Arrow stream writer, from the first rows
        self._spool: Any = None
        # The result columns' schema: given (a task whose rows vary: image tasks), else inferred
        # from the first rows.
        self._results: Any = results_schema
        self._all_int = True
        self._closed = False

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        if not rows:
            return
        ids = []
        for row in rows:
            rec_id = row["id"]
            if not (type(rec_id) is int and INT64_MIN <= rec_id <= INT64_MAX):
                self._all_int = False
            ids.append(rec_id if isinstance(rec_id, str) else str(rec_id))
        results = [{k: v for k, v in row.items() if k != "id"} for row in rows]
        if self._spool is None:
            self._open(
                pa.Table.from_pylist(results).schema if self._results is None else None, rows
            )
        table = pa.Table.from_pylist(results, schema=self._results)
        self._spool.write_table(
            pa.Table.from_arrays(
                [pa.array(ids, pa.string()), *table.columns],
                schema=self._spool_schema(pa.string()),
            )
        )
        self.count += len(rows)

    def write_columns(self, ids: Any, columns: dict[str, Any]) -> None:
        """Rows given as Arrow arrays: ``ids`` (integers, or text), each result column as
        long (``embedding`` a fixed-size list of float32 already, or a 2-D float array)."""
        import pyarrow as pa

        n = len(ids)
        if not n:
            return
        if not pa.types.is_integer(ids.type):
            self._all_int = False
        arrays = {name: as_arrow(name, values) for name, values in columns.items()}
        if self._spool is None:
            self._open(pa.schema([(name, a.type) for name, a in arrays.items()]), [])
        self._spool.write_table(
            pa.Table.from_arrays(
                [ids.cast(pa.string()), *(arrays[f.name] for f in self._results)],
                schema=self._spool_schema(pa.string()),
            )
        )
        self.count += n

    def _open(self, inferred: Any, rows: list[dict[str, Any]]) -> None:
        """Start the spool at the first rows: the result columns fixed (``typed_results``)."""
        import pyarrow as pa

        self._results = typed_results(self._results if inferred is None else inferred, rows)
        self._sink = pa.OSFile(str(self._spool_path), "wb")
        self._spool = pa.ipc.new_stream(self._sink, self._spool_schema(pa.string()))

    def _spool_schema(self, id_type: Any) -> Any:
        import pyarrow as pa

        return pa.schema([pa.field("id", id_type), *self._results])

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._closed:
            return
        self._closed = True
        if self._spool is None:  # an empty part still has a readable file
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), self.path)
            return
        self._spool.close()
        self._sink.close()
        self._spool = self._sink = None
        schema = self._spool_schema(pa.int64() if self._all_int else pa.string())
        try:
            with (
                pa.memory_map(str(self._spool_path)) as source,
                pq.ParquetWriter(self.path, schema) as out,
            ):
                pending: list[Any] = []  # batches (memory-mapped) of the next row group
                rows = 0
                for batch in pa.ipc.open_stream(source):  # one batch per write_rows call
                    ids = batch.column(0)
                    if self._all_int:
                        ids = ids.cast(pa.int64())
                    pending.append(pa.record_batch([ids, *batch.columns[1:]], schema=schema))
                    rows += batch.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        table = pa.Table.from_batches(pending, schema)
                        out.write_table(table, row_group_size=ROW_GROUP_ROWS)
                        pending, rows = [], 0
                if pending:
                    out.write_table(pa.Table.from_batches(pending, schema))
        finally:
            self._spool_path.unlink(missing_ok=True)


def typed_results(schema: Any, rows: list[dict[str, Any]]) -> Any:
    """A part's result columns as written: ``embedding`` a fixed-size list of float32 (as long
    as the first row's vector; a list type given without its length takes it from there), and
    ``scores`` a map label -> double instead of the struct Arrow infers from dicts."""
    import pyarrow as pa

    fields = []
    for field in schema:
        kind = field.type
        if field.name == "embedding" and pa.types.is_list(kind) and rows:
            kind = pa.list_(pa.float32(), len(rows[0]["embedding"]))
        elif field.name == "embedding" and pa.types.is_list(kind):
            kind = pa.list_(pa.float32())
        elif field.name == "scores" and pa.types.is_struct(kind):
            kind = pa.map_(pa.string(), pa.float64())
        fields.append(pa.field(field.name, kind))
    return pa.schema(fields)


def as_arrow(name: str, values: Any) -> Any:
    """One result column as an Arrow array: an array as it is; a 2-D numpy array (an
    embedding's) as a fixed-size list of float32, with no Python object per value."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    array = np.asarray(values)
    if array.ndim == 2:
        flat = pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
    return pa.array(array)


def json_texts(values: Any) -> list[str]:
    """Each value of a column (an Arrow or numpy array) as its JSON text, as ``json.dumps``
    writes it. A column of numbers is encoded in one ``json.dumps`` call and split; a vector's
    row, or a text, one call each."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, pa.Array | pa.ChunkedArray):
        kind = values.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values = values.to_numpy(zero_copy_only=False)
        elif pa.types.is_map(kind):  # pairs in Arrow, an object in JSON
            values = [None if v is None else dict(v) for v in values.to_pylist()]
        else:
            values = values.to_pylist()
    if isinstance(values, np.ndarray) and values.ndim == 1:
        body = json.dumps(values.tolist())[1:-1]
        return body.split(", ") if body else []
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return [json.dumps(v, ensure_ascii=False) for v in values]


def make_part(
    output_format: str, path: Path, results_schema: Any = None
) -> JsonlPart | ParquetPart:
    """A part writer; ``results_schema`` fixes a Parquet part's result columns."""
    if output_format == "parquet":
        return ParquetPart(path, results_schema)
    return JsonlPart(path)


def part_name(index: int, ext: str) -> str:
    return f"part-{index:05d}.{ext}"


def errors_name(index: int) -> str:
    return f"errors/part-{index:05d}.jsonl"


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    window: list[T] = []
    for item in items:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def put_part(
    store: ObjectStore,
    output: str,
    index: int,
    attempt: int,
    part: JsonlPart | ParquetPart,
    errors: JsonlPart,
) -> tuple[str, str | None]:
    """PUT a shard's part (always, even empty) and its errors file when there are errors; the
    keys written (None for no errors). An empty errors file is not written, and one an earlier
    attempt may have written is deleted (a first attempt has none to delete)."""
    out_prefix = S3Uri.parse(output).as_prefix()
    output_key = out_prefix.join(part_name(index, part.ext))
    store.put_file(output_key, part.path)
    errors_key = out_prefix.join(errors_name(index))
    if errors.count:
        store.put_file(errors_key, errors.path)
        return output_key.key, errors_key.key
    if attempt > 1:
        store.delete(errors_key)
    return output_key.key, None


def prefetch(it: Iterator[T], size: int, name: str = "barge-prefetch") -> Iterator[T]:
    """``it``'s items, read up to ``size`` ahead on a daemon thread; an exception of the reader
    is raised here, in order. Closing the iterator early stops the reader."""
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    threading.Thread(target=pump, daemon=True, name=name).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()


def read_records(ctx: WorkerContext, work: ShardWork) -> Iterator[Record]:
    """The shard's records, in order: a packed shard's objects (``barge.records.packs``: its
    listing range, then its objects by ``BARGE_INPUT_FETCH_THREADS`` concurrent GETs, each
    record naming its object), else its range of its object (``input_info`` first)."""
    limits = Limits.from_settings(ctx.settings)
    if work.fmt.name == packs.PACK_FORMAT:
        return packs.iter_pack(
            ctx.store,
            S3Uri.parse(work.source),
            work.rng,
            threads=ctx.settings.input_fetch_threads,
            limits=limits,
            may_read=None if work.scopes is None else work.scopes.may_read,
            etag=work.source_etag,
        )
    records = iter_range(ctx.store, input_info(ctx, work), work.fmt, work.rng, limits=limits)
    if packs.is_listing(work.source, work.output_uri):  # an images listing
        return packs.listing_records(records, S3Uri.parse(work.source))
    return records


def input_info(ctx: WorkerContext, work: ShardWork) -> ObjectInfo:
    """What reading the shard's records needs to know of its object
    (``barge.records.planned_object``: as planning found it, with no HEAD where it can); an
    object gone fails the job naming it."""
    uri = S3Uri.parse(work.source)
    try:
        return planned_object(
            ctx.store, uri, work.source_etag, work.source_size, work.fmt, work.rng
        )
    except NotFound:
        raise PermanentJobError(f"input object {work.source} disappeared") from None


def part_result(
    ctx: WorkerContext,
    work: ShardWork,
    output: str,
    part: JsonlPart | ParquetPart,
    errors: JsonlPart,
    stopped: bool,
    usage: dict[str, int] | None = None,
) -> Result:
    """PUT a shard's part and errors file (``put_part``) and say what was
    written: SUCCEEDED, or CANCELLED when the run stopped early with what it finished."""
    output_key, errors_key = put_part(ctx.store, output, work.index, work.attempt, part, errors)
    return Result(
        Outcome.CANCELLED if stopped else Outcome.SUCCEEDED,
        succeeded=part.count,
        failed=errors.count,
        output_key=output_key,
        errors_key=errors_key,
        usage=usage,
    )
