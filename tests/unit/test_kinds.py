"""The registry of job kinds (``worker.kinds``): every spec a user can submit has exactly one
kind, each kind's run step names a module that has one, and the control worker's side (the
control room, the registry, the tasks module it loads) imports no model code and no torch."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

from barge.specs import IMAGE_TASKS, TASKS, FinetuneSpec, InferenceSpec, JobSpec, parse_spec
from tests.helpers import finetune_spec, inference_spec
from worker import kinds

TEXT_TASKS = sorted(set(TASKS) - IMAGE_TASKS)


def inference(task: str, **extra: Any) -> JobSpec:
    model = "builtin:face-haar" if task == "detect" else "s3://models/m/"
    return parse_spec(
        inference_spec(model, "s3://bucket/in/x.jsonl", "s3://bucket/out/", task=task, **extra)
    )


def expected(spec: JobSpec) -> kinds.JobKind:
    """The kind each spec is documented to have (``worker.kinds``' docstring)."""
    if isinstance(spec, FinetuneSpec):
        return kinds.FINETUNE
    if spec.openai_endpoint is not None:
        return kinds.OPENAI_BATCH
    if spec.task in IMAGE_TASKS:
        return kinds.IMAGES
    return {"text2text": kinds.TEXT2TEXT, "regress": kinds.ONNX}.get(spec.task, kinds.TEXT)


SPECS = [
    *(inference(task) for task in TASKS),
    *(inference(task, openai_endpoint="/v1/chat/completions") for task in TEXT_TASKS),
    inference("embed", openai_endpoint="/v1/embeddings"),
    inference("image_classify", image_field="image"),
    *(
        parse_spec(finetune_spec("s3://models/base/", "s3://bucket/in/train.jsonl", "m", task=task))
        for task in ("classify", "generate", "text2text", "image_classify")
    ),
]


def spec_id(spec: JobSpec) -> str:
    endpoint = spec.openai_endpoint if isinstance(spec, InferenceSpec) else None
    return "-".join(str(part) for part in (spec.type, spec.task, endpoint) if part)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_spec_has_exactly_one_kind(spec: JobSpec) -> None:
    takers = [kind.name for kind in kinds.KINDS if kind.matches(spec)]
    assert takers == [expected(spec).name]
    assert kinds.kind_for(spec) is expected(spec)


def test_every_task_is_some_kinds() -> None:
    covered = {spec.task for spec in SPECS if isinstance(spec, InferenceSpec)}
    assert covered == set(TASKS)
    assert {kind.name for kind in kinds.KINDS} == {expected(spec).name for spec in SPECS}


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.name)
def test_each_kind_names_a_run_step_that_exists(kind: kinds.JobKind) -> None:
    assert isinstance(kind.run, kinds.Runs)
    assert kind.run.module.startswith("worker.runners.")
    assert callable(importlib.import_module(kind.run.module).run)
    assert kind.time_limit_error.format(limit=60.0)  # formats with the limit alone


def test_the_control_side_imports_no_model_code() -> None:
    """What the control worker loads (its tasks, the control room, the registry, every kind's
    plan and finalize steps, asked for every spec) imports no model code and no torch: a fresh
    interpreter's modules say so."""
    script = """
import json, sys
import worker.celery_app, worker.tasks
import worker.control.drops, worker.control.finalize, worker.control.planner
import worker.control.reconciler
from worker import kinds
from tests.unit.test_kinds import SPECS
steps = [(kinds.kind_for(s).plan, kinds.kind_for(s).finalize) for s in SPECS]
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    heavy = ("torch", "transformers", "peft", "onnxruntime", "safetensors", "cv2", "PIL")
    ours = ("worker.models", "worker.runners")
    assert "worker.kinds.finetune" in loaded  # the check looked where the steps are
    assert [m for m in loaded if m.split(".")[0] in heavy or m.startswith(ours)] == []
