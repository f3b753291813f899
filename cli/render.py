"""How the ``barge`` command shows things: progress lines, durations, tables and reports.

Plain functions from API responses (dicts) to what is shown; no HTTP, no printing. A report is
an iterator of lines; a table is a rich ``Table`` made by ``cli.tables``, which prints it boxed
on a terminal and as plain aligned lines elsewhere.

Imports: ``cli.tables``, rich and the kernel (``barge``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from barge.status import FINAL, RUNNING
from cli.tables import STATUS_STYLES, Column, Item, status, table

_ID = Column("ID", no_wrap=True)
_STATUS = Column("STATUS", no_wrap=True)
_FAILED = Column("FAILED", justify="right", no_wrap=True)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _done_total(progress: dict[str, Any]) -> tuple[int, int | None, str]:
    """(done, total, unit): optimizer steps for a fine-tune, records otherwise."""
    if progress.get("steps_total") is not None:
        return progress.get("steps_done") or 0, progress["steps_total"], "steps"
    done = progress["records_succeeded"] + progress["records_failed"]
    return done, progress.get("records_total"), "records"


def _progress(job: dict[str, Any], train: dict[str, Any] | None) -> tuple[float, str]:
    """(the fraction done, the text after the bar) of a job's progress line."""
    p = job["progress"]
    done, total, unit = _done_total(p)
    frac = (done / total) if total else (1.0 if job["status"] in FINAL else 0.0)
    head = f"{frac:6.1%}  {done}/{total if total is not None else '?'} {unit}"
    if (
        job["status"] == RUNNING
        and done == 0
        and not p.get("records_failed")
        and not job.get("waiting")
    ):
        return frac, f"{head}  starting: loading the model"
    if unit == "steps":
        if train:
            tail = f"  loss {train.get('loss', 0):.4f}  {train.get('examples_per_second', 0):.1f} examples/s"
        else:
            tail = ""
        return frac, f"{head}{tail}  ETA {_fmt_seconds(p.get('eta_seconds'))}"
    rate = p.get("records_per_second")
    return frac, (
        f"{head}  {p['records_failed']} failed  {rate or 0:.1f} rec/s  "
        f"ETA {_fmt_seconds(p.get('eta_seconds'))}"
    )


def progress_line(job: dict[str, Any], width: int = 24, train: dict[str, Any] | None = None) -> str:
    """One line of progress: a bar, what is done of how much, failures and the rate. A
    fine-tune counts optimizer steps, with the loss and examples/s of its latest ``train``
    event (``train``: that event's data); a job that has started but done nothing yet is
    loading its model, not running at 0.0 rec/s."""
    frac, rest = _progress(job, train)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    return f"{job['status']:<10} [{bar}] {rest}"


def progress_view(
    job: dict[str, Any], width: int = 24, train: dict[str, Any] | None = None
) -> Table:
    """``progress_line`` for a terminal (``barge wait``'s live view): the status in colour and
    a rich progress bar."""
    frac, rest = _progress(job, train)
    view = Table.grid(padding=(0, 1))
    view.add_row(
        Text(f"{job['status']:<10}", style=STATUS_STYLES.get(job["status"], "")),
        ProgressBar(total=1.0, completed=frac, width=width),
        Text(rest),
    )
    return view


def latest_train(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The data of the last ``train`` event among ``events`` (loss, examples/s), if any."""
    found = None
    for e in events:
        if e.get("kind") == "train" and isinstance(e.get("data"), dict):
            found = e["data"]
    return found


def job_summary(job: dict[str, Any]) -> Iterator[str]:
    """``barge status``: the progress line, what the job waits for and the error if any, where
    the outputs go."""
    yield progress_line(job)
    if job.get("waiting"):
        yield str(job["waiting"])
    if job.get("error"):
        yield f"error: {job['error']}"
    yield f"output: {job['output']['uri']}"


def job_details(job: dict[str, Any]) -> Iterator[str]:
    """``barge status -o wide``: what ``job_summary`` shows, then the job's type, task, model,
    input, times and metadata."""
    spec = job.get("spec") or {}
    yield f"id: {job['id']}"
    yield f"type: {job['type']}  task: {spec.get('task') or '-'}  model: {_model_of(job)}"
    for name in ("input", "train", "validation"):
        if spec.get(name):
            yield f"{name}: {spec[name]}"
    p = job["progress"]
    yield (
        f"records: {p['records_succeeded']} succeeded, {p['records_failed']} failed"
        f" of {p['records_total'] if p['records_total'] is not None else '?'}"
    )
    if job["output"].get("errors"):
        yield f"errors: {job['output']['errors']}"
    for name in ("created_at", "started_at", "finished_at"):
        yield f"{name.replace('_at', '')}: {job.get(name) or '-'}"
    if job.get("metadata"):
        yield f"metadata: {json.dumps(job['metadata'])}"


def final_report(job: dict[str, Any], model: dict[str, Any] | None = None) -> Iterator[str]:
    """What a finished job left: its status, its error, its outputs and per-record errors; for
    a fine-tune, the model it registered (``model``: its registry entry) and its metrics."""
    yield f"job {job['id']} {job['status']}"
    if job.get("error"):
        yield f"error: {job['error']}"
    if model is not None:
        yield f"registered: {model['ref']}  ({model['uri']})"
        for key, value in sorted((model.get("metrics") or {}).items()):
            if not isinstance(value, dict | list):
                yield f"  {key}: {value}"
    yield f"outputs: {job['output']['uri']}"
    if job["output"].get("errors"):
        yield f"per-record errors: {job['output']['errors']}"


def _model_of(job: dict[str, Any]) -> str:
    spec = job.get("spec") or {}
    return str(spec.get("base_model" if job["type"] == "finetune" else "model") or "-")


def jobs_table(page: dict[str, Any], wide: bool = False) -> list[Item]:
    """``barge list``: one row per job (the full id), then how to get the next page. ``wide``
    adds the failed records, the task, the model and when it started and finished."""
    rows = []
    for job in page["jobs"]:
        n, total, unit = _done_total(job["progress"])
        done = f"{n}/{total if total is not None else '?'} {unit}"
        row = [job["id"], job["type"], status(job["status"]), done, job["created_at"]]
        if wide:
            row += [
                str(job["progress"]["records_failed"]),
                str((job.get("spec") or {}).get("task") or "-"),
                _model_of(job),
                job.get("started_at") or "-",
                job.get("finished_at") or "-",
            ]
        rows.append(row)
    columns: list[Column | str] = [
        _ID,
        "TYPE",
        _STATUS,
        Column("DONE", justify="right", no_wrap=True),
        "CREATED",
    ]
    if wide:
        columns += [_FAILED, "TASK", "MODEL", "STARTED", "FINISHED"]
    shown: list[Item] = [table(columns, rows)]
    if page.get("next_cursor"):
        shown.append(f"more: barge list --cursor {page['next_cursor']}")
    return shown


def event_lines(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    for e in events:
        change = f" {e['from_status']} -> {e['to_status']}" if e["to_status"] else ""
        yield f"{e['at']}  {e['kind']:<12}{change}  {e['message']}"


def _shard_row(s: dict[str, Any], wide: bool) -> list[str | Text]:
    row: list[str | Text] = [
        str(s["index"]),
        status(s["status"]),
        str(s["attempt"]),
        f"{s['records_succeeded'] + s['records_failed']}/{s['record_count']}",
        str(s["records_failed"]),
        s["worker"] or "-",
    ]
    if wide:
        first = s["start_record"]
        source, span = (
            s["source"],
            (f"{first}-{first + s['record_count'] - 1}" if s["record_count"] else "-"),
        )
        if s.get("objects") is not None:  # a packed shard: whole objects, first to last
            source = f"{s['objects']} objects {s['first_source']} to {s['last_source']}"
            span = "all"
        row += [
            source,
            span,
            s.get("started_at") or "-",
            s.get("finished_at") or "-",
        ]
    return [*row, s["last_error"] or ""]


def shards_table(shards: Iterable[dict[str, Any]], wide: bool = False) -> Table:
    """``barge shards``: per shard its status, attempt, the records done of its own (failed
    ones included) and how many of them failed, its worker and last error. ``wide`` adds its
    source (a packed shard's: its objects, first to last), its range of records (``all`` of a
    packed shard's objects) and when it started and finished."""
    columns: list[Column | str] = [
        Column("#", justify="right", no_wrap=True),
        _STATUS,
        Column("ATT", justify="right", no_wrap=True),
        Column("RECORDS", justify="right", no_wrap=True),
        _FAILED,
        Column("WORKER", no_wrap=True),
    ]
    if wide:
        columns += ["SOURCE", Column("RANGE", no_wrap=True), "STARTED", "FINISHED"]
    return table([*columns, "LAST ERROR"], (_shard_row(s, wide) for s in shards))


def drops_table(rules: Iterable[dict[str, Any]], wide: bool = False) -> Table:
    """``barge drops list``; ``wide`` adds where results go and the template's model."""
    columns: list[Column | str] = [Column("NAME", no_wrap=True), "TASK", "INCOMING"]
    if wide:
        columns += ["OUTPUTS", "MODEL"]
    rows = []
    for r in rules:
        row = [r["name"], r["template"].get("task", "?"), r["incoming"]]
        if wide:
            row += [r.get("outputs") or "-", str(r["template"].get("model") or "-")]
        rows.append(row)
    return table(columns, rows)


def webhooks_table(hooks: Iterable[dict[str, Any]], wide: bool = False) -> Table:
    """``barge webhooks list``; ``wide`` adds when each was made and its secret last rotated."""
    columns: list[Column | str] = [Column("ID", no_wrap=True), "URL", "EVENTS"]
    if wide:
        columns += ["CREATED", "ROTATED"]
    rows = []
    for h in hooks:
        row = [h["id"], h["url"], ", ".join(h["events"])]
        if wide:
            row += [h["created_at"][:19], (h.get("rotated_at") or "-")[:19]]
        rows.append(row)
    return table(columns, rows)


def deliveries_table(deliveries: Iterable[dict[str, Any]], wide: bool = False) -> Table:
    """``barge webhooks deliveries``; ``wide`` adds the event's id and the last answer."""
    columns: list[Column | str] = [
        Column("ID", no_wrap=True),
        "TYPE",
        "STATUS",
        "ATTEMPTS",
        "CODE",
        "CREATED",
    ]
    if wide:
        columns += ["EVENT", "LAST ANSWER"]
    rows = []
    for d in deliveries:
        code = d.get("last_status_code")
        row = [d["id"], d["type"], d["status"], str(d["attempts"]), str(code or "-")]
        row.append(d["created_at"][:19])
        if wide:
            last = (d.get("attempt_log") or [{}])[-1]
            answer = last.get("error") or last.get("response") or "-"
            row += [d["event_id"], answer[:60]]
        rows.append(row)
    return table(columns, rows)


def model_versions(models: Iterable[dict[str, Any]]) -> Iterator[str]:
    """``barge models show NAME``: every version with what the API has about it."""
    for m in models:
        yield f"{m['ref']}  {m['task']}  {m['created_at'][:19]}"
        yield f"  uri: {m['uri']}"
        if m.get("base_model"):
            yield f"  base model: {m['base_model']}"
        if m.get("job_id"):
            yield f"  fine-tune job: {m['job_id']}"
        for key, value in sorted((m.get("metrics") or {}).items()):
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            yield f"  {key}: {shown}"


def models_table(models: Iterable[dict[str, Any]], wide: bool = False) -> Table:
    """``barge models list``; ``wide`` adds the base model and the fine-tune job."""
    columns: list[Column | str] = [
        Column("MODEL", no_wrap=True),
        "TASK",
        Column("CREATED", no_wrap=True),
        "URI",
    ]
    if wide:
        columns += ["BASE MODEL", Column("JOB", no_wrap=True)]
    rows = []
    for m in models:
        row = [m["ref"], m["task"], m["created_at"][:19], m["uri"]]
        if wide:
            row += [m.get("base_model") or "-", m.get("job_id") or "-"]
        rows.append(row)
    return table(columns, rows)


def top_view(
    jobs_by_status: Mapping[str, Sequence[dict[str, Any]]],
    workers: Mapping[str, Sequence[str]],
    at: str,
) -> list[Item]:
    """``barge top``: a title with the count per status, then one row per job (the first 8
    characters of its id, a prefix every command takes) with the workers running its shards
    (``workers`` by job id; a job missing from it shows ``-``), followed by what the job waits
    for, if it waits."""
    rows = []
    for jobs in jobs_by_status.values():
        for job in jobs:
            p = job["progress"]
            n, total, unit = _done_total(p)
            done = f"{n}/{total or '?'}" + (" steps" if unit == "steps" else "")
            rate = f"{p['records_per_second']:.1f}" if p.get("records_per_second") else "--"
            rows.append(
                [
                    job["id"][:8],
                    status(job["status"]),
                    done,
                    str(p["records_failed"]),
                    rate,
                    _fmt_seconds(p.get("eta_seconds")),
                    (",".join(workers.get(job["id"], ())) or "-")
                    + (f"  ({job['waiting']})" if job.get("waiting") else ""),
                ]
            )
    counts = ", ".join(f"{len(jobs)} {name}" for name, jobs in jobs_by_status.items())
    columns: list[Column | str] = [
        _ID,
        _STATUS,
        *(Column(name, justify="right", no_wrap=True) for name in ("DONE/TOTAL", "FAILED")),
        *(Column(name, justify="right", no_wrap=True) for name in ("REC/S", "ETA")),
        "WORKERS",
    ]
    return [Text(f"barge top  {at}  {counts}", style="bold"), table(columns, rows)]
