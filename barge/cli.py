"""The ``barge`` command: run the servers, manage keys, submit and watch jobs.

Server commands start processes by module name (``api.app``, ``worker.celery_app``), so this
shared package never imports the API or the worker itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from barge.client import ApiError, Client
from barge.settings import Settings, get_settings

FINAL = ("succeeded", "failed", "cancelled")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- servers ------------------------------------------------------------------------------------


def _celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]


def worker_argv(
    queues: str = "gpu,control", concurrency: int = 1, hostname: str | None = None
) -> list[str]:
    argv = _celery_argv(
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-Q",
        queues,
        "--without-gossip",
        "--without-mingle",
    )
    if hostname:
        argv += ["--hostname", hostname]
    return argv


def scheduler_argv() -> list[str]:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = (settings.home / "celerybeat-schedule").resolve()
    return _celery_argv("beat", "--loglevel", "INFO", "--schedule", str(schedule))


def flower_argv(address: str, port: int, purge_offline_workers: int) -> list[str]:
    # Not persistent: jobs live in Postgres, and Flower's state file would need a writable cwd.
    return _celery_argv(
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--purge_offline_workers={purge_offline_workers}",
        "--persistent=False",
    )


def flower_basic_auth(settings: Settings) -> str:
    """``user:password`` for Flower's ``FLOWER_BASIC_AUTH``; ValueError when it is unusable."""
    user, password = settings.flower_user, settings.flower_password
    if not password:
        raise ValueError(
            "BARGE_FLOWER_PASSWORD is not set; Flower never runs without authentication"
        )
    if not user or ":" in user:
        raise ValueError("BARGE_FLOWER_USER must be non-empty and must not contain ':'")
    if "," in user + password:
        # Flower splits FLOWER_BASIC_AUTH on commas into several user:password pairs.
        raise ValueError("BARGE_FLOWER_USER and BARGE_FLOWER_PASSWORD must not contain ','")
    return f"{user}:{password}"


def api_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.app:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def _host_port(args: argparse.Namespace) -> tuple[str, int]:
    settings = get_settings()
    return args.host or settings.api_host, args.port or settings.api_port


def cmd_api(args: argparse.Namespace) -> int:
    os.execv(sys.executable, api_argv(*_host_port(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    argv = worker_argv(args.queues, args.concurrency, args.hostname)
    os.execv(argv[0], argv)


def cmd_scheduler(_: argparse.Namespace) -> int:
    argv = scheduler_argv()
    os.execv(argv[0], argv)


def cmd_flower(args: argparse.Namespace) -> int:
    try:
        auth = flower_basic_auth(get_settings())
    except ValueError as exc:
        print(f"barge flower: {exc}", file=sys.stderr)
        return 2
    argv = flower_argv(args.address, args.port, args.purge_offline_workers)
    # The credentials go in the environment, not argv: `ps` shows every command line.
    os.execve(argv[0], argv, {**os.environ, "FLOWER_BASIC_AUTH": auth})


def db_upgrade() -> str:
    from db.migrate import upgrade  # the db package: fine for an admin command

    url = get_settings().resolved_database_url
    upgrade(url)
    return url


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    url = db_upgrade()
    print(f"database at {url.split('@')[-1]} is at the newest schema", file=sys.stderr)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from db import repositories
    from db.session import session_scope

    with session_scope(get_settings().resolved_database_url) as session:
        key = repositories.create_api_key(session, args.tenant)
    print(key)
    return 0


def start_stack(host: str, port: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """The embedded stack: api + worker + scheduler as child processes."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, argv in (
        ("api", api_argv(host, port)),
        ("worker", worker_argv()),
        ("scheduler", scheduler_argv()),
    ):
        log = (log_dir / f"{name}.log").open("ab")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop_stack(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def wait_healthy(client: Client, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a Barge process exited early (code {p.returncode}); see its log")
        try:
            last = client.health()
            if last.get("status") == "ok":
                return
        except ApiError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"the API did not become healthy within {timeout:.0f}s: {last}")


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    db_upgrade()
    log_dir = settings.home.resolve() / "logs"
    host, port = _host_port(args)
    procs = start_stack(host, port, log_dir)
    url = f"http://{host}:{port}"
    try:
        wait_healthy(Client(url, ""), procs)
        print(f"Barge is up: API {url} (docs {url}/docs), logs in {log_dir}", file=sys.stderr)
        print("create a key with `barge keys create --tenant NAME`; Ctrl-C stops", file=sys.stderr)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        print("a Barge process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_stack(procs)


# --- client commands ----------------------------------------------------------------------------


def load_spec(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a job spec must be a JSON/YAML object")
    return data


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(job: dict[str, Any], width: int = 24) -> str:
    p = job["progress"]
    done, total, unit = _done_total(p)
    frac = (done / total) if total else (1.0 if job["status"] in FINAL else 0.0)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    rate = p.get("records_per_second")
    failed = "" if unit == "steps" else f"  {p['records_failed']} failed"
    return (
        f"{job['status']:<10} [{bar}] {frac:6.1%}  {done}/{total if total is not None else '?'} "
        f"{unit}{failed}  {rate or 0:.1f} rec/s  ETA {_fmt_seconds(p.get('eta_seconds'))}"
    )


def _done_total(progress: dict[str, Any]) -> tuple[int, int | None, str]:
    """(done, total, unit): optimizer steps for a fine-tune, records otherwise."""
    if progress.get("steps_total") is not None:
        return progress.get("steps_done") or 0, progress["steps_total"], "steps"
    done = progress["records_succeeded"] + progress["records_failed"]
    return done, progress.get("records_total"), "records"


def wait_for(client: Client, job_id: str, interval: float = 1.0, out: Any = None) -> dict[str, Any]:
    out = out or sys.stderr
    tty = out.isatty()
    last_print = 0.0
    while True:
        job = client.job(job_id)
        line = progress_line(job)
        now = time.monotonic()
        if tty:
            out.write("\r" + line + "  ")
            out.flush()
        elif now - last_print >= 5 or job["status"] in FINAL:
            out.write(line + "\n")
            last_print = now
        if job["status"] in FINAL:
            if tty:
                out.write("\n")
            return job
        time.sleep(interval)


def _report_final(job: dict[str, Any]) -> int:
    print(f"job {job['id']} {job['status']}", file=sys.stderr)
    if job.get("error"):
        print(f"error: {job['error']}", file=sys.stderr)
    print(f"outputs: {job['output']['uri']}", file=sys.stderr)
    if job["output"].get("errors"):
        print(f"per-record errors: {job['output']['errors']}", file=sys.stderr)
    return 0 if job["status"] == "succeeded" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    client = Client()
    job = client.submit(load_spec(args.spec), args.idempotency_key)
    print(job["id"])
    print(f"submitted job {job['id']} ({job['status']})", file=sys.stderr)
    if args.wait:
        return _report_final(wait_for(client, job["id"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = Client().job(args.id)
    if args.json:
        _print_json(job)
    else:
        print(progress_line(job))
        if job.get("error"):
            print(f"error: {job['error']}")
        print(f"output: {job['output']['uri']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = Client().jobs(status=args.status, type=args.type, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(page)
        return 0
    print(f"{'ID':<36}  {'TYPE':<9}  {'STATUS':<10}  {'DONE':>15}  CREATED")
    for job in page["jobs"]:
        p = job["progress"]
        done = f"{p['records_succeeded'] + p['records_failed']}/{p['records_total'] or '?'}"
        print(
            f"{job['id']:<36}  {job['type']:<9}  {job['status']:<10}  {done:>15}  {job['created_at']}"
        )
    if page.get("next_cursor"):
        print(f"more: barge list --cursor {page['next_cursor']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = Client().cancel(args.id)
    print(f"job {job['id']} is {job['status']}", file=sys.stderr)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    client = Client()
    after = 0
    while True:
        page = client.events(args.id, after)
        for e in page["events"]:
            change = f" {e['from_status']} -> {e['to_status']}" if e["to_status"] else ""
            print(f"{e['at']}  {e['kind']:<12}{change}  {e['message']}")
        after = page["next_after"]
        if not args.follow or (not page["events"] and client.job(args.id)["status"] in FINAL):
            return 0
        time.sleep(1)


def cmd_shards(args: argparse.Namespace) -> int:
    shards = Client().shards(args.id)["shards"]
    if args.json:
        _print_json(shards)
        return 0
    print(f"{'#':>5}  {'STATUS':<10} {'ATT':>3}  {'RECORDS':>15}  {'WORKER':<28} LAST ERROR")
    for s in shards:
        done = f"{s['records_succeeded'] + s['records_failed']}/{s['record_count']}"
        print(
            f"{s['index']:>5}  {s['status']:<10} {s['attempt']:>3}  {done:>15}  "
            f"{(s['worker'] or '-'):<28} {s['last_error'] or ''}"
        )
    return 0


def cmd_drops(args: argparse.Namespace) -> int:
    client = Client()
    if args.drops == "add":
        rule = client.add_drop(args.name, args.prefix, load_spec(args.template))
        print(f"watching {rule['incoming']} → jobs; results in {rule['outputs']}", file=sys.stderr)
    elif args.drops == "remove":
        client.remove_drop(args.name)
        print(f"drop folder {args.name} removed", file=sys.stderr)
    else:
        for rule in client.drops()["drops"]:
            task = rule["template"].get("task", "?")
            print(f"{rule['name']:<24} {task:<9} {rule['incoming']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    client = Client()
    if args.models == "register":
        model = client.register_model(args.name, args.uri, args.task)
        print(model["ref"])
        print(f"registered {model['ref']} → {model['uri']}", file=sys.stderr)
        return 0
    models = client.models(getattr(args, "name", None))["models"]
    print(f"{'MODEL':<32} {'TASK':<9} {'CREATED':<20} URI")
    for m in models:
        print(f"{m['ref']:<32} {m['task']:<9} {m['created_at'][:19]:<20} {m['uri']}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    return _report_final(wait_for(Client(), args.id))


TOP_STATUSES = ("running", "cancelling", "queued")


def top_table(client: Client, limit: int = 100) -> str:
    """Active jobs (up to ``limit`` per status), one line each, with the workers running them."""
    lines = [
        f"{'ID':<8}  {'STATUS':<10}  {'DONE/TOTAL':>17}  {'FAILED':>7}  {'REC/S':>8}  "
        f"{'ETA':>7}  WORKERS"
    ]
    counts = []
    for status in TOP_STATUSES:
        jobs = client.jobs(status=status, limit=limit)["jobs"]
        counts.append(f"{len(jobs)} {status}")
        for job in jobs:
            p = job["progress"]
            n, total, unit = _done_total(p)
            done = f"{n}/{total or '?'}" + (" steps" if unit == "steps" else "")
            rate = f"{p['records_per_second']:.1f}" if p.get("records_per_second") else "--"
            workers: list[str] = []
            if status != "queued":
                shards = client.shards(job["id"])["shards"]
                workers = sorted({s["worker"] for s in shards if s["status"] == "running"} - {None})
            lines.append(
                f"{job['id'][:8]:<8}  {job['status']:<10}  {done:>17}  {p['records_failed']:>7}  "
                f"{rate:>8}  {_fmt_seconds(p.get('eta_seconds')):>7}  "
                f"{','.join(workers) or '-'}"
            )
    stamp = time.strftime("%H:%M:%S")
    return "\n".join([f"barge top  {stamp}  {', '.join(counts)}", *lines])


def cmd_top(args: argparse.Namespace) -> int:
    client = Client()
    if args.once:
        print(top_table(client))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                table = top_table(client)
            except ApiError as exc:  # keep watching: the API may come back
                table = f"barge: {exc}"
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # cursor home, clear screen
            sys.stdout.write(table + "\n" + ("" if tty else "\n"))
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from barge.demo import run_demo

    return run_demo(port=args.port, records=args.records)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, help_ in (
        ("up", cmd_up, "run the embedded stack (api + worker + scheduler)"),
        ("api", cmd_api, "run the HTTP API"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", default=None, help="default BARGE_API_HOST (127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="default BARGE_API_PORT (8000)")
        p.set_defaults(func=func)

    p = sub.add_parser("worker", help="run a worker (one per GPU; set CUDA_VISIBLE_DEVICES)")
    p.add_argument("--queues", default="gpu,control")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--hostname", default=None)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("scheduler", help="run the scheduler (Celery beat: reconciler)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser(
        "flower",
        help="run Flower, the Celery monitoring UI, behind basic auth (BARGE_FLOWER_PASSWORD)",
    )
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5555, help="listen port (default 5555)")
    p.add_argument(
        "--purge-offline-workers",
        type=int,
        default=600,
        metavar="SECONDS",
        help="drop a worker from the dashboard this long after it went offline (default 600)",
    )
    p.set_defaults(func=cmd_flower)

    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db", required=True
    )
    db.add_parser("upgrade", help="apply all migrations").set_defaults(func=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys", required=True)
    p = keys.add_parser("create", help="create a key; prints only the key")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_keys_create)

    p = sub.add_parser("submit", help="submit a job spec (JSON or YAML file, - for stdin)")
    p.add_argument("spec")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.add_argument("--idempotency-key", default=None)
    p.set_defaults(func=cmd_submit)

    for name, func, help_ in (
        ("status", cmd_status, "a job's status and progress"),
        ("cancel", cmd_cancel, "cancel a job"),
        ("wait", cmd_wait, "show live progress until the job ends"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("id")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("shards", help="each shard's status, attempts, worker and last error")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("events", help="a job's events")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=cmd_events)

    drops = sub.add_parser("drops", help="S3 drop folders").add_subparsers(
        dest="drops", required=True
    )
    p = drops.add_parser("add", help="watch PREFIX/incoming/: each new file becomes a job")
    p.add_argument("name")
    p.add_argument("--prefix", required=True, help="s3://bucket/path/")
    p.add_argument("--template", required=True, help="job spec without input/output (JSON/YAML)")
    p.set_defaults(func=cmd_drops)
    drops.add_parser("list", help="the drop folders").set_defaults(func=cmd_drops)
    p = drops.add_parser("remove", help="stop watching a drop folder")
    p.add_argument("name")
    p.set_defaults(func=cmd_drops)

    models = sub.add_parser("models", help="the model registry")
    models.set_defaults(func=cmd_models, models="list")
    msub = models.add_subparsers(dest="models")
    msub.add_parser("list", help="the newest version of each model").set_defaults(func=cmd_models)
    p = msub.add_parser("show", help="every version of a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_models)
    p = msub.add_parser("register", help="register a model directory as the next version")
    p.add_argument("name")
    p.add_argument(
        "--uri", required=True, help="s3://bucket/path/ of a Hugging Face model directory"
    )
    p.add_argument("--task", required=True, choices=["embed", "classify", "generate"])
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--type")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("top", help="a live table of running, cancelling and queued jobs")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("demo", help="run a real embedding job on the embedded stack")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--records", type=int, default=2000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ApiError as exc:
        print(f"barge: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"barge: invalid BARGE_ settings:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
