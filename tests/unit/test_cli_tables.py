"""How the ``barge`` command prints its tables and live views (``cli.tables``, ``cli.render``):
plain aligned lines, one per row, in a pipe; boxes and colours through rich on a terminal."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from cli.render import jobs_table, progress_line, progress_view, shards_table, top_view
from cli.tables import lines, show, table, terminal_view

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = set("│─╭╮╰╯├┤┬┴┼━┃")
JOB_ID = "6f1c2a3b-0d4e-4f50-8a6b-7c8d9e0f1a2b"


def job(job_id: str = JOB_ID, state: str = "running", **progress: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "type": "inference",
        "status": state,
        "created_at": "2026-11-25T02:50:00.123456+00:00",
        "waiting": None,
        "progress": {
            "records_succeeded": 40,
            "records_failed": 2,
            "records_total": 100,
            "records_per_second": 81.2,
            "eta_seconds": 7,
            **progress,
        },
    }


def shard(index: int, state: str, error: str | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "status": state,
        "attempt": 1,
        "records_succeeded": 10,
        "records_failed": 0,
        "record_count": 10,
        "worker": "gpu@host-1" if state == "running" else None,
        "last_error": error,
    }


class Terminal(io.StringIO):
    """What rich writes to when stdout is a terminal: a file whose ``isatty`` says so."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A colour terminal 120 columns wide, whatever the environment of the test run."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLORTERM", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "120")


class TestInAPipe:
    def test_a_header_and_one_plain_line_per_row(self) -> None:
        other = "0a" + JOB_ID[2:]
        page = {"jobs": [job(), job(other, "succeeded")], "next_cursor": "c-1"}
        out = io.StringIO()
        show(*jobs_table(page), file=out)
        text = out.getvalue()
        assert "\x1b" not in text and not BOX & set(text), text
        rows = text.splitlines()
        assert rows[0].split() == ["ID", "TYPE", "STATUS", "DONE", "CREATED"]
        assert rows[1].split() == [
            JOB_ID,
            "inference",
            "running",
            "42/100",
            "records",
            "2026-11-25T02:50:00.123456+00:00",
        ]
        assert rows[2].startswith(f"{other}  inference  succeeded ")
        assert rows[3] == "more: barge list --cursor c-1"
        assert len(rows) == 4 and all(r == r.rstrip() for r in rows)

    def test_columns_are_aligned_and_numbers_right_aligned(self) -> None:
        rows = list(lines(shards_table([shard(0, "succeeded"), shard(12, "running")])))
        assert rows[0].index("STATUS") == rows[1].index("succeeded") == rows[2].index("running")
        # '#' and the records are right-aligned: their last characters line up
        assert rows[0].index("#") == rows[1].index("0") == rows[2].index("12") + 1
        assert rows[0].index("RECORDS") + len("RECORDS") == rows[1].index("10/10") + len("10/10")

    def test_a_cell_is_never_markup_and_never_more_than_one_line(self) -> None:
        errors = "CUDA out of memory [bold]\nTraceback: [red]x[/red]"
        rows = list(lines(shards_table([shard(0, "failed", errors)])))
        assert len(rows) == 2
        assert rows[1].endswith("CUDA out of memory [bold] Traceback: [red]x[/red]")

    def test_wide_names_a_packed_shards_objects(self) -> None:
        own = {**shard(0, "succeeded"), "source": "s3://b/in/big.jsonl", "start_record": 20}
        own.update(objects=None, started_at=None, finished_at=None)
        packed = {**own, "index": 1, "source": "s3://b/out/_inputs/pack-1.jsonl"}
        packed.update(objects=3, first_source="s3://b/in/a", last_source="s3://b/in/c")
        rows = list(lines(shards_table([own, packed], wide=True)))
        assert rows[1].split()[6:8] == ["s3://b/in/big.jsonl", "20-29"]
        assert " 3 objects s3://b/in/a to s3://b/in/c " in rows[2]
        assert rows[2].split()[-3] == "all"

    def test_top_keeps_its_title_header_and_prefixes(self) -> None:
        waiting = {**job("ab12cd34" + JOB_ID[8:], "queued"), "waiting": "waits for a GPU worker"}
        items = top_view({"running": [job()], "queued": [waiting]}, {JOB_ID: ["gpu@a"]}, "12:00")
        rows = list(lines(*items))
        assert rows[0] == "barge top  12:00  1 running, 1 queued"
        assert rows[1].split() == [
            "ID",
            "STATUS",
            "DONE/TOTAL",
            "FAILED",
            "REC/S",
            "ETA",
            "WORKERS",
        ]
        assert rows[2].split() == ["6f1c2a3b", "running", "42/100", "2", "81.2", "0m07s", "gpu@a"]
        assert rows[3].startswith("ab12cd34  queued ")
        assert rows[3].endswith("-  (waits for a GPU worker)")

    def test_an_empty_table_is_its_header(self) -> None:
        assert list(lines(table(["NAME", "TASK", "INCOMING"], []))) == ["NAME  TASK  INCOMING"]

    def test_the_progress_line_is_unchanged(self) -> None:
        line = progress_line(job())
        assert line == (
            "running    [##########..............]  42.0%  42/100 records  2 failed  "
            "81.2 rec/s  ETA 0m07s"
        )


@pytest.mark.usefixtures("terminal_env")
class TestOnATerminal:
    def test_boxes_bold_headers_and_coloured_statuses(self) -> None:
        out = Terminal()
        show(shards_table([shard(0, "succeeded"), shard(1, "failed", "boom")]), file=out)
        text = out.getvalue()
        assert "╭" in text and "╰" in text and "│" in text
        assert "\x1b[1mSTATUS" in text  # bold header
        assert "\x1b[32msucceeded" in text and "\x1b[1;31mfailed" in text

    def test_no_color_keeps_the_boxes_and_drops_the_colours(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NO_COLOR", "1")
        out = Terminal()
        show(shards_table([shard(0, "succeeded"), shard(1, "failed")]), file=out)
        text = out.getvalue()
        assert "╭" in text and "succeeded" in text
        assert not re.search(r"\x1b\[[0-9;]*3[0-9]m", text), text  # no foreground colour

    def test_a_narrow_terminal_never_cuts_an_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COLUMNS", "40")
        out = Terminal()
        show(*jobs_table({"jobs": [job()], "next_cursor": None}), file=out)
        text = out.getvalue()
        assert JOB_ID in text and "…" not in text

    def test_a_forced_terminal_console_renders_the_table_boxed(self) -> None:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120, color_system="standard")
        console.print(terminal_view(*top_view({"running": [job()]}, {}, "12:00")))
        text = out.getvalue()
        assert "\x1b[1mbarge top  12:00  1 running" in text
        assert "╭" in text and "6f1c2a3b" in text and "\x1b[1;34mrunning" in text
        assert max(len(ANSI.sub("", line)) for line in text.splitlines()) <= 120

    def test_wait_shows_a_rich_progress_bar(self) -> None:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120, color_system="standard")
        console.print(progress_view(job()))
        text = out.getvalue()
        assert "━" in text and "42/100 records  2 failed  81.2 rec/s  ETA 0m07s" in text
        assert "\x1b[1;34mrunning" in text
