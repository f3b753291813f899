"""The control plane at scale, with simulated GPU workers (``make bench-scale``).

A real stack (its own Postgres database and RabbitMQ vhost, moto's S3 server, the API, a
control worker and the scheduler) and one Celery worker of ``bench/scale_worker.py`` on the
``gpu`` queue whose threads are simulated GPU workers: Barge's claim, lease, heartbeats,
status checks, part upload and settle, the model step a sleep.

    python bench/scale.py workers --workers 100 300 1000 --shard-seconds 1 10 --rounds 3
    python bench/scale.py backlog --shards 100000 --jobs 1000 --tenants 50 --workers 50
    python bench/scale.py jobs-table --jobs 1000000 --tenants 50

``workers``: per (workers, shard time): settled shards/s against the ideal (workers / shard
time), claim latency, Postgres transactions (pg_stat_database) per second and per shard,
broker messages per shard (task messages and Celery events, counted by an event receiver),
the reconciler's pass, ``GET /v1/jobs/{id}`` and ``GET /v1/jobs`` latency meanwhile, CPU of
the API and of the database's backends. ``backlog``: a backlog of pending shards across many
tenants' jobs (inserted with SQL), then a one-record job of another tenant: how long until it
succeeds, and the reconciler's pass over the backlog. ``jobs-table``: a jobs table of a
million rows with events (SQL inserts), the list's first page and cursor pages.

The machine's load average is printed with every figure: on a shared machine they are lower
bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (a supervisor and its pool)."""
    from tests.services import child_pids

    return cpu_seconds(pid) + sum(tree_cpu(child) for child in child_pids(pid))


@dataclass
class Stack:
    """The bench's stack; ``env`` is the settings every process shares."""

    log_dir: Path
    run: str = field(default_factory=lambda: f"bench_scale_{os.getpid()}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def start(self, reconcile_seconds: float) -> Stack:
        import boto3

        from tests.services import MotoServer, create_database, create_vhost, free_port, wait_port

        self.db_url = create_database(self.run)
        self.moto = MotoServer(self.log_dir / "moto.log")
        self.env = {
            **os.environ,
            "BARGE_DATABASE_URL": self.db_url,
            "BARGE_BROKER_URL": create_vhost(self.run),
            "BARGE_S3_ENDPOINT_URL": self.moto.url,
            "BARGE_TENANT_READ_SCOPES": '["*"]',
            "BARGE_TENANT_WRITE_SCOPES": '["*"]',
            "BARGE_HOME": str(self.log_dir / "home"),
            "BARGE_RECONCILE_SECONDS": str(reconcile_seconds),
            "BARGE_MAX_ACTIVE_JOBS_PER_TENANT": "100000",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(self.env)  # the bench's own reconciler passes and event receiver
        self.cli("db", "upgrade")
        self.s3 = boto3.client("s3", endpoint_url=self.moto.url, region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)
        # A model directory planning accepts (the simulated workers never load it).
        self.s3.put_object(Bucket=BUCKET, Key="model/config.json", Body=b'{"model_type": "bert"}')
        empty_safetensors = (2).to_bytes(8, "little") + b"{}"
        self.s3.put_object(Bucket=BUCKET, Key="model/model.safetensors", Body=empty_safetensors)
        self.api_port = free_port()
        self.spawn("api", "api", "--port", str(self.api_port))
        wait_port(self.api_port, 60)
        self.spawn("control", "worker", "--queues", "control")
        self.spawn("scheduler", "scheduler")
        return self

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cli", *args] if args[0] != "-m" else [sys.executable, *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=(self.log_dir / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_proc(self, name: str) -> None:
        import signal

        proc = self.procs.pop(name, None)
        if proc is None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def client(self, tenant: str = "bench") -> Any:
        import httpx

        if tenant not in self.keys:
            self.keys[tenant] = self.cli("keys", "create", "--tenant", tenant)
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
            timeout=60,
        )

    def stop(self) -> None:
        from tests.services import delete_vhost, drop_database

        for name in list(self.procs):
            self.stop_proc(name)
        self.moto.stop()
        drop_database(self.run)
        delete_vhost(self.run)


def sql(stack: Stack, query: str, **params: Any) -> list[Any]:
    """Rows of ``query`` on the bench's database, committed."""
    from sqlalchemy import text

    from db.session import get_engine

    with get_engine(stack.db_url).begin() as conn:
        result = conn.execute(text(query), params)
        return list(result) if result.returns_rows else []


def xacts(stack: Stack) -> int:
    rows = sql(
        stack,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :db",
        db=stack.run,
    )
    return int(rows[0][0])


class PgCpu:
    """CPU seconds of the bench database's backends: each backend's time is read while it
    lives (pooled connections live through a run)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.seen: dict[int, tuple[float, float]] = {}  # pid: (first, last)

    def sample(self) -> None:
        rows = sql(
            self.stack, "SELECT pid FROM pg_stat_activity WHERE datname = :db", db=self.stack.run
        )
        for (pid,) in rows:
            now = cpu_seconds(pid)
            first = self.seen.get(pid, (now, now))[0]
            self.seen[pid] = (first, now)

    def used(self) -> float:
        return sum(last - first for first, last in self.seen.values())


class Events:
    """Counts every message a Celery event receiver sees on the vhost (task-sent per task name:
    the task messages; every event: the event messages)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.capture, daemon=True, name="bench-events").start()

    def capture(self) -> None:
        from barge.queue import make_celery
        from barge.settings import get_settings

        app = make_celery(get_settings())
        try:
            with app.connection() as conn:
                recv = app.events.Receiver(conn, handlers={"*": self.on_event})
                recv.capture(limit=None, timeout=None, wakeup=False)
        except Exception:  # the vhost went at the end of the run
            return

    def on_event(self, event: dict[str, Any]) -> None:
        key = event["type"]
        if key == "task-sent":
            key = f"sent {event.get('name')}"
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            self.counts["events"] = self.counts.get("events", 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


class Sampler:
    """While work runs: ``GET /v1/jobs/{id}`` and ``GET /v1/jobs`` latencies, reconciler passes
    (Barge's own ``reconcile``, timed in this process) and the backends' CPU."""

    def __init__(self, stack: Stack, job_ids: list[str], reconcile_every: float = 5.0):
        self.stack = stack
        self.job_ids = job_ids
        self.get_ms: list[float] = []
        self.list_ms: list[float] = []
        self.reconcile_ms: list[float] = []
        self.reconcile_every = reconcile_every
        self.pg = PgCpu(stack)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.api_loop, daemon=True),
            threading.Thread(target=self.control_loop, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def api_loop(self) -> None:
        api = self.stack.client()
        i = 0
        while not self.stop.wait(0.2):
            i += 1
            started = time.perf_counter()
            if i % 2 and self.job_ids:
                api.get(f"/v1/jobs/{self.job_ids[i % len(self.job_ids)]}").raise_for_status()
                self.get_ms.append((time.perf_counter() - started) * 1000)
            else:
                api.get("/v1/jobs", params={"limit": 50}).raise_for_status()
                self.list_ms.append((time.perf_counter() - started) * 1000)

    def control_loop(self) -> None:
        from worker.context import get_context

        ctx = get_context()
        while not self.stop.wait(self.reconcile_every):
            self.pg.sample()
            self.reconcile_ms.append(reconcile_seconds_of(ctx) * 1000)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.pg.sample()


def reconcile_seconds_of(ctx: Any) -> float:
    from worker.control import reconciler

    started = time.perf_counter()
    reconciler.reconcile(ctx)
    return time.perf_counter() - started


def consumers(vhost: str, queue: str) -> int:
    """Consumers of ``queue`` (rabbitmqctl): a started worker consumes it once it is ready."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "-p",
            vhost,
            "--quiet",
            "--no-table-headers",
            "name",
            "consumers",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)
    return int(found.get(queue, 0))


WORKER_ENV: dict[str, str] = {}  # --worker-env: settings of the simulated workers only


def start_gpu(
    stack: Stack, workers: int, shard_seconds: float, timings: Path, pool: int = 8
) -> None:
    """The simulated GPU workers: one Celery worker, ``workers`` threads."""
    log = stack.log_dir / "gpu.log"
    stack.spawn(
        "gpu",
        "-m",
        "celery",
        "-A",
        "bench.scale_worker",
        "worker",
        "-Q",
        "gpu",
        "-P",
        "threads",
        "-c",
        str(workers),
        "-n",
        f"gpu-sim-{workers}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "WARNING",
        env={
            "BENCH_SHARD_SECONDS": str(shard_seconds),
            "BENCH_TIMINGS": str(timings),
            # the simulated workers share one pool, as GPU workers share a PgBouncer
            "BARGE_DATABASE_POOL_SIZE": str(pool),
            "BARGE_DATABASE_MAX_OVERFLOW": "0",
            **WORKER_ENV,
        },
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if consumers(stack.run, "gpu") > 0:
            return
        time.sleep(1.0)
    raise RuntimeError(f"simulated workers not ready; see {log}")


def submit(api: Any, stack: Stack, name: str, records: int, jobs: int) -> list[str]:
    """``jobs`` jobs of one record per shard, ``records`` records in all."""
    ids = []
    per_job = max(1, records // jobs)
    for j in range(jobs):
        key = f"in/{name}-{j}.jsonl"
        body = "".join(json.dumps({"id": i, "text": "x"}) + "\n" for i in range(per_job))
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
        spec = {
            "type": "inference",
            "model": f"s3://{BUCKET}/model/",
            "task": "embed",
            "input": f"s3://{BUCKET}/{key}",
            "output": f"s3://{BUCKET}/out/{name}-{j}/",
            "shard_size": 1,
        }
        ids.append(api.post("/v1/jobs", json=spec).raise_for_status().json()["id"])
    return ids


def wait_finished(api: Any, ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's final status (with its error, if any), or its status at the timeout."""
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        jobs = [api.get(f"/v1/jobs/{i}").json() for i in ids]
        statuses = {j["id"]: f"{j['status']} {j.get('error') or ''}".strip() for j in jobs}
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            break
        time.sleep(1.0)
    return statuses


def read_timings(path: Path) -> tuple[list[float], int, dict[str, int]]:
    """(claim latencies in ms, claims that found nothing, outcomes) of a run's timings file."""
    claims: list[float] = []
    empty = 0
    outcomes: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "claim":
            claims.append(float(parts[1]))
            empty += parts[2] == "0"
        elif parts[0] == "run":
            outcomes[parts[1]] = outcomes.get(parts[1], 0) + 1
    return claims, empty, outcomes


def shard_span(stack: Stack, ids: list[str]) -> tuple[int, float]:
    """(shards succeeded, seconds from the first claim to the last settle) of jobs ``ids``."""
    rows = sql(
        stack,
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM shards"
        " WHERE status = 'succeeded' AND job_id = ANY(CAST(:ids AS uuid[]))",
        ids=ids,
    )
    return int(rows[0][0]), float(rows[0][1] or 0.0)


def idle(stack: Stack, seconds: float = 10.0) -> dict[str, Any]:
    """Transactions per second with no work: the scheduler's passes, the bench's own list
    requests and reconciler passes (what every run's figures include)."""
    before = xacts(stack)
    sampler = Sampler(stack, [])
    time.sleep(seconds)
    sampler.finish()
    return {"idle_xact_per_s": round((xacts(stack) - before) / seconds, 1), "load": load()}


def run_workers(
    stack: Stack, events: Events, workers: int, shard_seconds: float, args: Any
) -> dict[str, Any]:
    """One configuration: ``workers`` simulated workers, ``args.rounds`` shards each."""
    name = f"w{workers}-t{shard_seconds:g}"
    timings = stack.log_dir / f"timings-{name}.log"
    start_gpu(stack, workers, shard_seconds, timings)
    api = stack.client()
    cpu0 = {name: tree_cpu(stack.procs[name].pid) for name in ("api", "control", "gpu")}
    xact0, ev0 = xacts(stack), events.snapshot()
    ids = submit(api, stack, name, workers * args.rounds, min(args.jobs, workers * args.rounds))
    sampler = Sampler(stack, ids)
    started = time.monotonic()
    statuses = wait_finished(api, ids, args.rounds * shard_seconds * 10 + 300)
    elapsed = time.monotonic() - started
    sampler.finish()
    cpu = {name: tree_cpu(stack.procs[name].pid) - cpu0[name] for name in cpu0}
    xact, ev1 = xacts(stack) - xact0, events.snapshot()
    stack.stop_proc("gpu")
    settled, span = shard_span(stack, ids)
    claims, empty, outcomes = read_timings(timings)
    ideal = workers / shard_seconds
    messages = {k: v - ev0.get(k, 0) for k, v in ev1.items() if v - ev0.get(k, 0)}
    rate = settled / span if span else 0.0
    return {
        "workers": workers,
        "shard_seconds": shard_seconds,
        "jobs": len(ids),
        "statuses": sorted(set(statuses.values())),
        "shards_settled": settled,
        "settled_per_s": round(rate, 2),
        "ideal_per_s": round(ideal, 2),
        "of_ideal": round(rate / ideal, 3),
        "claim_ms_p50": round(pct(claims, 0.5), 1),
        "claim_ms_p99": round(pct(claims, 0.99), 1),
        "claims_empty": empty,
        "outcomes": outcomes,
        "db_xact_per_s": round(xact / elapsed, 1),
        "db_xact_per_shard": round(xact / max(1, settled), 1),
        "task_messages_per_shard": round(
            sum(v for k, v in messages.items() if k.startswith("sent ")) / max(1, settled), 2
        ),
        "event_messages_per_shard": round(messages.get("events", 0) / max(1, settled), 2),
        "reconcile_ms_max": round(max(sampler.reconcile_ms, default=0.0), 1),
        "get_job_ms_p50_p99": [round(pct(sampler.get_ms, q), 1) for q in (0.5, 0.99)],
        "list_jobs_ms_p50_p99": [round(pct(sampler.list_ms, q), 1) for q in (0.5, 0.99)],
        "api_cpu_pct": round(100 * cpu["api"] / elapsed, 1),
        "control_cpu_pct": round(100 * cpu["control"] / elapsed, 1),
        "sim_workers_cpu_pct": round(100 * cpu["gpu"] / elapsed, 1),
        "pg_cpu_pct": round(100 * sampler.pg.used() / elapsed, 1),
        "elapsed_s": round(elapsed, 1),
        "load": load(),
    }


SPEC_SQL = (
    """json_build_object('type', 'inference', 'model', 's3://bench/model/', 'task', 'embed',"""
    """ 'input', 's3://bench/in/backlog.jsonl', 'output', 's3://bench/out/' || j.id || '/',"""
    """ 'shard_size', 1)"""
)


def insert_tenants(stack: Stack, tenants: int) -> None:
    sql(
        stack,
        "INSERT INTO tenants (id, name, created_at, quotas) SELECT gen_random_uuid(),"
        " 'load-' || t, now(), '{}' FROM generate_series(1, :n) t ON CONFLICT DO NOTHING",
        n=tenants,
    )


def insert_jobs(stack: Stack, jobs: int, status: str, spread_days: float = 0.0) -> None:
    """``jobs`` jobs spread over the load tenants, created over the last ``spread_days``, with
    one event each (their creation)."""
    finished = "NULL" if status == "running" else "now()"
    sql(
        stack,
        f"""
        WITH t AS (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM tenants
                   WHERE name LIKE 'load-%%'),
        nt AS (SELECT count(*) AS c FROM t),
        j AS (SELECT gen_random_uuid() AS id, g FROM generate_series(1, :jobs) g),
        ins AS (
            INSERT INTO jobs (id, tenant_id, type, status, spec, metadata, output_uri,
                              created_at, updated_at, started_at, finished_at, shards_total,
                              records_total, plan_attempts)
            SELECT j.id, t.id, 'inference', :status, {SPEC_SQL}, '{{}}',
                   's3://bench/out/' || j.id || '/',
                   now() - make_interval(secs => (:spread * 86400.0 * j.g / :jobs)),
                   now(), now(), {finished}, 0, 0, 1
            FROM j, nt, t WHERE t.n = j.g % nt.c
            RETURNING id, created_at, status
        )
        INSERT INTO job_events (job_id, at, kind, to_status, message, data)
        SELECT id, created_at, 'status', status, 'job ' || status, '{{}}' FROM ins
        """.replace("%%", "%"),
        jobs=jobs,
        status=status,
        spread=spread_days,
    )


def insert_backlog(stack: Stack, per_job: int) -> None:
    """``per_job`` pending one-record shards for every running job of the load tenants."""
    sql(
        stack,
        """
        INSERT INTO shards (id, job_id, index, status, source_uri, source_etag, input_format,
                            compressed, start_record, record_count, record_offset, first_line,
                            attempt, handoffs, records_succeeded, records_failed, steps_done,
                            tokens_out)
        SELECT gen_random_uuid(), j.id, i, 'pending', 's3://bench/in/backlog.jsonl', '',
               'jsonl', false, i, 1, i, i + 1, 0, 0, 0, 0, 0, 0
        FROM jobs j, generate_series(0, :n - 1) i
        WHERE j.status = 'running'
        """,
        n=per_job,
    )
    sql(
        stack,
        "UPDATE jobs SET shards_total = :n, records_total = :n WHERE status = 'running'",
        n=per_job,
    )
    sql(stack, "ANALYZE")


def publish_backlog(stack: Stack) -> float:
    """A message per pending shard on the gpu queue, as the planner sends them (stamped as
    dispatched now), through one producer without publisher confirms; seconds it took."""
    from barge.queue import GPU_QUEUE, RUN_SHARD, make_celery
    from barge.settings import get_settings

    started = time.perf_counter()
    rows = sql(
        stack,
        "UPDATE shards SET dispatched_at = now() WHERE status = 'pending'"
        " RETURNING id, job_id, index",
    )
    app = make_celery(get_settings())
    app.conf.broker_transport_options = {}  # no confirm per message: a bulk load
    with app.producer_or_acquire() as producer:
        for shard_id, job_id, index in rows:
            app.send_task(
                RUN_SHARD,
                args=[str(shard_id), str(job_id), index],
                queue=GPU_QUEUE,
                producer=producer,
            )
    return time.perf_counter() - started


def run_backlog(stack: Stack, args: Any) -> dict[str, Any]:
    """The backlog, the simulated workers busy on it, then one small job of another tenant."""
    body = "".join(json.dumps({"id": i, "text": "x"}) + "\n" for i in range(args.shards_per_job))
    stack.s3.put_object(Bucket=BUCKET, Key="in/backlog.jsonl", Body=body.encode())
    insert_tenants(stack, args.tenants)
    started = time.perf_counter()
    insert_jobs(stack, args.jobs, "running")
    insert_backlog(stack, args.shards_per_job)
    inserted = time.perf_counter() - started
    published = publish_backlog(stack) if args.messages else 0.0
    from worker.context import get_context

    ctx = get_context()
    passes = [reconcile_seconds_of(ctx) * 1000 for _ in range(3)]  # the first re-sends
    start_gpu(stack, args.workers, args.shard_seconds, stack.log_dir / "timings-backlog.log")
    time.sleep(args.warm_seconds)  # every simulated worker busy on the backlog
    passes += [reconcile_seconds_of(ctx) * 1000 for _ in range(3)]
    api = stack.client("small-tenant")
    ids = submit(api, stack, "small", 1, 1)
    submitted = time.monotonic()
    statuses = wait_finished_fast(api, ids[0], 120)
    small_s = time.monotonic() - submitted
    pending = sql(stack, "SELECT count(*) FROM shards WHERE status = 'pending'")[0][0]
    stack.stop_proc("gpu")
    return {
        "backlog_shards": args.jobs * args.shards_per_job,
        "jobs": args.jobs,
        "tenants": args.tenants,
        "workers": args.workers,
        "shard_seconds": args.shard_seconds,
        "insert_s": round(inserted, 1),
        "publish_s": round(published, 1),
        "small_job_status": statuses,
        "small_job_s": round(small_s, 2),
        "reconcile_ms": [round(p, 1) for p in passes],
        "pending_after": int(pending),
        "load": load(),
    }


def wait_finished_fast(api: Any, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = api.get(f"/v1/jobs/{job_id}").json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    return status


def run_jobs_table(stack: Stack, args: Any) -> dict[str, Any]:
    """A jobs table of ``args.jobs`` rows (with an event each); one tenant's list, first page
    and cursor pages, and one job's page."""
    insert_tenants(stack, args.tenants)
    started = time.perf_counter()
    for _ in range(max(1, args.jobs // 100_000)):  # in chunks: one statement's memory bounded
        insert_jobs(stack, min(args.jobs, 100_000), "succeeded", spread_days=30)
    sql(stack, "ANALYZE")
    inserted = time.perf_counter() - started
    api = stack.client("load-1")
    first: list[float] = []
    pages: list[float] = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        body = api.get("/v1/jobs", params={"limit": 50}).raise_for_status().json()
        first.append((time.perf_counter() - t0) * 1000)
        cursor = body.get("next_cursor")
        for _page in range(3):
            if not cursor:
                break
            t0 = time.perf_counter()
            body = api.get("/v1/jobs", params={"limit": 50, "cursor": cursor}).json()
            pages.append((time.perf_counter() - t0) * 1000)
            cursor = body.get("next_cursor")
    job_id = body["jobs"][0]["id"]
    one = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        api.get(f"/v1/jobs/{job_id}").raise_for_status()
        one.append((time.perf_counter() - t0) * 1000)
    total = sql(stack, "SELECT count(*) FROM jobs")[0][0]
    plan = sql(
        stack,
        "EXPLAIN ANALYZE SELECT * FROM jobs WHERE tenant_id ="
        " (SELECT id FROM tenants WHERE name = 'load-1') ORDER BY created_at DESC, id DESC LIMIT 50",
    )
    return {
        "list_sql_plan": [row[0] for row in plan if "Index" in row[0] or "Execution" in row[0]],
        "jobs_rows": int(total),
        "tenants": args.tenants,
        "insert_s": round(inserted, 1),
        "list_first_ms_p50_p99": [round(pct(first, q), 1) for q in (0.5, 0.99)],
        "list_cursor_ms_p50_p99": [round(pct(pages, q), 1) for q in (0.5, 0.99)],
        "get_job_ms_p50_p99": [round(pct(one, q), 1) for q in (0.5, 0.99)],
        "load": load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/barge-bench-scale"))
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        help="KEY=VALUE settings of the simulated workers, e.g. BARGE_STATUS_CHECK_SECONDS=2",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("workers", help="simulated workers x shard times")
    w.add_argument("--workers", type=int, nargs="+", default=[100, 300, 1000])
    w.add_argument("--shard-seconds", type=float, nargs="+", default=[1.0, 10.0])
    w.add_argument("--rounds", type=int, default=3, help="shards per simulated worker")
    w.add_argument("--jobs", type=int, default=10, help="jobs the shards are spread over")
    b = sub.add_parser("backlog", help="a backlog of pending shards; a small job of another tenant")
    b.add_argument("--jobs", type=int, default=1000)
    b.add_argument("--shards-per-job", type=int, default=100)
    b.add_argument("--tenants", type=int, default=50)
    b.add_argument("--workers", type=int, default=100)
    b.add_argument("--shard-seconds", type=float, default=1.0)
    b.add_argument("--warm-seconds", type=float, default=20.0)
    b.add_argument(
        "--no-messages",
        dest="messages",
        action="store_false",
        help="leave the backlog without messages (the reconciler re-sends them as lost)",
    )
    t = sub.add_parser("jobs-table", help="list latency over a large jobs table")
    t.add_argument("--jobs", type=int, default=1_000_000)
    t.add_argument("--tenants", type=int, default=50)
    t.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    WORKER_ENV.update({k: v for k, v in (item.split("=", 1) for item in args.worker_env)})
    args.log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(args.log_dir).start(reconcile_seconds=5.0)
    try:
        if args.what == "workers":
            events = Events()
            print(json.dumps(idle(stack)), flush=True)
            for shard_seconds in args.shard_seconds:
                for workers in args.workers:
                    print(
                        json.dumps(run_workers(stack, events, workers, shard_seconds, args)),
                        flush=True,
                    )
        elif args.what == "backlog":
            print(json.dumps(run_backlog(stack, args)), flush=True)
        else:
            print(json.dumps(run_jobs_table(stack, args)), flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
