"""Which runner runs a unit of work: the job's spec type → its ``lifecycle.Runner``.

The lifecycle never imports the runners (they build on it); ``worker.tasks`` hands it this
lookup. A new kind of job adds its runner here. Imports: ``barge``, ``worker.runners.records``,
``worker.runners.finetune.run``; never ``api`` or ``cli``.
"""

from __future__ import annotations

from barge.specs import IMAGE_TASKS, FinetuneSpec, JobSpec
from worker.lifecycle import Runner
from worker.runners.finetune.run import RUNNER as FINETUNE
from worker.runners.images import RUNNER as IMAGES
from worker.runners.openai_batch import RUNNER as OPENAI_BATCH
from worker.runners.records import RUNNER as INFERENCE


def runner_for(spec: JobSpec) -> Runner:
    if isinstance(spec, FinetuneSpec):
        return FINETUNE
    if spec.task in IMAGE_TASKS:
        return IMAGES
    return OPENAI_BATCH if spec.openai_endpoint else INFERENCE
