"""The client commands of ``barge``: submit, status, list, cancel, retry, pause, resume, wait,
events, shards, drops, webhooks, models and top. They talk to the API over HTTP (``connect``: the
URL and key from the flags, the environment or a profile, see ``cli.profiles``) and never open
the database.

Every list and get prints through ``cli.output.emit`` (a table, ``-o wide``, ``-o json``,
``-o yaml``, ``-o name`` / ``-q``); tables go through ``cli.tables`` (boxed on a terminal,
plain lines in a pipe). Live views (``top``, ``wait``) redraw with ``rich.live`` on a terminal
and print line by line elsewhere.

Imports: ``cli.client``, ``cli.output``, ``cli.profiles``, ``cli.render``, ``cli.tables``,
``cli.live``, rich and the kernel (``barge``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.live import Live

from barge.status import CANCELLING, FINAL, PAUSED, PAUSING, QUEUED, RUNNING
from cli.client import ApiError, Client
from cli.errors import CliError
from cli.live import StopSignals
from cli.output import emit, output_format, to_yaml
from cli.profiles import resolve
from cli.render import (
    deliveries_table,
    drops_table,
    event_lines,
    final_report,
    job_details,
    job_summary,
    jobs_table,
    latest_train,
    model_versions,
    models_table,
    progress_line,
    progress_view,
    shards_table,
    to_json,
    top_view,
    webhooks_table,
)
from cli.tables import Item, fit, is_terminal, lines, show, terminal_console, terminal_view

TOP_STATUSES = (RUNNING, PAUSING, PAUSED, CANCELLING, QUEUED)
# The live view's limit per request (the one-off commands keep the client's 30 s): past it the
# view shows the error instead of a stale table, and tries again at the next refresh.
LIVE_TIMEOUT = 10.0


def _print_lines(text: Iterable[str], file: Any = None) -> None:
    for line in text:
        print(line, file=file)


def connect(args: argparse.Namespace, timeout: float = 30.0) -> Client:
    """A client of the API that ``args`` (``--api-url``, ``--profile``), the environment and
    the saved profiles point at (``cli.profiles.resolve``)."""
    conn = resolve(getattr(args, "api_url", None), getattr(args, "profile", None))
    return Client(conn.url, conn.key, timeout=timeout)


def load_spec(path: str) -> dict[str, Any]:
    """A job spec (or drop template) from a JSON or YAML file, or stdin for ``-``; a file that
    cannot be read or parsed is a ``CliError`` saying where (line and column)."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{name}: is a directory, not a spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{name}: cannot read it ({exc})") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise CliError(f"{name}: not valid YAML: {where}{problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{name}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
                + (" (name a .yaml/.yml file for YAML)" if path != "-" else "")
            ) from None
    if not isinstance(data, dict):
        raise CliError(f"{name}: a job spec must be a JSON/YAML object")
    return data


def resolve_job_id(client: Client, given: str, pages: int = 10) -> str:
    """A full job id for ``given``: itself when it is one, else the one job whose id starts
    with it (``top`` and ``list`` show 8 characters), looked up among the newest
    ``pages`` x 100 jobs."""
    prefix = given.strip().lower()
    if len(prefix) == 36:
        return prefix
    if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix):
        raise CliError(f"{given!r} is not a job id (or a prefix of one, at least 4 hex digits)")
    found: list[str] = []
    cursor = None
    for _ in range(pages):
        page = client.jobs(limit=100, cursor=cursor)
        found += [j["id"] for j in page["jobs"] if j["id"].startswith(prefix)]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if not found:
        raise CliError(f"no job id starts with {given!r}")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise CliError(f"{given!r} matches {len(found)} jobs ({shown}); give more of the id")
    return found[0]


def _polled(
    client: Client, job_id: str, interval: float
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The job every ``interval`` seconds until it ends (the final one last, as soon as it
    ends: each read waits on the server up to ``interval`` for the end), with the data of its
    latest ``train`` event (a fine-tune's loss and examples/s)."""
    after = 0
    train: dict[str, Any] | None = None
    while True:
        asked = time.monotonic()
        job = client.job(job_id, wait=interval)
        if job["type"] == "finetune":
            page = client.events(job_id, after)
            after = page["next_after"]
            train = latest_train(page["events"]) or train
        yield job, train
        if job["status"] in FINAL:
            return
        time.sleep(max(0.0, interval - (time.monotonic() - asked)))  # a server that never waits


def wait_for(client: Client, job_id: str, interval: float = 1.0, out: Any = None) -> dict[str, Any]:
    """Show the job's progress on ``out`` (stderr) until it ends; return the final job. On a
    terminal a live view (a progress bar) is redrawn in place; otherwise a line every 5 s and
    the last one. A fine-tune's line shows the loss and examples/s of its latest ``train``
    event."""
    out = out or sys.stderr
    job: dict[str, Any] = {}
    if is_terminal(out):
        console = terminal_console(out)
        with Live(
            console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        ) as live:
            for job, train in _polled(client, job_id, interval):
                live.update(progress_view(job, train=train), refresh=True)
        return job
    last_print = 0.0
    for job, train in _polled(client, job_id, interval):
        now = time.monotonic()
        if now - last_print >= 5 or job["status"] in FINAL:
            out.write(progress_line(job, train=train) + "\n")
            out.flush()
            last_print = now
    return job


def registered_model(client: Client, job: dict[str, Any]) -> dict[str, Any] | None:
    """The registry entry a fine-tune job registered, if any."""
    name = job["spec"].get("model_name")
    if job["type"] != "finetune" or not name or job["status"] != "succeeded":
        return None
    try:
        versions = client.models(name)["models"]
    except ApiError:
        return None
    return next((m for m in versions if m.get("job_id") == job["id"]), None)


def _report_final(job: dict[str, Any], client: Client | None = None) -> int:
    model = registered_model(client, job) if client is not None else None
    _print_lines(final_report(job, model), file=sys.stderr)
    return 0 if job["status"] == "succeeded" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)  # a bad file is reported before the API is asked anything
    client = connect(args)
    if args.dry_run:
        print(json.dumps(client.dry_run(spec), indent=2))
        return 0
    job = client.submit(spec, args.idempotency_key)
    print(job["id"])
    print(f"submitted job {job['id']} ({job['status']})", file=sys.stderr)
    if args.wait:
        return _report_final(wait_for(client, job["id"]), client)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = connect(args)
    job = client.job(resolve_job_id(client, args.id))
    emit(
        args,
        job,
        [job["id"]],
        lambda wide: [*job_summary(job), *(job_details(job) if wide else [])],
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = connect(args).jobs(
        status=args.status, type=args.type, limit=args.limit, cursor=args.cursor
    )
    emit(args, page, [j["id"] for j in page["jobs"]], lambda wide: jobs_table(page, wide))
    return 0


def _change(args: argparse.Namespace, action: str) -> int:
    """Cancel, pause or resume the job ``args.id`` names; its new status on stderr."""
    client = connect(args)
    job = getattr(client, action)(resolve_job_id(client, args.id))
    print(f"job {job['id']} is {job['status']}", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    return _change(args, "cancel")


def cmd_retry(args: argparse.Namespace) -> int:
    client = connect(args)
    given = {"batch_size": args.batch_size, "shard_size": args.shard_size, "model": args.model}
    parent = resolve_job_id(client, args.id)
    job = client.retry(parent, {k: v for k, v in given.items() if v is not None})
    print(job["id"])
    print(f"retry {job['id']} of job {parent} ({job['status']})", file=sys.stderr)
    if args.wait:
        return _report_final(wait_for(client, job["id"]), client)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _change(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return _change(args, "resume")


def cmd_wait(args: argparse.Namespace) -> int:
    client = connect(args)
    return _report_final(wait_for(client, resolve_job_id(client, args.id)), client)


def _event_lines(fmt: str | None, events: list[dict[str, Any]]) -> Iterable[str]:
    """A page of events as ``barge events`` prints it: JSON Lines for ``-o json`` (so that
    ``--follow`` can go on), a YAML list, the event ids, or a line per event."""
    if fmt == "json":
        return (json.dumps(e, default=str) for e in events)
    if fmt == "yaml":
        return [to_yaml(events).rstrip("\n")] if events else []
    if fmt == "name":
        return (str(e["id"]) for e in events)
    return event_lines(events)


def cmd_events(args: argparse.Namespace) -> int:
    client = connect(args)
    job_id = resolve_job_id(client, args.id)
    after = 0
    fmt = output_format(args)
    while True:
        page = client.events(job_id, after)
        _print_lines(_event_lines(fmt, page["events"]))
        after = page["next_after"]
        if not args.follow or (not page["events"] and client.job(job_id)["status"] in FINAL):
            return 0
        time.sleep(1)


def cmd_shards(args: argparse.Namespace) -> int:
    client = connect(args)
    shards = client.shards(resolve_job_id(client, args.id))["shards"]
    emit(args, shards, [s["index"] for s in shards], lambda wide: [shards_table(shards, wide)])
    return 0


def cmd_drops(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.drops == "add":
        rule = client.add_drop(args.name, args.prefix, load_spec(args.template))
        print(f"watching {rule['incoming']} → jobs; results in {rule['outputs']}", file=sys.stderr)
    elif args.drops == "remove":
        client.remove_drop(args.name)
        print(f"drop folder {args.name} removed", file=sys.stderr)
    else:
        rules = client.drops()["drops"]
        emit(args, rules, [r["name"] for r in rules], lambda wide: [drops_table(rules, wide)])
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.webhooks in ("create", "rotate"):
        made = (
            client.create_webhook(args.url, args.events)
            if args.webhooks == "create"
            else client.rotate_webhook(args.id)
        )
        print(made["secret"])
        print(
            f"webhook {made['id']} → {made['url']}: keep the secret above, it is not shown again",
            file=sys.stderr,
        )
    elif args.webhooks == "delete":
        client.delete_webhook(args.id)
        print(f"webhook {args.id} deleted", file=sys.stderr)
    elif args.webhooks == "deliveries":
        found = client.webhook_deliveries(args.id, args.limit)["deliveries"]
        emit(args, found, [d["id"] for d in found], lambda w: [deliveries_table(found, w)])
    else:
        hooks = client.webhooks()["webhooks"]
        emit(args, hooks, [h["id"] for h in hooks], lambda w: [webhooks_table(hooks, w)])
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.models == "register":
        model = client.register_model(args.name, args.uri, args.task)
        print(model["ref"])
        print(f"registered {model['ref']} → {model['uri']}", file=sys.stderr)
        return 0
    name = getattr(args, "name", None)
    models = client.models(name)["models"]

    def shown(wide: bool) -> list[Item]:
        return list(model_versions(models)) if name else [models_table(models, wide)]

    emit(args, models, [m["ref"] for m in models], shown)
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
    if args.json:
        jobs_by_status, workers = active_jobs(connect(args))
        print(to_json({"jobs": jobs_by_status, "workers": workers}))
        return 0
    if args.once:
        show(*top_view(*active_jobs(connect(args)), time.strftime("%H:%M:%S")))
        return 0
    client = connect(args, timeout=LIVE_TIMEOUT)  # a bad profile is reported before the view
    with StopSignals() as stop:  # before anything else: a signal from now on ends the view
        return watch_top(client, args.interval, stop)


def _top_items(client: Client, stop: StopSignals) -> list[Item] | None:
    """What ``top`` shows now: the table, or the API's error in its place; None when a stop
    signal came while fetching."""
    try:
        fetched = stop.run(lambda: active_jobs(client))
    except ApiError as exc:
        return [f"barge: {exc}"]
    return None if fetched is None else top_view(*fetched, time.strftime("%H:%M:%S"))


def watch_top(client: Client, interval: float, stop: StopSignals) -> int:
    """Redraw the table every ``interval`` seconds until a stop signal (or until nobody reads
    stdout any more); 0 either way. An API error is shown in place of the table and the view
    goes on: the API may come back. On a terminal rich redraws the table in place; elsewhere
    each refresh is written whole, followed by an empty line."""
    sys.stdout.flush()  # from here on stdout is written unbuffered, see cli.live
    if is_terminal(sys.stdout):
        return _watch_top_live(client, interval, stop)
    fd = sys.stdout.fileno()
    encoding = sys.stdout.encoding or "utf-8"
    while True:
        items = _top_items(client, stop)
        if items is None or stop.stopped:
            return 0
        screen = "\n".join(lines(*items)) + "\n\n"
        if not stop.write(fd, screen.encode(encoding, errors="replace")) or stop.wait(interval):
            return 0


def _watch_top_live(client: Client, interval: float, stop: StopSignals) -> int:
    """``watch_top`` on a terminal: a ``rich.live.Live`` redrawn after each fetch, from this
    thread only (no refresh thread), and left on the screen as it last was."""
    console = terminal_console(sys.stdout)
    with Live(
        console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
    ) as live:
        while True:
            items = _top_items(client, stop)
            if items is None or stop.stopped:
                return 0
            live.update(fit(console, terminal_view(*items)), refresh=True)
            if stop.wait(interval):
                return 0
