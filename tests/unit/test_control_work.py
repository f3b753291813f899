"""Control work apart from GPU work, without services: the workers `barge worker` runs, the
expiry of periodic messages, the lease defaults, and what a job says it waits for. (The
behaviour on real processes: tests/faults/test_control_work.py and test_takeover.py.)"""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from barge.queue import RECONCILE, RETENTION, SCAN_DROPS, SEND_WEBHOOKS, celery_config
from barge.settings import Settings
from barge.status import CANCELLING, FAILED, QUEUED, RUNNING, SUCCEEDED
from cli.main import main
from cli.processes import worker_argvs
from db.repositories import Progress
from services.jobs import present, waiting_for
from tests.factories import build_job


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


class TestWorkerProcesses:
    def test_by_default_a_gpu_worker_and_a_control_worker(self) -> None:
        argvs = worker_argvs()
        assert list(argvs) == ["gpu", "control"]
        gpu, control = argvs["gpu"], argvs["control"]
        assert (_opt(gpu, "-Q"), _opt(gpu, "--concurrency"), _opt(gpu, "--pool")) == (
            "gpu",
            "1",
            "prefork",
        )
        assert (_opt(control, "-Q"), _opt(control, "--concurrency")) == ("control", "2")
        # Named after this process, so several workers run on one host.
        names = (_opt(gpu, "--hostname"), _opt(control, "--hostname"))
        assert names == (f"gpu-{os.getpid()}@%h", f"control-{os.getpid()}@%h")

    def test_a_worker_for_a_gpu_is_named_after_it(self) -> None:
        argvs = worker_argvs(gpu=3)
        names = [_opt(a, "--hostname") for a in argvs.values()]
        assert names == ["gpu-3@%h", "control-3@%h"]
        assert _opt(worker_argvs(gpu=3, hostname="w1@%h")["gpu"], "--hostname") == "w1-gpu@%h"
        with pytest.raises(ValueError, match="--gpu takes a GPU index"):
            worker_argvs(gpu=-1)

    def test_one_kind_only_and_names(self) -> None:
        assert list(worker_argvs("gpu", concurrency=2)) == ["gpu"]
        assert _opt(worker_argvs("gpu", concurrency=2)["gpu"], "--concurrency") == "2"
        assert list(worker_argvs(" control ")) == ["control"]
        assert _opt(worker_argvs("control", hostname="c1@h")["control"], "--hostname") == "c1@h"
        both = worker_argvs("control,gpu", hostname="w1@%h")
        assert [_opt(a, "--hostname") for a in both.values()] == ["w1-gpu@%h", "w1-control@%h"]

    @pytest.mark.parametrize("queues", ["", "gpu,celery", "default"])
    def test_unknown_queues_are_refused(
        self, queues: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["worker", "--queues", queues]) == 2
        assert "--queues takes gpu, control or gpu,control" in capsys.readouterr().err


class TestPeriodicMessages:
    def test_each_expires_when_the_next_is_due_or_within_a_minute(self) -> None:
        """Retention's hourly message would otherwise sit at the queue's head for an hour while
        no control worker runs, holding every shorter-lived message behind it (RabbitMQ drops
        expired messages only at the head)."""
        settings = Settings(
            reconcile_seconds=15,
            drop_scan_seconds=5,
            webhook_send_seconds=3,
            retention_seconds=600,
        )
        schedule = celery_config(settings)["beat_schedule"]
        by_task = {entry["task"]: entry for entry in schedule.values()}
        assert by_task[RECONCILE]["options"] == {"expires": 15}
        assert by_task[SCAN_DROPS]["options"] == {"expires": 5}
        assert by_task[SEND_WEBHOOKS]["options"] == {"expires": 3}
        assert by_task[RETENTION]["options"] == {"expires": 60}
        assert by_task[RETENTION]["schedule"] == 600


class TestLeaseDefaults:
    def test_short_lease_frequent_heartbeat(self) -> None:
        fields = Settings.model_fields
        assert (fields["lease_seconds"].default, fields["heartbeat_seconds"].default) == (10, 2)

    def test_heartbeat_at_most_half_the_lease(self) -> None:
        Settings(lease_seconds=10, heartbeat_seconds=5)
        with pytest.raises(ValidationError, match="at most half"):
            Settings(lease_seconds=10, heartbeat_seconds=5.1)
        with pytest.raises(ValidationError):
            Settings(lease_seconds=0, heartbeat_seconds=0)


class TestWaiting:
    def test_queued(self) -> None:
        assert waiting_for(build_job(status=QUEUED), Progress()) == "waiting to be planned"

    @pytest.mark.parametrize(
        ("ahead", "expected"),
        [
            (0, "waiting for a GPU worker"),
            (1, "waiting for a GPU worker: 1 job ahead"),
            (2, "waiting for a GPU worker: 2 jobs ahead"),
        ],
    )
    def test_running_with_no_shard_running(self, ahead: int, expected: str) -> None:
        job = build_job(status=RUNNING, shards_total=3)
        assert waiting_for(job, Progress(shards_done=1), ahead) == expected
        assert present(job, Progress(shards_done=1), ahead=ahead).waiting == expected

    def test_not_waiting_while_a_shard_runs(self) -> None:
        job = build_job(status=RUNNING, shards_total=3)
        assert waiting_for(job, Progress(shards_done=1, shards_running=1), 4) is None

    @pytest.mark.parametrize("status", [RUNNING, CANCELLING, FAILED])
    def test_every_shard_settled_is_finalizing(self, status: str) -> None:
        job = build_job(status=status, shards_total=2)
        assert waiting_for(job, Progress(shards_done=2)) == "finalizing"

    def test_a_stopping_job_waits_for_its_running_shards(self) -> None:
        job = build_job(status=CANCELLING, shards_total=4)
        progress = Progress(shards_done=2, shards_running=2)
        assert waiting_for(job, progress) == "waiting for 2 running shards to stop"

    def test_a_finalized_job_waits_for_nothing(self) -> None:
        job = build_job(status=SUCCEEDED, shards_total=2, manifest={"status": "succeeded"})
        assert waiting_for(job, Progress(shards_done=2)) is None


def test_task_events_follow_the_setting() -> None:
    """Task events are most of the broker's messages (bench/scale.py): a setting turns them off."""
    on = celery_config(Settings(broker_task_events=True))
    off = celery_config(Settings(broker_task_events=False))
    assert on["worker_send_task_events"] and on["task_send_sent_event"]
    assert not off["worker_send_task_events"] and not off["task_send_sent_event"]
