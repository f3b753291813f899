"""barge.storage: S3 URIs and the local directory object store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from barge.errors import InvalidSpec, NotFound, ObjectChanged
from barge.storage import LocalStore, ObjectInfo, S3Uri, SeekableObject, iter_prefix_files


class TestS3Uri:
    @pytest.mark.parametrize(
        ("text", "bucket", "key"),
        [
            ("s3://bucket/a/b.jsonl", "bucket", "a/b.jsonl"),
            ("s3://bucket/a/", "bucket", "a/"),
            ("s3://bucket/", "bucket", ""),
            ("s3://bucket", "bucket", ""),
        ],
    )
    def test_parse(self, text: str, bucket: str, key: str) -> None:
        uri = S3Uri.parse(text)
        assert (uri.bucket, uri.key) == (bucket, key)

    def test_str_round_trip(self) -> None:
        assert str(S3Uri.parse("s3://bucket/a/b.jsonl")) == "s3://bucket/a/b.jsonl"

    @pytest.mark.parametrize(
        "text", ["http://bucket/key", "bucket/key", "/tmp/x", "s3://", "s3:///key"]
    )
    def test_parse_rejects_non_s3(self, text: str) -> None:
        with pytest.raises(InvalidSpec) as exc:
            S3Uri.parse(text, field="input")
        assert exc.value.field == "input"
        assert exc.value.message.startswith("input ")
        assert repr(text) in exc.value.message

    def test_parse_rejects_non_strings(self) -> None:
        with pytest.raises(InvalidSpec):
            S3Uri.parse(None)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("key", "joined"),
        [
            ("out", "out/part-00000.jsonl"),
            ("out/", "out/part-00000.jsonl"),
            ("", "part-00000.jsonl"),
        ],
    )
    def test_join(self, key: str, joined: str) -> None:
        assert S3Uri("b", key).join("part-00000.jsonl") == S3Uri("b", joined)

    @pytest.mark.parametrize(("key", "prefix"), [("out", "out/"), ("out/", "out/"), ("", "")])
    def test_as_prefix(self, key: str, prefix: str) -> None:
        assert S3Uri("b", key).as_prefix() == S3Uri("b", prefix)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> LocalStore:
    return LocalStore(root)


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".barge-tmp-")]


class TestLocalStorePutGet:
    def test_put_get_overwrite(self, store: LocalStore, root: Path) -> None:
        uri = S3Uri("b", "out/part-00000.jsonl")
        store.put_bytes(uri, b"first\n")
        assert store.get_bytes(uri) == b"first\n"
        assert (root / "b" / "out" / "part-00000.jsonl").read_bytes() == b"first\n"
        store.put_bytes(uri, b"second, longer\n")
        assert store.get_bytes(uri) == b"second, longer\n"
        assert tmp_files(root) == []

    def test_put_file(self, store: LocalStore, tmp_path: Path) -> None:
        src = tmp_path / "src.bin"
        src.write_bytes(bytes(range(256)) * 10)
        uri = S3Uri("b", "models/x/model.safetensors")
        store.put_file(uri, src)
        assert store.get_bytes(uri) == src.read_bytes()

    def test_a_put_returns_the_etag_of_what_it_wrote(
        self, store: LocalStore, tmp_path: Path
    ) -> None:
        """What a later read on condition of that ETag (``If-Match``) names."""
        uri = S3Uri("b", "out/_inputs/listing.jsonl")
        etag = store.put_bytes(uri, b"planned\n")
        assert store.head(uri) == ObjectInfo(uri, 8, etag)
        with store.open(uri, if_match=etag) as f:
            assert f.read() == b"planned\n"
        src = tmp_path / "src.jsonl"
        src.write_bytes(b"planned again, longer\n")
        again = store.put_file(uri, src)
        assert again != etag and store.head(uri) == ObjectInfo(uri, 22, again)

    def test_failed_put_leaves_the_old_object_and_no_temp_file(
        self, store: LocalStore, root: Path, tmp_path: Path
    ) -> None:
        uri = S3Uri("b", "out/_manifest.json")
        store.put_bytes(uri, b"old")
        with pytest.raises(FileNotFoundError):
            store.put_file(uri, tmp_path / "missing")
        assert store.get_bytes(uri) == b"old"
        assert tmp_files(root) == []

    def test_put_never_exposes_a_partial_object(self, store: LocalStore, root: Path) -> None:
        uri = S3Uri("b", "out/part-00001.jsonl")
        store.put_bytes(uri, b"complete\n")

        class Boom(Exception):
            pass

        def half_then_fail(f: io.BufferedWriter) -> None:
            f.write(b"half")
            raise Boom

        with pytest.raises(Boom):
            store._atomic_write(uri, half_then_fail)
        assert store.get_bytes(uri) == b"complete\n"
        assert tmp_files(root) == []

    def test_get_missing_is_not_found(self, store: LocalStore) -> None:
        with pytest.raises(NotFound, match=r"s3://b/nope"):
            store.get_bytes(S3Uri("b", "nope"))

    def test_delete(self, store: LocalStore) -> None:
        uri = S3Uri("b", "x")
        store.put_bytes(uri, b"x")
        store.delete(uri)
        assert store.head(uri) is None
        store.delete(uri)  # deleting a missing object is not an error


class TestLocalStoreHeadList:
    def test_head(self, store: LocalStore) -> None:
        uri = S3Uri("b", "in/a.jsonl")
        store.put_bytes(uri, b"12345")
        info = store.head(uri)
        assert info is not None
        assert (info.uri, info.size) == (uri, 5)
        assert info.etag
        store.put_bytes(uri, b"123456")
        changed = store.head(uri)
        assert changed is not None and changed.etag != info.etag

    def test_head_of_missing_folder_or_bucket_root_is_none(self, store: LocalStore) -> None:
        store.put_bytes(S3Uri("b", "in/a.jsonl"), b"x")
        assert store.head(S3Uri("b", "in/missing.jsonl")) is None
        assert store.head(S3Uri("b", "in")) is None  # a folder, not an object
        assert store.head(S3Uri("b", "")) is None

    def test_list(self, store: LocalStore, root: Path) -> None:
        for key in ["in/b.jsonl", "in/a.jsonl", "in/sub/c.jsonl", "inbox/d.jsonl", "z.jsonl"]:
            store.put_bytes(S3Uri("b", key), key.encode())
        (root / "b" / "in" / ".barge-tmp-abandoned").write_bytes(b"a crashed writer's temp")

        keys = [i.uri.key for i in store.list(S3Uri("b", "in/"))]
        assert keys == ["in/a.jsonl", "in/b.jsonl", "in/sub/c.jsonl"]
        everything = store.list(S3Uri("b", ""))
        assert [i.uri.key for i in everything] == [
            "in/a.jsonl",
            "in/b.jsonl",
            "in/sub/c.jsonl",
            "inbox/d.jsonl",
            "z.jsonl",
        ]
        assert all(i.size == len(i.uri.key) for i in everything)
        assert store.list(S3Uri("nobucket", "")) == []

    def test_iter_prefix_files(self, store: LocalStore) -> None:
        for key in ["m/config.json", "m/sub/w.safetensors"]:
            store.put_bytes(S3Uri("b", key), b"x")
        rel = [name for _, name in iter_prefix_files(store, S3Uri("b", "m"))]
        assert rel == ["config.json", "sub/w.safetensors"]


class TestLocalStoreRanges:
    DATA = bytes(range(256)) * 4

    @pytest.fixture
    def uri(self, store: LocalStore) -> S3Uri:
        uri = S3Uri("b", "blob")
        store.put_bytes(uri, self.DATA)
        return uri

    @pytest.mark.parametrize(
        ("start", "end"), [(0, None), (10, 20), (1000, None), (1000, 5000), (5, 5), (0, 1024)]
    )
    def test_byte_range(self, store: LocalStore, uri: S3Uri, start: int, end: int | None) -> None:
        with store.open(uri, start, end) as f:
            assert f.read() == self.DATA[start:end]

    def test_buffered_line_reads_stop_at_the_range_end(self, store: LocalStore) -> None:
        uri = S3Uri("b", "lines")
        store.put_bytes(uri, b"one\ntwo\nthree\n")
        with io.BufferedReader(store.open(uri, 4, 8)) as f:  # type: ignore[arg-type,type-var]
            assert list(f) == [b"two\n"]

    def test_open_missing_is_not_found(self, store: LocalStore) -> None:
        with pytest.raises(NotFound):
            store.open(S3Uri("b", "missing"), 0, 10)

    def test_a_read_on_condition_of_the_etag_refuses_an_object_replaced_since(
        self, store: LocalStore, uri: S3Uri
    ) -> None:
        then = store.head(uri)
        assert then is not None
        with store.open(uri, 10, 20, if_match=then.etag) as f:
            assert f.read() == self.DATA[10:20]
        store.put_bytes(uri, b"another object")
        now = store.head(uri)
        assert now is not None and now.etag != then.etag
        with pytest.raises(ObjectChanged) as caught:
            store.open(uri, 10, 20, if_match=then.etag)
        assert (caught.value.expected, caught.value.current) == (then.etag, now.etag)
        assert "s3://b/blob changed after the job was planned" in caught.value.message
        with store.open(uri, if_match="") as f:  # no ETag: no condition
            assert f.read() == b"another object"

    def test_seekable_object(self, store: LocalStore, uri: S3Uri) -> None:
        info = store.head(uri)
        assert info is not None
        f = io.BufferedReader(SeekableObject(store, info), 64)
        f.seek(-4, io.SEEK_END)
        assert f.read() == self.DATA[-4:]
        f.seek(300)
        assert f.read(10) == self.DATA[300:310]
        assert f.tell() == 310


class TestLocalStoreEscape:
    @pytest.mark.parametrize(
        "uri",
        [
            S3Uri.parse("s3://b/../../etc/passwd"),
            S3Uri.parse("s3://../etc/passwd"),
            S3Uri("b", "/etc/passwd"),
            S3Uri("b", "../../store-evil/x"),  # a sibling whose name starts like the root
        ],
        ids=["dotdot-key", "dotdot-bucket", "absolute-key", "sibling-prefix"],
    )
    def test_paths_outside_the_root_are_refused(
        self, store: LocalStore, tmp_path: Path, uri: S3Uri
    ) -> None:
        for op in (store.head, store.get_bytes, store.open, store.delete):
            with pytest.raises(InvalidSpec, match="cannot be a local file name"):
                op(uri)
        with pytest.raises(InvalidSpec, match="cannot be a local file name"):
            store.put_bytes(uri, b"pwned")
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere

    @pytest.mark.parametrize(
        ("key", "why"),
        [
            ("a/../c", "'..' segment"),  # even one that would stay inside: one spelling per key
            ("a//c", "empty segment"),
            ("a/./c", "'.' segment"),
            ("a\x00c", "control character"),
            ("x" * 300, "longer than 255 bytes"),
            ("a/\ud800", "lone surrogate"),
        ],
    )
    def test_unsafe_keys_are_refused_not_500(self, store: LocalStore, key: str, why: str) -> None:
        with pytest.raises(InvalidSpec, match=why):
            store.put_bytes(S3Uri("b", key), b"x")
        with pytest.raises(InvalidSpec, match=why):
            store.head(S3Uri("b", key))

    def test_a_symlink_out_of_the_root_is_not_followed(
        self, store: LocalStore, tmp_path: Path
    ) -> None:
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.mkdir()
        (store.root / "b").mkdir(parents=True)
        (store.root / "b" / "link").symlink_to(outside)
        with pytest.raises(InvalidSpec, match="resolves outside"):
            store.put_bytes(S3Uri("b", "link/x.txt"), b"pwned")
        assert list(outside.iterdir()) == []
