"""The one rule for user-named storage locations, and the one place keys become local paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from barge.errors import InvalidSpec
from barge.paths import UnsafePath, local_path
from barge.uris import contains, normalise, overlap


class TestNormalise:
    @pytest.mark.parametrize(
        ("uri", "prefix", "expected"),
        [
            ("s3://bucket/a/b.jsonl", False, "s3://bucket/a/b.jsonl"),
            ("s3://bucket/a/b", True, "s3://bucket/a/b/"),
            ("s3://bucket/a/", True, "s3://bucket/a/"),
            ("s3://bucket", True, "s3://bucket/"),
            ("s3://my.bucket-1/ü/ñ.csv", False, "s3://my.bucket-1/ü/ñ.csv"),
        ],
    )
    def test_accepted(self, uri: str, prefix: bool, expected: str) -> None:
        assert normalise(uri, "output", prefix=prefix) == expected

    @pytest.mark.parametrize(
        ("uri", "why"),
        [
            ("s3://alice/../bob/x", "'..' segment"),
            ("s3://alice/./same/", "'.' segment"),
            ("s3://alice//same/", "empty segment"),
            ("s3://alice/a\x00b", "control character"),
            ("s3://alice/a\nb", "control character"),
            ("s3://alice/\ud800", "lone surrogate"),
            ("s3://alice/" + "k" * 1100, "S3 allows at most 1024"),
            ("s3://Alice/x", "bucket name"),
            ("s3://a/x", "bucket name"),
            ("s3://bad_bucket/x", "bucket name"),
            ("s3://192.168.1.1/x", "bucket name"),
            ("s3://a..b/x", "bucket name"),
            ("s3:///key", "bucket name"),
            ("http://bucket/x", "must be an s3://bucket/key URI"),
        ],
    )
    def test_refused_naming_the_field(self, uri: str, why: str) -> None:
        with pytest.raises(InvalidSpec, match=why) as exc:
            normalise(uri, "output")
        assert exc.value.field == "output"

    def test_refusal_shows_only_an_excerpt(self) -> None:
        with pytest.raises(InvalidSpec) as exc:
            normalise("s3://x/" + "\x00" * 100_000, "input")
        assert len(exc.value.message) < 300
        assert "100007 characters" in exc.value.message


class TestOverlap:
    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [
            ("s3://b/out/", "s3://b/out/", True),
            ("s3://b/out/", "s3://b/out/errors/", True),
            ("s3://b/out/errors/", "s3://b/out/", True),
            ("s3://b/out/", "s3://b/out/part-00000.jsonl", True),
            ("s3://b/out/", "s3://b/out-2/", False),
            ("s3://b/out/", "s3://c/out/", False),
            ("s3://b/", "s3://b/anything", True),
            ("s3://b/in.jsonl", "s3://b/in.jsonl.gz", False),
        ],
    )
    def test_overlap(self, a: str, b: str, expected: bool) -> None:
        assert overlap(a, b) is expected
        assert overlap(b, a) is expected

    def test_an_object_contains_only_itself(self) -> None:
        assert contains("s3://b/x", "s3://b/x")
        assert not contains("s3://b/x", "s3://b/x/y")


class TestLocalPath:
    @pytest.mark.parametrize(
        "key",
        [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "",
            "a\x00b",
            "x" * 256,
        ],
    )
    def test_refused(self, tmp_path: Path, key: str) -> None:
        with pytest.raises(UnsafePath):
            local_path(tmp_path, key)

    def test_inside(self, tmp_path: Path) -> None:
        assert local_path(tmp_path, "a/b.txt") == tmp_path.resolve() / "a" / "b.txt"
