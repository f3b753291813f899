"""A shard's cold start (``worker.coldstart``: a process's first import of a run step,
fetching and loading the model) is counted apart from its processing, on a real Postgres and
RabbitMQ with a real model load: the attempt's row says how many of its wall seconds were the
load, and its model's throughput row sums processing seconds only, the load seconds apart.
A dry run's estimate (``services.estimates``) adds a load only when no live worker holds the
model warm (as its presence row, written from its model cache, says: a LoRA adapter's base is
named with its task, and is warm for the adapter's jobs, not for a job on the base model, which
the cache loads apart)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from barge.queue import make_celery
from barge.settings import Settings
from barge.storage import make_store
from db import repositories as repo
from db.base import utcnow
from db.models import ShardAttempt, Throughput
from db.session import session_scope
from db.state import RUNNING
from services import estimates
from services.context import ServiceContext
from tests.factories import build_job, inference_spec_json, make_shard, make_tenant
from tests.helpers import minilm_dir, tiny_generator
from tests.integration.test_worker_lifecycle import make_context, runner, sent
from tests.services import create_vhost, delete_vhost
from tests.unit.test_lora import spec as finetune_spec
from worker import lifecycle, presence
from worker.context import WorkerContext
from worker.lease import Lease, Outcome, Result, ShardWork
from worker.models.cache import cache_for

WORK_SECONDS = 0.3  # what each shard's "processing" takes after its model is in hand
RECORDS = 12


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    name = f"barge_coldstart_{uuid.uuid4().hex[:8]}"
    yield create_vhost(name)
    delete_vhost(name)


def embed_with_minilm(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """The job's model from this process's cache (loaded by the first shard, warm after),
    then a fixed time of work."""
    cache_for(ctx).get(work.model_ref, "embed", work.job_id)
    time.sleep(WORK_SECONDS)
    return Result(Outcome.SUCCEEDED, succeeded=RECORDS, output_key=f"part-{work.index}.jsonl")


def test_the_throughput_row_leaves_the_model_load_out(
    database_url: str, vhost_url: str, tmp_path: Path
) -> None:
    # A model location of its own (a link to MiniLM), so its throughput row is this test's.
    model = tmp_path / f"minilm-{uuid.uuid4().hex[:8]}"
    model.symlink_to(minilm_dir(), target_is_directory=True)
    ctx = make_context(
        database_url, vhost_url, tmp_path, local_model_dirs=[tmp_path, minilm_dir().parent]
    )
    sent(ctx)
    with session_scope(database_url) as session:
        job = build_job(
            status=RUNNING,
            tenant_id=make_tenant(session).id,
            model_uri=str(model),
            spec={**inference_spec_json("s3://test-outputs/cold/"), "model": str(model)},
        )
        session.add(job)
        session.flush()
        shard_ids = [make_shard(session, job, i).id for i in range(2)]

    for shard_id in shard_ids:  # the first loads MiniLM; the second finds it warm
        work = lifecycle.claim(ctx, shard_id)
        assert work is not None
        assert lifecycle.run_claimed(ctx, work, runner(embed_with_minilm)) is Outcome.SUCCEEDED

    with session_scope(database_url) as session:
        attempts = {
            a.shard_id: a
            for a in session.scalars(select(ShardAttempt).where(ShardAttempt.job_id == job.id))
        }
        cold, warm = (attempts[s] for s in shard_ids)
        row = session.get(Throughput, (str(model), "embed", "cpu"))
        assert row is not None
        walls = [cold.wall_seconds or 0.0, warm.wall_seconds or 0.0]
        loads = [cold.load_seconds or 0.0, warm.load_seconds or 0.0]
        shards, records, seconds = row.shards, row.records, row.seconds
        n_loads, load_seconds = row.loads, row.load_seconds

    assert loads[0] > 0.05 and warm.load_seconds == 0.0  # loaded once, then warm
    assert loads[0] < walls[0] and walls[0] - loads[0] >= WORK_SECONDS
    assert (shards, records, n_loads) == (2, 2 * RECORDS, 1)
    assert load_seconds == pytest.approx(loads[0], abs=1e-6)
    # Processing only: the two shards' wall seconds less the load, about the work they did.
    assert seconds == pytest.approx(sum(walls) - loads[0], abs=2e-3)
    assert 2 * WORK_SECONDS <= seconds < 2 * WORK_SECONDS + 1.0
    print(f"cold shard {walls[0]:.3f} s (load {loads[0]:.3f} s), warm {walls[1]:.3f} s")


def test_an_estimate_adds_a_cold_start_only_when_no_live_worker_holds_the_model(
    database_url: str, tmp_path: Path
) -> None:
    """Four shards measured: one paid a 3 s cold start, all four processed 240 records in 2 s.
    A job of the same size on one worker of that device takes 2 s where a worker holds the
    model warm, 2 s and a load where none does."""
    model, device = f"s3://models/m-{uuid.uuid4().hex[:8]}/", f"gpu-{uuid.uuid4().hex[:8]}"
    worker = f"test-host:{uuid.uuid4().int % 100000}"
    now = utcnow()
    with session_scope(database_url) as session:
        for load in (3.0, 0.0, 0.0, 0.0):
            repo.add_throughput(session, (model, "embed", device), 60, 0.5, 0, now, load)
        repo.note_worker(
            session,
            worker,
            now,
            host="test-host",
            pid=1,
            queues=["gpu"],
            device="cuda:0",
            device_name=device,
            models=[{"model": "s3://other/", "task": "embed", "kind": "model"}],
        )
    settings = Settings(env="test", home=tmp_path)
    counted = estimates.Counted(records=240, shards=4)

    def estimate() -> dict[str, Any]:
        with session_scope(database_url) as session:
            ctx = ServiceContext.for_operator(session, settings)
            found = estimates.estimate(ctx, model, "embed", counted)
        assert found is not None
        return found

    try:
        cold = estimate()  # the one worker alive holds another model only
        assert (cold["model_warm"], cold["cold_start_seconds"]) == (False, 3.0)
        assert cold["duration_seconds"] == 5.0 and cold["records_per_second"] == 120.0
        assert cold["measured"] == {
            "shards": 4,
            "records": 240,
            "seconds": 2.0,
            "loads": 1,
            "load_seconds": 3.0,
        }
        with session_scope(database_url) as session:
            held = [{"model": model, "task": "embed", "kind": "model"}]
            repo.note_worker(session, worker, utcnow(), models=held)
        warm = estimate()
        assert (warm["model_warm"], warm["cold_start_seconds"]) == (True, 0.0)
        assert warm["duration_seconds"] == 2.0 and warm["device"] == device
    finally:
        with session_scope(database_url) as session:
            repo.remove_worker(session, worker)


def _adapter(tmp_path: Path) -> tuple[str, str]:
    """A tiny generate base and a LoRA adapter of it trained a few steps (local paths)."""
    import torch

    from worker.runners.finetune.training import Trainer

    base = tiny_generator(tmp_path / "base")
    s = finetune_spec(
        task="generate",
        method={"type": "lora", "r": 4, "alpha": 32},
        hyperparameters={"epochs": 1, "batch_size": 4, "learning_rate": 5e-2, "seed": 1},
    )
    trainer = Trainer(s, base, torch.device("cpu"), [(f"item {i}:", "red") for i in range(4)], [])
    while not trainer.done:
        trainer.train_step()
    trainer.save_model(tmp_path / "adapter")
    return str(base), str(tmp_path / "adapter")


def test_a_base_held_under_an_adapter_is_named_with_its_task_and_warm_for_the_adapter_only(
    database_url: str, vhost_url: str, tmp_path: Path
) -> None:
    """A worker runs a LoRA adapter's job (its cache loads the base, then the adapter onto
    it) and notes its presence: its row names the base with its task (``kind: base``) and the
    adapter. An estimate for the adapter says warm; one for a job on the base model says cold,
    as it is: the cache loads the base model apart for it (a ``model`` load), and once it has,
    the worker's row says so and the estimate is warm."""
    base, adapter = _adapter(tmp_path)
    settings = Settings(
        env="test",
        database_url=database_url,
        broker_url=vhost_url,
        home=tmp_path,
        local_model_dirs=[tmp_path],
        device="cpu",
    )
    ctx = WorkerContext(settings, make_store(settings), make_celery(settings), f"t:{uuid.uuid4()}")
    cache = cache_for(ctx)
    cache.get(adapter, "generate", uuid.uuid4(), base=base)  # as the adapter job's shard does

    def noted() -> tuple[list[dict[str, str]], str]:
        presence.note(ctx, ["gpu"], computes=True)  # as the unit's end notes a changed cache
        with session_scope(database_url) as session:
            (row,) = [w for w in repo.workers_seen_since(session, since) if w.name == ctx.name]
            return list(row.models or []), row.device_name or row.device or "unknown"

    def warm(model: str) -> bool:
        with session_scope(database_url) as session:
            found = estimates.estimate(
                ServiceContext.for_operator(session, settings),
                model,
                "generate",
                estimates.Counted(records=40, shards=1),
            )
        assert found is not None
        return bool(found["model_warm"])

    since = utcnow()
    try:
        held, device = noted()
        assert held == [
            {"model": base, "task": "generate", "kind": "base"},
            {"model": adapter, "task": "generate", "kind": "adapter", "base": base},
        ]
        with session_scope(database_url) as session:
            for model in (base, adapter):
                repo.add_throughput(session, (model, "generate", device), 40, 1.0, 0, utcnow(), 0)
        assert (warm(adapter), warm(base)) == (True, False)

        cache.get(base, "generate", uuid.uuid4())  # a job on the base model itself
        assert cache.loads == {"model": 1, "base": 1, "adapter": 1}  # loaded apart: cold
        held, _ = noted()
        assert {"model": base, "task": "generate", "kind": "model"} in held
        assert warm(base)
    finally:
        with session_scope(database_url) as session:
            repo.remove_worker(session, ctx.name)
