"""Latency of small work, on a real stack with default settings: what a shard costs, how soon a
job is planned while the GPU is busy, how soon a one-record job is done, how soon a killed
worker's shard runs again.

The stack is ``bench.stack.Stack`` (its own Postgres database and RabbitMQ vhost, moto's S3 server
on loopback, a real API process and one worker started as ``barge worker`` starts it) plus
``barge scheduler``; (d) starts a second ``barge worker``. Nothing is tuned: every setting is
Barge's default, so the figures follow whatever the worker, the leases and the reconciler do now.
Times come from the job's and shard's own timestamps (server clock, same host), so polling adds
nothing, except (c)'s client-side figure, which is what a caller sees.

(a) overhead per shard: the same records (``--records``, MiniLM-L6 ``embed``, batch
    ``--shard-records``) run as one shard, then as shards of ``--shard-records`` each;
    (T_many - T_one) / (shards - 1), T being the job's created_at → finished_at. Alternated
    ``--rounds`` times; printed from the fastest run of each (other load on the host only adds
    time), with every round and their median beside it.
(b) submit → planned while the GPU worker is busy: a job with one long shard runs; once its shard
    is running, a one-record job is submitted; its created_at → started_at (``running``, its
    shards created and dispatched).
(c) submit → succeeded of a one-record job on a warm worker, ``--small-jobs`` times: client side
    (POST to the API answering ``succeeded``, polled every 20 ms) and created_at → finished_at.
(d) SIGKILL of a worker mid-shard → its shard running again: a second ``barge worker`` stands by;
    a job with one long shard starts; the worker holding it is killed (its whole process group,
    SIGKILL) a second into the shard; the time to the ``started_at`` of the shard's next attempt.

Run: `.venv/bin/python bench/latency.py` (about 5 minutes); it needs Postgres and RabbitMQ as for
`make test`, and writes its logs and `result.json` under `bench/results/latency-*/`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import BUCKET, Stack  # noqa: E402
from bench.throughput import WORDS  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


def make_texts(n: int, words: int = 12, seed: int = 3) -> list[str]:
    """Texts of the same number of words, so one shard and many shards pad batches alike."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def at(value: str) -> float:
    """An API timestamp as seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


class LatencyStack(Stack):
    """``Stack`` plus ``barge scheduler`` (the reconciler runs as in production) and, on
    demand, more ``barge worker`` processes."""

    def __enter__(self) -> LatencyStack:
        super().__enter__()
        try:
            self.env: dict[str, str] = dict(self._worker.env)
            self.workers = [self._worker]
            self._scheduler = subprocess.Popen(
                [sys.executable, "-m", "cli", "scheduler"],
                env=self.env,
                cwd=ROOT,
                stdout=(self.log_dir / "scheduler.log").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            super().__exit__(*sys.exc_info())
            raise
        return self

    def add_worker(self, name: str) -> Any:
        from tests.services import WorkerProcess

        worker = WorkerProcess(self.env, self.log_dir / f"worker-{name}.log", name=name).start()
        self.workers.append(worker)
        return worker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for worker in self.workers[1:]:
            worker.stop()
        if self._scheduler.poll() is None:
            os.killpg(self._scheduler.pid, signal.SIGTERM)
            self._scheduler.wait(10)
        super().__exit__(exc_type, exc, tb)

    # --- jobs ---------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> tuple[float, str]:
        """(the client's clock when it sent the POST, the job id)."""
        sent = time.time()
        job = self.api.post("/v1/jobs", json=spec).raise_for_status().json()
        return sent, str(job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/v1/jobs/{job_id}").raise_for_status().json())

    def shards(self, job_id: str) -> list[dict[str, Any]]:
        body = self.api.get(f"/v1/jobs/{job_id}/shards").raise_for_status().json()
        return list(body["shards"])

    def wait(self, job_id: str, until: Any, poll: float = 0.02, timeout: float = 600) -> Any:
        """Poll until ``until(job)`` is truthy; returns its value (and the clock then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            value = until(job)
            if value:
                return value
            if job["status"] in FINAL:
                raise RuntimeError(f"job {job_id} ended {job['status']} first: {job['error']}")
            time.sleep(poll)
        raise RuntimeError(f"job {job_id}: timed out after {timeout}s")

    def complete(self, spec: dict[str, Any], poll: float = 0.1) -> dict[str, Any]:
        """Submit and wait until it succeeds; the final job."""
        _, job_id = self.submit(spec)
        job: dict[str, Any] = self.wait(job_id, lambda j: j if j["status"] in FINAL else None, poll)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
        return job

    def running_shard(self, job_id: str, attempt: int = 1, timeout: float = 120) -> dict[str, Any]:
        """The job's first shard once it runs under ``attempt`` (or a later one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shards = self.shards(job_id)
            if shards and shards[0]["status"] == "running" and shards[0]["attempt"] >= attempt:
                return shards[0]
            time.sleep(0.02)
        raise RuntimeError(f"job {job_id}: shard not running (attempt {attempt}) in {timeout}s")


def spec(model: str, key: str, out: str, shard_records: int, batch_size: int) -> dict[str, Any]:
    return {
        "type": "inference",
        "model": model,
        "task": "embed",
        "input": f"s3://{BUCKET}/{key}",
        "output": f"s3://{BUCKET}/{out}/",
        "batch_size": batch_size,
        "shard_size": shard_records,
    }


def seconds(job: dict[str, Any], start: str = "created_at", end: str = "finished_at") -> float:
    return at(job[end]) - at(job[start])


def overhead_per_shard(
    stack: LatencyStack, model: str, records: int, per_shard: int, rounds: int
) -> dict[str, Any]:
    """(a): the same records as one shard and as many, alternated ``rounds`` times."""
    runs = []
    for r in range(rounds):
        one = stack.complete(spec(model, "records.jsonl", f"a/one-{r}", records, per_shard))
        many = stack.complete(spec(model, "records.jsonl", f"a/many-{r}", per_shard, per_shard))
        shards = int(many["progress"]["shards_total"])
        assert (
            many["progress"]["records_succeeded"] == records == one["progress"]["records_succeeded"]
        )
        t_one, t_many = seconds(one), seconds(many)
        runs.append(
            {
                "one_shard_s": t_one,
                "many_shards_s": t_many,
                "shards": shards,
                "ms_per_shard": (t_many - t_one) / (shards - 1) * 1000,
            }
        )
    # Other load on the host only ever adds time: the fastest run of each is the least
    # disturbed one, and their difference the steadiest figure.
    best_one = min(r["one_shard_s"] for r in runs)
    best_many = min(r["many_shards_s"] for r in runs)
    return {
        "runs": runs,
        "one_shard_s": best_one,
        "many_shards_s": best_many,
        "ms_per_shard": (best_many - best_one) / (runs[0]["shards"] - 1) * 1000,
        "median_of_rounds_ms": statistics.median(r["ms_per_shard"] for r in runs),
    }


def planned_while_busy(
    stack: LatencyStack, model: str, long_records: int, batch_size: int
) -> dict[str, Any]:
    """(b): a one-record job submitted while the GPU worker runs another job's long shard."""
    _, long_id = stack.submit(spec(model, "long.jsonl", "b/long", long_records, batch_size))
    stack.running_shard(long_id)
    _, small_id = stack.submit(spec(model, "one.jsonl", "b/small", 1, batch_size))
    small = stack.wait(small_id, lambda j: j if j["started_at"] else None, timeout=900)
    long_job = stack.job(long_id)
    busy = long_job["status"] == "running" and long_job["progress"]["shards_done"] == 0
    for job_id in (long_id, small_id):
        stack.wait(job_id, lambda j: j if j["status"] in FINAL else None, poll=0.2)
    return {"seconds": seconds(small, end="started_at"), "gpu_still_busy": busy}


def one_record_jobs(stack: LatencyStack, model: str, n: int, batch_size: int) -> dict[str, Any]:
    """(c): one-record jobs one after another on the warm worker."""
    client, server = [], []
    for i in range(n):
        sent, job_id = stack.submit(spec(model, "one.jsonl", f"c/{i}", 1, batch_size))
        job = stack.wait(job_id, lambda j: j if j["status"] in FINAL else None)
        client.append(time.time() - sent)
        assert job["status"] == "succeeded", job
        server.append(seconds(job))
    return {
        "client_s": client,
        "server_s": server,
        "client_median_s": statistics.median(client),
        "server_median_s": statistics.median(server),
    }


def takeover(stack: LatencyStack, model: str, long_records: int, batch_size: int) -> dict[str, Any]:
    """(d): kill the worker holding a long shard; time until another attempt starts it."""
    stack.add_worker("standby")
    _, job_id = stack.submit(spec(model, "long.jsonl", "d/long", long_records, batch_size))
    shard = stack.running_shard(job_id)
    holder = _holder(stack, str(shard["worker"]))
    time.sleep(1.0)  # well into the shard
    killed = time.time()
    os.killpg(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(10)
    again = stack.running_shard(job_id, attempt=shard["attempt"] + 1, timeout=900)
    job = stack.wait(job_id, lambda j: j if j["status"] in FINAL else None, poll=0.2)
    assert job["status"] == "succeeded" and job["progress"]["records_succeeded"] == long_records
    return {"seconds": at(again["started_at"]) - killed, "attempt": again["attempt"]}


def _holder(stack: LatencyStack, worker: str) -> Any:
    """The ``barge worker`` whose pool process holds a shard (its ``worker`` is host:pid)."""
    _, _, pid = worker.rpartition(":")
    for proc in stack.workers:
        if pid.isdigit() and int(pid) in proc.pool_pids():
            return proc
    raise RuntimeError(f"no worker of this bench runs the shard (its worker is {worker!r})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--shard-records", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small-jobs", type=int, default=7)
    parser.add_argument("--long-records", type=int, default=4000, help="(b) and (d)'s long shard")
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("latency-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    # One tenant, the bench's: it may use the bench's bucket (tenants' default scopes are
    # s3://barge/<tenant>/).
    os.environ.setdefault("BARGE_TENANT_READ_SCOPES", '["*"]')
    os.environ.setdefault("BARGE_TENANT_WRITE_SCOPES", '["*"]')
    from barge.settings import get_settings
    from tests.helpers import minilm_dir

    defaults = get_settings()  # what the stack's processes run with: nothing here changes it
    texts = make_texts(max(args.records, args.long_records))
    result: dict[str, Any] = {"args": vars(args)}
    with LatencyStack(log_dir) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        for key, n in (("records.jsonl", args.records), ("long.jsonl", args.long_records)):
            body = "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts[:n]))
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
        stack.s3.put_object(Bucket=BUCKET, Key="one.jsonl", Body=b'{"id": 0, "text": "one"}\n')
        cold = stack.complete(spec(model, "one.jsonl", "cold", 1, args.shard_records))
        print(f"(first job on a cold worker, incl. model copy and load: {seconds(cold):.1f} s)")

        a = overhead_per_shard(stack, model, args.records, args.shard_records, args.rounds)
        result["a_overhead_per_shard"] = a
        for r in a["runs"]:
            print(
                f"    {args.records} records: 1 shard {r['one_shard_s']:.2f} s, {r['shards']} "
                f"shards {r['many_shards_s']:.2f} s -> {r['ms_per_shard']:.1f} ms/shard"
            )
        print(
            f"(a) overhead per shard: {a['ms_per_shard']:.1f} ms  ({args.records} records, "
            f"MiniLM-L6 embed, batch {args.shard_records}: fastest of {args.rounds} runs each, "
            f"1 shard {a['one_shard_s']:.2f} s, {a['runs'][0]['shards']} shards "
            f"{a['many_shards_s']:.2f} s, created -> finished; median of the rounds "
            f"{a['median_of_rounds_ms']:.1f} ms)",
            flush=True,
        )

        c = one_record_jobs(stack, model, args.small_jobs, args.shard_records)
        result["c_one_record_job"] = c
        print(
            f"(c) submit -> succeeded, one record, warm worker: {c['client_median_s']:.3f} s "
            f"median as the client sees it (max {max(c['client_s']):.3f} s, {args.small_jobs} "
            f"jobs); created -> finished {c['server_median_s']:.3f} s",
            flush=True,
        )

        b = planned_while_busy(stack, model, args.long_records, args.shard_records)
        result["b_planned_while_busy"] = b
        print(
            f"(b) submit -> planned while the GPU worker runs another job's long shard: "
            f"{b['seconds']:.3f} s"
            + ("" if b["gpu_still_busy"] else "  (planned only once the GPU worker was free)"),
            flush=True,
        )

        d = takeover(stack, model, args.long_records, args.shard_records)
        result["d_takeover"] = d
        print(
            f"(d) SIGKILL of a worker mid-shard -> its shard running again (attempt "
            f"{d['attempt']}): {d['seconds']:.1f} s  (BARGE_LEASE_SECONDS "
            f"{defaults.lease_seconds:g}, BARGE_HEARTBEAT_SECONDS {defaults.heartbeat_seconds:g}, "
            f"BARGE_RECONCILE_SECONDS {defaults.reconcile_seconds:g})",
            flush=True,
        )
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
