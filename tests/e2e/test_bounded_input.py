"""Bounded input end to end: a ~1 MB ``.jsonl.gz`` whose middle line expands to 1 GiB.

Before input was bounded, submitting such an object took 34 s with the API at 4.2 GB RSS (it
peeked at the first record by reading the whole line) and the worker child grew to ~22 GB and was
OOM-killed (planning and reading held the line). Now the API reads at most the record limit of
it, and the worker streams past the line (planning and reading each decompress all of it, about
5 s a pass on a small machine) without holding it: the line becomes one error record naming the
limit, and the job succeeds with the records around it. The object is built in chunks, so the
test never holds the gigabyte either.
"""

from __future__ import annotations

import resource
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, wait_job
from tests.services import WorkerProcess

T = TypeVar("T")

LINE_TEXT_BYTES = 2**30  # the big line's text: 1 GiB of "a"
FIRST = b'{"id": 1, "text": "a small record before the big one"}\n'
LAST = b'{"id": 3, "text": "a small record after it"}\n'
BIG_PREFIX = b'{"id": 2, "text": "'
BIG_SUFFIX = b'"}\n'


def gzip_bomb() -> bytes:
    """FIRST, one line of ~1 GiB, LAST: gzip-compressed in 4 MiB chunks (about 1 MB)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits=31: a gzip stream
    out = [comp.compress(FIRST), comp.compress(BIG_PREFIX)]
    chunk = b"a" * (4 * 2**20)
    for _ in range(LINE_TEXT_BYTES // len(chunk)):
        out.append(comp.compress(chunk))
    out += [comp.compress(BIG_SUFFIX + LAST), comp.flush()]
    return b"".join(out)


def status_kib(pid: int | str, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int | str) -> bool:
    """Restart a process's peak-RSS counter (VmHWM, ru_maxrss) from its current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def pool_children(worker: WorkerProcess) -> list[int]:
    """The pids of the worker's prefork pool processes (GPU and control)."""
    return worker.pool_pids()


def peak_growth(fn: Callable[[], T]) -> tuple[T, int, int]:
    """``fn()``, with how far this process's RSS peaked above where it was before (bytes), by
    /proc (VmHWM) and by ``getrusage`` (ru_maxrss)."""
    reset = reset_peak_rss("self")
    before = status_kib("self", "VmRSS" if reset else "VmHWM")
    maxrss_before = before if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = fn()
    hwm = status_kib("self", "VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, max(0, hwm - before) * 1024, max(0, maxrss - maxrss_before) * 1024


def test_one_gib_line_in_a_small_gzip(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: WorkerProcess
) -> None:
    # Warm the submit path (store client, imports) on a small object first, so the figure below
    # is the big object's: a field check that fails reads the object and creates no job.
    small = put_jsonl(s3, bucket, "in/small.jsonl", [{"id": 1, "text": "x"}])
    warm = api.post(
        "/v1/jobs",
        json=inference_spec(minilm_uri, small, f"s3://{bucket}/warm/", text_field="body"),
        headers=auth,
    )
    assert warm.status_code == 422, warm.text

    data = gzip_bomb()
    assert len(data) < 2 * 10**6, len(data)
    s3.put_object(Bucket=bucket, Key="in/bomb.jsonl.gz", Body=data)
    del data
    input_uri = f"s3://{bucket}/in/bomb.jsonl.gz"
    out = f"out-{uuid.uuid4().hex[:6]}"
    spec = inference_spec(
        minilm_uri, input_uri, f"s3://{bucket}/{out}/", id_field="id", max_failed_ratio=0.5
    )

    # The worker's pool child measures this job alone from here on.
    children = pool_children(worker)
    assert children, "the worker has no pool process"
    for pid in children:
        reset_peak_rss(pid)

    started = time.monotonic()
    r, api_growth, api_maxrss_growth = peak_growth(
        lambda: api.post("/v1/jobs", json=spec, headers=auth)
    )
    submit_seconds = time.monotonic() - started
    assert r.status_code == 201, r.text
    assert submit_seconds < 5, submit_seconds
    assert api_growth < 300 * 2**20, f"the API peaked {api_growth / 2**20:.0f} MiB higher"
    assert api_maxrss_growth < 300 * 2**20, api_maxrss_growth

    job = wait_job(api, auth, r.json()["id"], timeout=180)
    assert job["status"] == "succeeded", job

    m = manifest(s3, bucket, out)
    assert m["records"] == {"total": 3, "succeeded": 2, "failed": 1, "not_processed": 0}
    rows = [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]
    assert [row["id"] for row in rows] == [1, 3]
    assert all(len(row["embedding"]) == 384 for row in rows)
    assert [e["key"] for e in m["errors"]] == [f"{out}/errors/part-00000.jsonl"]
    errors = read_jsonl(s3, bucket, f"{out}/errors/part-00000.jsonl")
    line_bytes = len(BIG_PREFIX) + LINE_TEXT_BYTES + len(BIG_SUFFIX)
    assert errors == [
        {
            "id": None,
            "source": input_uri,
            "line": 2,
            "error": "record is larger than 4194304 bytes (BARGE_MAX_RECORD_BYTES); "
            f"its line has {line_bytes} bytes",
        }
    ]

    # Peak RSS of the pool processes that planned and ran the job (MiniLM + torch is ~1 GB; it
    # was ~22 GB before input was bounded).
    peaks = {pid: status_kib(pid, "VmHWM") * 1024 for pid in pool_children(worker)}
    assert peaks, "the worker has no pool process"
    assert max(peaks.values()) < 3 * 2**30, {
        pid: f"{b / 2**20:.0f} MiB" for pid, b in peaks.items()
    }
    print(
        f"submit {submit_seconds:.2f} s; API peak growth {api_growth / 2**20:.1f} MiB "
        f"(ru_maxrss {api_maxrss_growth / 2**20:.1f} MiB); worker pool peak RSS "
        + ", ".join(f"{b / 2**20:.0f} MiB" for b in peaks.values())
    )
