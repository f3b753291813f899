"""barge.records.packs against a real LocalStore: which objects are packed, the pack listing,
and reading a pack's objects (in order, each record naming its object and line)."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barge.errors import ListingChanged, ObjectChanged, PermanentJobError
from barge.records import Format, Range, iter_range, packs, plan_ranges
from barge.storage import LocalStore, ObjectInfo, S3Uri
from tests.unit.test_records import put

JSONL = Format("jsonl", False)


def groups(counts: list[int], shard_records: int, max_objects: int = 1000) -> list[list[int]]:
    """The groups as lists of the items' indexes."""
    items = [(i, n) for i, n in enumerate(counts)]
    return [[i for i, _ in g] for g in packs.group(items, shard_records, max_objects)]


class TestGroup:
    def test_consecutive_small_objects_pack_up_to_shard_size(self) -> None:
        assert groups([20] * 12, 100) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
        assert groups([30, 30, 40, 1], 100) == [[0, 1, 2], [3]]  # exactly shard_size fits

    def test_an_object_of_shard_size_or_more_keeps_its_own_shards(self) -> None:
        assert groups([10, 10, 100, 10, 250, 5, 5], 100) == [[0, 1], [2], [3], [4], [5, 6]]
        # a small object alone between large ones is planned on its own, as before
        assert groups([100, 7, 100], 100) == [[0], [1], [2]]

    def test_at_most_max_objects_a_pack_and_one_turns_packing_off(self) -> None:
        assert groups([1] * 7, 100, max_objects=3) == [[0, 1, 2], [3, 4, 5], [6]]
        assert groups([1] * 3, 100, max_objects=1) == [[0], [1], [2]]

    def test_objects_without_records_neither_join_nor_end_a_pack(self) -> None:
        found = groups([5, 0, 5, 0, 0, 5], 100)
        assert [g for g in found if len(g) > 1] == [[0, 2, 5]]
        assert sorted(i for g in found for i in g) == list(range(6))

    def test_shards_of_counts_as_planning_makes_them(self) -> None:
        assert packs.shards_of([20] * 12, 100, 1000) == 3
        assert packs.shards_of([20] * 12, 100, 1) == 12
        assert packs.shards_of([10, 10, 250, 0, 5], 100, 1000) == 1 + 3 + 1


def _plan(
    store: LocalStore, objects: list[tuple[ObjectInfo, Format]], shard_records: int
) -> tuple[S3Uri, list[packs.Pack]]:
    """Plan ``objects`` as the planner does: packs of the small ones, in one listing."""
    counted = []
    for info, fmt in objects:
        ranges, n = plan_ranges(store, info, fmt, shard_records)
        counted.append(((info, fmt, ranges), n))
    listing = packs.ListingWriter("s3://bucket/out/")
    made = []
    for members in packs.group(counted, shard_records, 1000):
        if len(members) == 1:
            continue  # planned on its own
        made.append(listing.add([packs.entry_of(i, f, r[0]) for (i, f, r), _ in members]))
    listing.close(store)
    return listing.uri, made


def _range(pack: packs.Pack) -> Range:
    return Range(
        pack.first_entry, pack.records, pack.first_entry + 1, pack.byte_start, pack.byte_end
    )


class TestReadingPacks:
    def test_each_record_once_in_order_naming_its_object_and_line(self, store: LocalStore) -> None:
        objects = []
        for i in range(30):
            lines = [json.dumps({"id": f"{i}-{j}"}) for j in range(i % 4 + 1)]
            if i == 11:
                lines.insert(1, "{not json")
            if i % 5 == 0:
                lines.insert(0, "")  # a blank line is no record but counts as a line
            objects.append((put(store, f"in/{i:03d}.jsonl", "\n".join(lines).encode()), JSONL))
        uri, made = _plan(store, objects, 10)
        assert uri.key.startswith("out/_inputs/pack-") and uri.key.endswith(".jsonl")
        assert sum(p.objects for p in made) == 30
        assert all(p.records <= 10 for p in made)
        assert made[0].first == "s3://bucket/in/000.jsonl"
        for threads in (1, 4):
            records = [
                r for p in made for r in packs.iter_pack(store, uri, _range(p), threads=threads)
            ]
            good = [r.data["id"] for r in records if r.data is not None]
            assert good == [f"{i}-{j}" for i in range(30) for j in range(i % 4 + 1)]
            bad = [(r.source, r.line) for r in records if r.data is None]
            assert bad == [("s3://bucket/in/011.jsonl", 2)]
            ten = [(r.source, r.line) for r in records if r.source == "s3://bucket/in/010.jsonl"]
            assert [line for _, line in ten] == [2, 3, 4]  # after the blank first line

    def test_gzip_csv_and_parquet_objects_read_in_a_pack(self, store: LocalStore) -> None:
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ["p0", "p1"]}), buf)
        objects = [
            (
                put(store, "in/a.jsonl.gz", gzip.compress(b'{"id": "g0"}\nnope\n')),
                Format("jsonl", True),
            ),
            (put(store, "in/b.csv", b"id\nc0\nc1\n"), Format("csv", False)),
            (put(store, "in/c.parquet", buf.getvalue()), Format("parquet", False)),
        ]
        uri, made = _plan(store, objects, 100)
        assert len(made) == 1 and made[0].objects == 3 and made[0].records == 6
        records = list(packs.iter_pack(store, uri, _range(made[0]), threads=3))
        assert [(r.source.rsplit("/", 1)[-1], r.line) for r in records if r.source] == [
            ("a.jsonl.gz", 1),
            ("a.jsonl.gz", 2),
            ("b.csv", 2),
            ("b.csv", 3),
            ("c.parquet", 1),
            ("c.parquet", 2),
        ]
        assert [r.data and r.data["id"] for r in records] == ["g0", None, "c0", "c1", "p0", "p1"]

    def test_an_object_gone_since_planning_fails_naming_it(self, store: LocalStore) -> None:
        objects = [(put(store, f"in/{i}.jsonl", b'{"a": 1}\n'), JSONL) for i in range(6)]
        uri, made = _plan(store, objects, 100)
        store.delete(S3Uri("bucket", "in/3.jsonl"))
        reading = packs.iter_pack(store, uri, _range(made[0]), threads=2)
        with pytest.raises(
            PermanentJobError, match=r"input object s3://bucket/in/3.jsonl disappeared"
        ):
            list(reading)

    def test_an_object_changed_since_planning_fails_naming_it_and_both_etags(
        self, store: LocalStore
    ) -> None:
        """A Parquet member too: its footer is found from the listed size, with no HEAD, and
        its GETs are on condition of the listed ETag."""
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ["p0", "p1"]}), buf)
        objects = [(put(store, f"in/{i}.jsonl", b'{"a": 1}\n'), JSONL) for i in range(3)]
        objects.append((put(store, "in/3.parquet", buf.getvalue()), Format("parquet", False)))
        for key in ("in/1.jsonl", "in/3.parquet"):
            planned = [(store.head(info.uri), fmt) for info, fmt in objects]
            uri, made = _plan(store, planned, 100)  # type: ignore[arg-type]
            assert len(list(packs.iter_pack(store, uri, _range(made[0])))) == 5
            then = store.head(S3Uri("bucket", key))
            assert then is not None
            body = store.get_bytes(then.uri)
            store.put_bytes(then.uri, body + b"\n")  # another object: another ETag
            now = store.head(then.uri)
            assert now is not None
            with pytest.raises(ObjectChanged) as caught:
                list(packs.iter_pack(store, uri, _range(made[0]), threads=2))
            assert caught.value.message == (
                f"input object s3://bucket/{key} changed after the job was planned (ETag "
                f'"{then.etag}" then, "{now.etag}" now); resubmit the job to read its new contents'
            )

    def test_a_listing_naming_an_object_outside_the_tenants_scopes_is_refused(
        self, store: LocalStore
    ) -> None:
        """The listing lies under the job's output, where its tenant writes: an entry edited
        to name another tenant's object fails the shard, and nothing of the pack is read."""
        objects = [(put(store, f"in/{i}.jsonl", b'{"a": 1}\n'), JSONL) for i in range(4)]
        put(store, "theirs/secret.jsonl", b'{"a": "secret"}\n')
        uri, _ = _plan(store, objects, 100)
        body = store.get_bytes(uri).replace(
            b"s3://bucket/in/2.jsonl", b"s3://bucket/theirs/secret.jsonl"
        )
        store.put_bytes(uri, body)
        rng = Range(0, 4, 1, 0, len(body))
        mine = lambda u: u.startswith("s3://bucket/in/")  # noqa: E731
        with pytest.raises(
            PermanentJobError, match=r"names s3://bucket/theirs/secret.jsonl, outside"
        ):
            list(packs.iter_pack(store, uri, rng, threads=2, may_read=mine))

    def test_a_listing_edited_after_planning_fails_saying_it_is_barges_listing(
        self, store: LocalStore
    ) -> None:
        """The listing's ETag as its PUT wrote it is what the shard row keeps: a read on
        condition of it reads the planned entries; an edit (here an entry dropped and another
        repeated, as long as before) is refused before any object is read."""
        objects = [(put(store, f"in/{i}.jsonl", b'{"a": 1}\n'), JSONL) for i in range(4)]
        counted = [((info, fmt, plan_ranges(store, info, fmt, 100)[0]), 1) for info, fmt in objects]
        listing = packs.ListingWriter("s3://bucket/out/")
        (members,) = packs.group(counted, 100, 1000)
        pack = listing.add([packs.entry_of(i, f, r[0]) for (i, f, r), _ in members])
        written = listing.close(store)
        assert written is not None and written == store.head(listing.uri)
        assert written.size == pack.byte_end
        planned = list(packs.iter_pack(store, listing.uri, _range(pack), etag=written.etag))
        assert [r.source for r in planned] == [str(info.uri) for info, _ in objects]

        lines = store.get_bytes(listing.uri).splitlines(keepends=True)
        store.put_bytes(listing.uri, b"".join([lines[0], lines[0], *lines[2:]]))
        now = store.head(listing.uri)
        assert now is not None and now.size == written.size
        unchecked = [r.source for r in packs.iter_pack(store, listing.uri, _range(pack))]
        assert unchecked[:2] == ["s3://bucket/in/0.jsonl"] * 2  # what an unchecked read gives
        with pytest.raises(ListingChanged) as caught:
            list(packs.iter_pack(store, listing.uri, _range(pack), threads=2, etag=written.etag))
        assert caught.value.message == (
            f"{listing.uri} is Barge's listing of the job's inputs, written when the job was "
            f'planned, and it was edited after planning (ETag "{written.etag}" then, '
            f'"{now.etag}" now); Barge reads only the listing it wrote: resubmit the job'
        )
        assert caught.value.status_code == 409

    def test_an_images_listing_edited_after_planning_fails_saying_so(
        self, store: LocalStore
    ) -> None:
        """An images listing is read as JSONL on condition of its ETag: a change of it is
        ``ListingChanged``; a change of another object stays ``ObjectChanged``."""
        uri = S3Uri("bucket", "out/_inputs/images-1.jsonl")
        assert packs.is_listing(str(uri), "s3://bucket/out")
        assert not packs.is_listing("s3://bucket/in/images.jsonl", "s3://bucket/out/")
        body = b'{"id": "a.png", "image": "s3://bucket/in/a.png"}\n'
        info = ObjectInfo(uri, len(body), store.put_bytes(uri, body))
        rng = Range(0, 1, 1, 0, len(body))
        assert len(list(packs.listing_records(iter_range(store, info, JSONL, rng), uri))) == 1
        store.put_bytes(uri, body.replace(b"a.png", b"b.png"))
        with pytest.raises(ListingChanged, match=r"is Barge's listing of the job's inputs"):
            list(packs.listing_records(iter_range(store, info, JSONL, rng), uri))
        other = S3Uri("bucket", "out/_inputs/images-2.jsonl")
        with pytest.raises(ObjectChanged):
            list(packs.listing_records(iter_range(store, info, JSONL, rng), other))

    def test_a_shard_reads_only_its_own_entries(self, store: LocalStore) -> None:
        objects = [
            (put(store, f"in/{i:02d}.jsonl", b'{"a": 1}\n{"a": 2}\n'), JSONL) for i in range(9)
        ]
        uri, made = _plan(store, objects, 4)
        assert [p.objects for p in made] == [2, 2, 2, 2]  # the ninth alone: its own shard
        second = list(packs.iter_pack(store, uri, _range(made[1])))
        assert {r.source for r in second} == {"s3://bucket/in/02.jsonl", "s3://bucket/in/03.jsonl"}
        # objects added to the prefix after planning are not read
        put(store, "in/02b.jsonl", b'{"a": 3}\n')
        assert len(list(packs.iter_pack(store, uri, _range(made[1])))) == 4


class TestPlanningAChangingObject:
    def test_an_object_changed_between_its_listing_and_its_read_fails_planning_saying_so(
        self, store: LocalStore
    ) -> None:
        """Planning reads each object on condition of the ETag its listing found: one
        overwritten in between is not counted as the object the shards will check against."""
        import uuid
        from types import SimpleNamespace

        from barge.settings import Settings
        from barge.specs import parse_spec
        from worker.kinds.records import plan_objects

        infos = [put(store, f"in/{i}.jsonl", b'{"text": "a"}\n') for i in range(2)]
        store.put_bytes(infos[1].uri, b'{"text": "a"}\n{"text": "b"}\n')
        spec = parse_spec(
            {
                "type": "inference",
                "model": "s3://bucket/model/",
                "task": "embed",
                "input": "s3://bucket/in/",
                "output": "s3://bucket/out/",
            }
        )
        ctx = SimpleNamespace(store=store, settings=Settings())
        with pytest.raises(PermanentJobError) as caught:
            plan_objects(ctx, spec, uuid.uuid4(), infos, "auto", 2)  # type: ignore[arg-type]
        assert caught.value.message == (
            "input object s3://bucket/in/1.jsonl changed while the job was being planned; "
            "resubmit the job once its input is written"
        )
