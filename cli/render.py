"""How the ``barge`` command shows things: progress lines, durations, tables and reports.

Plain functions from API responses (dicts) to text; no HTTP, no printing. A table is an iterator
of lines, so that a command prints nothing at all when there is nothing to show.

Imports: the kernel (``barge``) only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from barge.status import FINAL, RUNNING


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


def progress_line(job: dict[str, Any], width: int = 24, train: dict[str, Any] | None = None) -> str:
    """One line of progress: a bar, what is done of how much, failures and the rate. A
    fine-tune counts optimizer steps, with the loss and examples/s of its latest ``train``
    event (``train``: that event's data); a job that has started but done nothing yet is
    loading its model, not running at 0.0 rec/s."""
    p = job["progress"]
    done, total, unit = _done_total(p)
    frac = (done / total) if total else (1.0 if job["status"] in FINAL else 0.0)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    head = (
        f"{job['status']:<10} [{bar}] {frac:6.1%}  {done}/{total if total is not None else '?'} "
        f"{unit}"
    )
    if (
        job["status"] == RUNNING
        and done == 0
        and not p.get("records_failed")
        and not job.get("waiting")
    ):
        return f"{head}  starting: loading the model"
    if unit == "steps":
        if train:
            tail = f"  loss {train.get('loss', 0):.4f}  {train.get('examples_per_second', 0):.1f} examples/s"
        else:
            tail = ""
        return f"{head}{tail}  ETA {_fmt_seconds(p.get('eta_seconds'))}"
    rate = p.get("records_per_second")
    return (
        f"{head}  {p['records_failed']} failed  {rate or 0:.1f} rec/s  "
        f"ETA {_fmt_seconds(p.get('eta_seconds'))}"
    )


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


def jobs_table(page: dict[str, Any]) -> Iterator[str]:
    yield f"{'ID':<36}  {'TYPE':<9}  {'STATUS':<10}  {'DONE':>21}  CREATED"
    for job in page["jobs"]:
        n, total, unit = _done_total(job["progress"])
        done = f"{n}/{total if total is not None else '?'} {unit}"
        yield f"{job['id']:<36}  {job['type']:<9}  {job['status']:<10}  {done:>21}  {job['created_at']}"
    if page.get("next_cursor"):
        yield f"more: barge list --cursor {page['next_cursor']}"


def event_lines(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    for e in events:
        change = f" {e['from_status']} -> {e['to_status']}" if e["to_status"] else ""
        yield f"{e['at']}  {e['kind']:<12}{change}  {e['message']}"


def shards_table(shards: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield f"{'#':>5}  {'STATUS':<10} {'ATT':>3}  {'RECORDS':>15}  {'WORKER':<28} LAST ERROR"
    for s in shards:
        done = f"{s['records_succeeded'] + s['records_failed']}/{s['record_count']}"
        yield (
            f"{s['index']:>5}  {s['status']:<10} {s['attempt']:>3}  {done:>15}  "
            f"{(s['worker'] or '-'):<28} {s['last_error'] or ''}"
        )


def drops_table(rules: Iterable[dict[str, Any]]) -> Iterator[str]:
    for rule in rules:
        task = rule["template"].get("task", "?")
        yield f"{rule['name']:<24} {task:<9} {rule['incoming']}"


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


def models_table(models: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield f"{'MODEL':<32} {'TASK':<9} {'CREATED':<20} URI"
    for m in models:
        yield f"{m['ref']:<32} {m['task']:<9} {m['created_at'][:19]:<20} {m['uri']}"


def top_table(
    jobs_by_status: Mapping[str, Sequence[dict[str, Any]]],
    workers: Mapping[str, Sequence[str]],
    at: str,
) -> str:
    """``barge top``: a title with the count per status, then one line per job with the workers
    running its shards (``workers`` by job id; a job missing from it shows ``-``), followed by
    what the job waits for, if it waits."""
    lines = [
        f"{'ID':<8}  {'STATUS':<10}  {'DONE/TOTAL':>17}  {'FAILED':>7}  {'REC/S':>8}  "
        f"{'ETA':>7}  WORKERS"
    ]
    for jobs in jobs_by_status.values():
        for job in jobs:
            p = job["progress"]
            n, total, unit = _done_total(p)
            done = f"{n}/{total or '?'}" + (" steps" if unit == "steps" else "")
            rate = f"{p['records_per_second']:.1f}" if p.get("records_per_second") else "--"
            lines.append(
                f"{job['id'][:8]:<8}  {job['status']:<10}  {done:>17}  {p['records_failed']:>7}  "
                f"{rate:>8}  {_fmt_seconds(p.get('eta_seconds')):>7}  "
                f"{','.join(workers.get(job['id'], ())) or '-'}"
                + (f"  ({job['waiting']})" if job.get("waiting") else "")
            )
    counts = ", ".join(f"{len(jobs)} {status}" for status, jobs in jobs_by_status.items())
    return "\n".join([f"barge top  {at}  {counts}", *lines])
