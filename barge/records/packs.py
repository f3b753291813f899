"""Packs: many small input objects read as one shard.

A prefix of many small objects would otherwise make a shard per object, each paying a shard's
fixed cost (claim, lease, a part PUT, settling). Planning packs consecutive objects (in key
order) that each hold fewer records than the job's ``shard_size``, while the pack's records stay
within ``shard_size`` and its objects within ``BARGE_PACK_MAX_OBJECTS`` (``group``); an object of
``shard_size`` records or more keeps its own shards, and so does a small object alone between
two large ones.

The packs of one planning run are written as a JSONL *listing* under the job's output
(``_inputs/pack-<run>.jsonl``), one :class:`PackEntry` line per object: its URI, ETag, size,
format, gzip, records and where they are (first line, byte range of plain JSONL), as planning
found them. A packed shard is a byte range of that listing (``input_format`` ``"pack"``), so it
reads exactly the objects planned for it, whatever is added to the prefix later, with no
schema of its own; the shard row keeps what views show (objects, first and last), and the
listing's ETag and size as its PUT wrote them (``Shard.source_etag``, ``source_size``).

The listing lies under the job's output, where its tenant can write. Every read of it is
conditional on the ETag its PUT returned (``If-Match``): a listing edited after planning fails
the shard (``ListingChanged``: Barge's listing of the job's inputs, edited; resubmit), so
records are never dropped, duplicated or shifted by an edit. The same holds for an images
listing (``barge.records.images``; ``listing_records`` says so of its reads).

Planning reads each small object whole to count its records, and keeps those bytes: a pack's
objects (other than Parquet; each of at most ``COPY_OBJECT_BYTES``, 1 MiB) are PUT as one
*copy* beside the listing (``_inputs/pack-<run>-<n>.data``, ``ListingWriter.copy``, at most
``BARGE_PACK_COPY_BYTES``),
each entry naming its bytes of it (``data``, ``data_start``, ``data_end``) and the copy's ETag.
A packed shard reads them with one GET of the copy (``read_copies``, conditional on that ETag:
an edited copy is ``ListingChanged``, naming Barge's copy) instead of one GET per object, so
it reads exactly what planning counted, even of an object overwritten or deleted since. A
listing naming a copy that does not lie beside it is refused before anything is read (a
listing planned before ETags were kept is read without a condition).

Reading a pack (``iter_pack``) reads its listing range, its copy, then the objects the copy
does not hold with a bounded pool of concurrent GETs (``BARGE_INPUT_FETCH_THREADS``), at most
twice as many objects ahead as threads (backpressure), in order; each record carries its own object (``Record.source``) and line, so a
per-record error names the real object. An object read as it was planned (``iter_range``): a bad
line is a per-record error of that object; an object gone since planning fails the job naming
it, as a shard of its own does, and so does one changed since: every GET of an object is
conditional on the ETag its entry lists (``If-Match``; a Parquet footer is found from the
listed size, with no HEAD).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from barge.errors import BargeError, ListingChanged, NotFound, ObjectChanged, PermanentJobError
from barge.records.base import Format, Limits, Range, Record, resolve_limits
from barge.records.planning import in_order, iter_range
from barge.storage import HeldObjects, ObjectInfo, ObjectStore, S3Uri

PACK_FORMAT = "pack"  # a packed shard's input_format
LISTING_DIR = "_inputs/"
# The largest object planning keeps for a pack's copy: its reads run several at once, so what
# they hold in flight stays small; a larger object's GET costs more than its request anyway.
COPY_OBJECT_BYTES = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class PackEntry:
    """One object of a pack, as planning found it."""

    uri: str
    etag: str
    size: int
    format: str
    gzip: bool
    records: int
    first_line: int
    byte_start: int | None = None  # plain JSONL: the bytes of its records
    byte_end: int | None = None
    # Barge's copy of the object, as planning read it: its bytes [data_start, data_end) of the
    # pack's copy object ``data`` (whose PUT returned ``data_etag``); None: read the object
    data: str | None = None
    data_etag: str = ""
    data_start: int | None = None
    data_end: int | None = None

    def line(self) -> bytes:
        fields = self.__dict__
        if self.data is None:  # a listing without copies reads as it did before them
            fields = {k: v for k, v in fields.items() if not k.startswith("data")}
        return json.dumps(fields, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> PackEntry:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)

    @property
    def fmt(self) -> Format:
        return Format(self.format, self.gzip)

    @property
    def range(self) -> Range:
        return Range(0, self.records, self.first_line, self.byte_start, self.byte_end)


@dataclass(frozen=True)
class Pack:
    """A packed shard's part of the listing: its entries' byte range and listing lines, and
    what its shard row shows (objects, first and last)."""

    byte_start: int
    byte_end: int
    first_entry: int  # index of its first entry in the listing
    records: int
    objects: int
    first: str
    last: str


def group(
    items: Iterable[tuple[T, int]], shard_records: int, max_objects: int
) -> Iterator[list[tuple[T, int]]]:
    """``items`` (with their record counts) in order, grouped: a group of several is one pack;
    a group of one is an object planned on its own (``shard_size`` records or more, an object
    with no record, or a small object with no small neighbour). Packs hold at most
    ``shard_records`` records and ``max_objects`` objects (1: nothing is packed)."""
    pack: list[tuple[T, int]] = []
    total = 0
    for item, n in items:
        if n == 0:
            yield [(item, n)]  # no record, no shard: it neither joins nor ends a pack
            continue
        if n >= shard_records or max_objects <= 1:
            if pack:
                yield pack
            pack, total = [], 0
            yield [(item, n)]
            continue
        if pack and (total + n > shard_records or len(pack) >= max_objects):
            yield pack
            pack, total = [], 0
        pack.append((item, n))
        total += n
    if pack:
        yield pack


def shards_of(counts: Iterable[int], shard_records: int, max_objects: int) -> int:
    """How many shards objects of these record counts make (a dry run's count)."""
    shards = 0
    for members in group(((None, n) for n in counts), shard_records, max_objects):
        n = members[0][1]
        shards += 1 if len(members) > 1 else -(-n // shard_records)
    return shards


class ListingWriter:
    """The pack listing of one planning run, spooled to a local file, PUT once at ``close``
    (before any shard that reads it is committed)."""

    def __init__(self, output_uri: str):
        name = f"{LISTING_DIR}pack-{uuid.uuid4().hex}.jsonl"
        self.uri = S3Uri.parse(output_uri).as_prefix().join(name)
        self._dir = tempfile.TemporaryDirectory(prefix="barge-pack-")
        self._path = Path(self._dir.name) / "listing.jsonl"
        self._f = self._path.open("wb")
        self._offset = 0
        self._entries = 0
        self.copies: list[S3Uri] = []  # the packs' copy objects PUT so far

    def copy(
        self,
        store: ObjectStore,
        entries: Sequence[PackEntry],
        bodies: Sequence[bytes | None],
        max_bytes: int,
    ) -> list[PackEntry]:
        """Keep what planning read of a pack's objects (``bodies``, in order; None for one it
        did not keep) as one copy object beside the listing, at most ``max_bytes``, PUT now:
        the entries it holds name their bytes of it, so the packed shard reads them with one
        GET rather than one per object. Entries past ``max_bytes`` read their objects."""
        out, chunks, size = list(entries), [], 0
        for i, body in enumerate(bodies):
            if body is None or size + len(body) > max_bytes:
                continue
            chunks.append((i, size, body))
            size += len(body)
        if not chunks:
            return out
        uri = S3Uri(
            self.uri.bucket, self.uri.key.removesuffix(".jsonl") + f"-{len(self.copies)}.data"
        )
        etag = store.put_bytes(uri, b"".join(body for _, _, body in chunks))
        self.copies.append(uri)
        for i, start, body in chunks:
            out[i] = replace(
                out[i], data=str(uri), data_etag=etag, data_start=start, data_end=start + len(body)
            )
        return out

    def add(self, entries: Sequence[PackEntry]) -> Pack:
        start, first = self._offset, self._entries
        for entry in entries:
            line = entry.line()
            self._f.write(line)
            self._offset += len(line)
        self._entries += len(entries)
        return Pack(
            start,
            self._offset,
            first,
            sum(e.records for e in entries),
            len(entries),
            entries[0].uri,
            entries[-1].uri,
        )

    def close(self, store: ObjectStore) -> ObjectInfo | None:
        """PUT the listing (when a pack was added): the listing as written (its ETag is the
        PUT's, its size the bytes written), None when nothing was. The local file goes either
        way."""
        try:
            self._f.close()
            if not self._entries:
                return None
            etag = store.put_file(self.uri, self._path)
            return ObjectInfo(self.uri, self._offset, etag)
        finally:
            self._dir.cleanup()

    def discard(self, store: ObjectStore | None = None) -> None:
        """Planning failed: the listing is not written, and the copies already PUT are deleted
        (with ``store``; one that cannot be is left, under the job's output, unread)."""
        self._f.close()
        self._dir.cleanup()
        if store is None:
            return
        for uri in self.copies:
            with contextlib.suppress(BargeError):
                store.delete(uri)


def entry_of(info: ObjectInfo, fmt: Format, rng: Range) -> PackEntry:
    """The listing entry of a small object planned as one range."""
    return PackEntry(
        str(info.uri),
        info.etag,
        info.size,
        fmt.name,
        fmt.gzip,
        rng.record_count,
        rng.first_line,
        rng.byte_start,
        rng.byte_end,
    )


def read_entries(store: ObjectStore, listing: S3Uri, rng: Range, etag: str = "") -> list[PackEntry]:
    """A packed shard's entries: its byte range of the listing, read on condition that the
    listing is still the one planning wrote (its ``etag``; "" for a shard planned before
    listings' ETags were kept: read as it is)."""
    try:
        with store.open(listing, rng.byte_start or 0, rng.byte_end, if_match=etag) as f:
            body = f.read()
    except NotFound:
        raise PermanentJobError(f"the pack listing {listing} disappeared") from None
    except ObjectChanged as exc:
        raise ListingChanged(listing, exc.expected, exc.current) from None
    return [PackEntry.parse(line) for line in body.splitlines() if line.strip()]


def is_listing(source: str, output_uri: str) -> bool:
    """Whether ``source`` (a shard's input) is one of Barge's listings under the job's output
    ``output_uri`` (``_inputs/``: a pack listing, an images listing)."""
    if not output_uri:
        return False
    inputs = S3Uri.parse(output_uri).as_prefix().join(LISTING_DIR)
    return source.startswith(str(inputs))


def listing_records(records: Iterator[Record], listing: S3Uri) -> Iterator[Record]:
    """``records`` read from Barge's ``listing`` (an images listing, read as JSONL on condition
    of its planned ETag): the listing changed since planning is ``ListingChanged``, saying it
    is Barge's listing, edited, rather than an input object changed."""
    try:
        yield from records
    except ObjectChanged as exc:
        if exc.uri != str(listing):
            raise
        raise ListingChanged(listing, exc.expected, exc.current) from None


def iter_pack(
    store: ObjectStore,
    listing: S3Uri,
    rng: Range,
    *,
    threads: int = 1,
    limits: Limits | None = None,
    may_read: Callable[[str], bool] | None = None,
    etag: str = "",
) -> Iterator[Record]:
    """Stream a packed shard's records, object by object in listing order, each with its
    object (``Record.source``) and line; the objects are read by a bounded pool of ``threads``
    concurrent GETs, at most ``2 × threads`` objects ahead of the consumer. The listing lies
    under the job's output, where its tenant can write: its range is read on condition of its
    planned ``etag`` (``ListingChanged`` when it was edited since), and with ``may_read`` (the
    tenant's read scopes) an entry naming an object outside them fails the shard before
    anything is read."""
    limits = resolve_limits(limits)
    entries = read_entries(store, listing, rng, etag)
    outside = [e.uri for e in entries if may_read is not None and not may_read(e.uri)]
    if outside:
        raise PermanentJobError(
            f"the pack listing {listing} names {outside[0]}, outside the storage this job's "
            "tenant may read; nothing of the pack was read"
        )

    beside = f"{listing.bucket}/{listing.key.removesuffix('.jsonl')}-"
    foreign = [e.data for e in entries if e.data and not e.data.startswith(f"s3://{beside}")]
    if foreign:  # a copy is Barge's, beside its listing: never an object the listing names
        raise PermanentJobError(
            f"the pack listing {listing} names {foreign[0]} as its copy of the job's inputs, "
            "which is not Barge's copy beside it; nothing of the pack was read"
        )
    held = read_copies(store, entries)

    def fetch(entry: PackEntry) -> list[Record]:
        return read_object(held if entry.data else store, entry, limits)

    if threads <= 1 or len(entries) <= 1:
        for entry in entries:
            yield from fetch(entry)
        return
    with ThreadPoolExecutor(min(threads, len(entries)), thread_name_prefix="barge-pack") as pool:
        for records in in_order(pool, fetch, entries, 2 * threads):
            yield from records


def read_copies(store: ObjectStore, entries: Sequence[PackEntry]) -> HeldObjects:
    """The objects of ``entries`` that Barge's copy holds, each as planning read it: one GET
    per copy object (of the entries' bytes of it), on condition of the ETag its PUT returned
    (``ListingChanged``, naming it as Barge's copy, when it was edited since)."""
    held = HeldObjects()
    spans: dict[tuple[str, str], list[PackEntry]] = {}
    for entry in entries:
        if entry.data is not None:
            spans.setdefault((entry.data, entry.data_etag), []).append(entry)
    for (data, etag), members in spans.items():
        start = min(e.data_start or 0 for e in members)
        end = max(e.data_end or 0 for e in members)
        uri = S3Uri.parse(data)
        try:
            with store.open(uri, start, end, if_match=etag) as f:
                body = f.read()
        except NotFound:
            raise PermanentJobError(
                f"Barge's copy {data} of the job's inputs disappeared"
            ) from None
        except ObjectChanged as exc:
            raise ListingChanged(uri, exc.expected, exc.current, what="copy") from None
        for e in members:
            piece = body[(e.data_start or 0) - start : (e.data_end or 0) - start]
            held.hold(S3Uri.parse(e.uri), piece, e.etag)
    return held


def read_object(store: ObjectStore, entry: PackEntry, limits: Limits) -> list[Record]:
    """The records of one packed object, as planned (at most its planned records), each
    naming it. Every GET is conditional on the ETag planning listed (a Parquet footer found
    from the listed size, with no HEAD): an object changed since planning fails the shard
    naming it (``ObjectChanged``), one gone since fails the job naming it."""
    uri = S3Uri.parse(entry.uri)
    info = ObjectInfo(uri, entry.size, entry.etag)
    try:
        records = list(iter_range(store, info, entry.fmt, entry.range, limits=limits))
    except NotFound:
        raise PermanentJobError(f"input object {entry.uri} disappeared") from None
    for rec in records:
        rec.source = entry.uri
    return records


def describe(listing: str, objects: int | None, first: str | None, last: str | None) -> str:
    """How messages and views name a packed shard's input."""
    return f"{objects} objects {first} to {last}, listed in {listing}"
