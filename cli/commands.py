"""The client commands of ``barge``: submit, status, list, cancel, wait, events, shards, drops,
models and top. They talk to the API over HTTP with the key in ``BARGE_API_KEY`` and never open
the database.

Imports: ``cli.client``, ``cli.render``, ``cli.live`` and the kernel (``barge``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from barge.status import CANCELLING, FINAL, QUEUED, RUNNING
from cli.client import ApiError, Client
from cli.live import StopSignals
from cli.render import (
    drops_table,
    event_lines,
    final_report,
    job_summary,
    jobs_table,
    models_table,
    progress_line,
    shards_table,
    to_json,
    top_table,
)

TOP_STATUSES = (RUNNING, CANCELLING, QUEUED)
# The live view's limit per request (the one-off commands keep the client's 30 s): past it the
# view shows the error instead of a stale table, and tries again at the next refresh.
LIVE_TIMEOUT = 10.0


def _print_lines(lines: Iterable[str], file: Any = None) -> None:
    for line in lines:
        print(line, file=file)


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


def wait_for(client: Client, job_id: str, interval: float = 1.0, out: Any = None) -> dict[str, Any]:
    """Show the job's progress on ``out`` (stderr) until it ends; return the final job. On a
    terminal one line is redrawn; otherwise a line every 5 s and the last one."""
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
    _print_lines(final_report(job), file=sys.stderr)
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
    _print_lines([to_json(job)] if args.json else job_summary(job))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = Client().jobs(status=args.status, type=args.type, limit=args.limit, cursor=args.cursor)
    _print_lines([to_json(page)] if args.json else jobs_table(page))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = Client().cancel(args.id)
    print(f"job {job['id']} is {job['status']}", file=sys.stderr)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    return _report_final(wait_for(Client(), args.id))


def cmd_events(args: argparse.Namespace) -> int:
    client = Client()
    after = 0
    while True:
        page = client.events(args.id, after)
        _print_lines(event_lines(page["events"]))
        after = page["next_after"]
        if not args.follow or (not page["events"] and client.job(args.id)["status"] in FINAL):
            return 0
        time.sleep(1)


def cmd_shards(args: argparse.Namespace) -> int:
    shards = Client().shards(args.id)["shards"]
    _print_lines([to_json(shards)] if args.json else shards_table(shards))
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
        _print_lines(drops_table(client.drops()["drops"]))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    client = Client()
    if args.models == "register":
        model = client.register_model(args.name, args.uri, args.task)
        print(model["ref"])
        print(f"registered {model['ref']} → {model['uri']}", file=sys.stderr)
        return 0
    _print_lines(models_table(client.models(getattr(args, "name", None))["models"]))
    return 0


# --- top ----------------------------------------------------------------------------------------


def active_jobs(
    client: Client, limit: int = 100
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """The active jobs (up to ``limit`` per status, running first) and, for each running or
    cancelling one, the workers holding its running shards."""
    jobs_by_status: dict[str, list[dict[str, Any]]] = {}
    workers: dict[str, list[str]] = {}
    for status in TOP_STATUSES:
        jobs_by_status[status] = jobs = client.jobs(status=status, limit=limit)["jobs"]
        for job in jobs:
            if status == QUEUED:
                continue
            shards = client.shards(job["id"])["shards"]
            workers[job["id"]] = sorted(
                {s["worker"] for s in shards if s["status"] == RUNNING} - {None}
            )
    return jobs_by_status, workers


def cmd_top(args: argparse.Namespace) -> int:
    if args.once:
        print(top_table(*active_jobs(Client()), time.strftime("%H:%M:%S")))
        return 0
    with StopSignals() as stop:  # before anything else: a signal from now on ends the view
        return watch_top(Client(timeout=LIVE_TIMEOUT), args.interval, stop)


def watch_top(client: Client, interval: float, stop: StopSignals) -> int:
    """Redraw the table every ``interval`` seconds until a stop signal (or until nobody reads
    stdout any more); 0 either way. An API error is shown in place of the table and the view
    goes on: the API may come back."""
    sys.stdout.flush()  # from here on stdout is written unbuffered, see cli.live
    fd = sys.stdout.fileno()
    tty = os.isatty(fd)
    encoding = sys.stdout.encoding or "utf-8"
    while True:
        try:
            fetched = stop.run(lambda: active_jobs(client))
        except ApiError as exc:
            table = f"barge: {exc}"
        else:
            if fetched is None:  # stopped while fetching
                return 0
            table = top_table(*fetched, time.strftime("%H:%M:%S"))
        if stop.stopped:
            return 0
        screen = ("\x1b[H\x1b[2J" if tty else "") + table + "\n" + ("" if tty else "\n")
        if not stop.write(fd, screen.encode(encoding, errors="replace")) or stop.wait(interval):
            return 0
