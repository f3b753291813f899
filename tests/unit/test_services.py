"""Pure service rules, without a database: how a job is presented (progress, rate, ETA), where a
job reads, drop-folder names and templates."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.schemas.jobs import job_out
from barge.errors import InvalidSpec
from barge.status import RUNNING, SUCCEEDED
from db.base import utcnow
from db.repositories import Progress
from services.drops import check_template, drop_name
from services.jobs import examples_per_step, present, rate_and_eta
from services.locations import reads
from tests.factories import build_job


class TestPresent:
    def test_running_inference_has_rate_and_eta(self) -> None:
        now = utcnow()
        job = build_job(status=RUNNING, records_total=1000, shards_total=4)
        job.started_at = now - timedelta(seconds=10)
        view = job_out(
            present(job, Progress(records_succeeded=180, records_failed=20, shards_done=1), now)
        )
        p = view.progress
        assert (p.records_per_second, p.eta_seconds) == (20.0, 40.0)
        assert (p.records_total, p.shards_total, p.shards_done) == (1000, 4, 1)
        assert p.steps_done is None and p.steps_total is None
        assert view.output.errors == f"{job.output_uri}errors/"
        assert view.output.manifest is None

    def test_a_finished_job_has_no_eta_and_names_its_manifest(self) -> None:
        now = utcnow()
        job = build_job(status=SUCCEEDED, records_total=10, manifest={"status": "succeeded"})
        job.started_at, job.finished_at = now - timedelta(seconds=5), now - timedelta(seconds=3)
        view = job_out(present(job, Progress(records_succeeded=10), now))
        assert view.progress.records_per_second == 5.0  # up to finished_at, not now
        assert view.progress.eta_seconds is None
        assert view.output.manifest == f"{job.output_uri}_manifest.json"
        assert view.output.errors is None

    def test_a_fine_tune_counts_examples_through_its_steps(self) -> None:
        now = utcnow()
        spec = {"type": "finetune", "hyperparameters": {"batch_size": 8}}
        job = build_job(status=RUNNING, type_="finetune", spec=spec, steps_total=100)
        job.started_at = now - timedelta(seconds=4)
        view = job_out(present(job, Progress(steps_done=25), now))
        p = view.progress
        assert (p.steps_done, p.steps_total) == (25, 100)
        assert p.records_per_second == 50.0  # 25 steps x 8 examples in 4 s
        assert p.eta_seconds == 12.0

    def test_a_queued_job_has_no_rate(self) -> None:
        view = job_out(present(build_job(), Progress()))
        assert view.progress.records_per_second is None

    @pytest.mark.parametrize(
        ("done", "total", "elapsed", "running", "expected"),
        [
            (0, 10, 5.0, True, (None, None)),
            (5, 10, 0.0, True, (None, None)),
            (5, None, 1.0, True, (5.0, None)),
            (5, 10, 1.0, False, (5.0, None)),
            (12, 10, 1.0, True, (12.0, 0.0)),
        ],
    )
    def test_rate_and_eta(
        self,
        done: int,
        total: int | None,
        elapsed: float,
        running: bool,
        expected: tuple[float | None, float | None],
    ) -> None:
        assert rate_and_eta(done, total, elapsed, running) == expected

    def test_examples_per_step_uses_accumulation(self) -> None:
        spec = {"hyperparameters": {"batch_size": 4, "gradient_accumulation_steps": 3}}
        assert examples_per_step(spec) == 12
        assert examples_per_step({}) == 16


class TestReads:
    def test_an_inference_input_is_an_object_or_a_prefix(self) -> None:
        spec = {"type": "inference", "input": "s3://b/in.jsonl"}
        assert reads(spec) == [("input", "s3://b/in.jsonl"), ("input", "s3://b/in.jsonl/")]
        assert reads({"input": "s3://b/in/"}) == [("input", "s3://b/in/")]

    def test_a_fine_tune_reads_train_and_validation(self) -> None:
        spec = {"type": "finetune", "train": "s3://b/t/", "validation": None}
        assert reads(spec) == [("train", "s3://b/t/")]

    def test_a_stored_spec_that_no_longer_validates_is_read_as_it_is(self) -> None:
        assert reads({"type": "inference"}) == []
        assert reads({"input": 3}) == []


class TestDrops:
    @pytest.mark.parametrize(
        ("filename", "name"),
        [
            ("reviews.csv.gz", "reviews"),
            ("reviews.jsonl", "reviews"),
            ("Data.PARQUET", "Data"),
            ("notes.txt", "notes.txt"),
            (".jsonl", ".jsonl"),
            ("a.b.ndjson.gz", "a.b"),
        ],
    )
    def test_drop_name(self, filename: str, name: str) -> None:
        assert drop_name(filename) == name

    def test_a_template_may_not_set_input_or_output(self) -> None:
        with pytest.raises(InvalidSpec, match="must not set input or output") as exc:
            check_template({"model": "m", "task": "embed", "input": "s3://bkt/x"})
        assert exc.value.field == "template"

    def test_a_bad_template_field_is_named(self) -> None:
        with pytest.raises(InvalidSpec) as exc:
            check_template({"model": "m", "task": "summarise"})
        assert exc.value.field == "template.task"

    def test_a_good_template_passes(self) -> None:
        check_template({"model": "minilm@2", "task": "embed", "batch_size": 8})
