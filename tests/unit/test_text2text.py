"""text2text without services: its spec, and a fine-tune checkpoint round trip of a tiny T5 that
continues exactly where it stopped (the shared machinery: weights, optimizer, schedule, RNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from barge.specs import FinetuneSpec, InferenceSpec
from tests.helpers import WORDS, tiny_t5
from worker.runners.finetune.training import Trainer

BASE: dict[str, Any] = {
    "type": "finetune",
    "base_model": "s3://models/t5/",
    "task": "text2text",
    "train": "s3://data/train.jsonl",
    "model_name": "de",
}


def test_the_specs() -> None:
    s = FinetuneSpec.model_validate(BASE)
    assert s.fields == ("source", "target")
    with pytest.raises(ValidationError, match="task 'regress' cannot be fine-tuned"):
        FinetuneSpec.model_validate({**BASE, "task": "regress"})
    job = InferenceSpec.model_validate(
        {
            "model": "s3://models/t5/",
            "task": "text2text",
            "input": "s3://data/in.jsonl",
            "output": "s3://data/out/",
            "params": {"prefix": "summarize: ", "num_beams": 4},
        }
    )
    assert job.params == {
        "max_new_tokens": 32,
        "num_beams": 4,
        "temperature": 0.0,
        "seed": 0,
        "prefix": "summarize: ",
        "max_length": 512,
    }
    with pytest.raises(ValidationError, match="num_beams"):
        InferenceSpec.model_validate({**job.model_dump(), "params": {"num_beams": 0}})


@pytest.fixture
def one_thread() -> Any:
    """A tiny model's many small ops run far faster on one thread of a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_checkpoint_round_trip_continues_exactly(tmp_path: Path, one_thread: None) -> None:
    import torch

    base = tiny_t5(tmp_path / "base")
    rows = list(WORDS.items())
    s = FinetuneSpec.model_validate(
        {
            **BASE,
            "hyperparameters": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "seed": 3},
        }
    )

    def trainer() -> Trainer:
        return Trainer(s, base, torch.device("cpu"), rows, [])

    straight = trainer()
    while not straight.done:
        straight.train_step()
    stopped = trainer()
    for _ in range(3):  # mid-epoch
        stopped.train_step()
    stopped.save_checkpoint(tmp_path / "ckpt", {})
    resumed = trainer()
    assert resumed.load_checkpoint(tmp_path / "ckpt")["step"] == 3
    while not resumed.done:
        resumed.train_step()
    assert resumed.step == straight.step == 4
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    metrics = resumed.evaluate(rows[:8])
    assert set(metrics) == {
        "validation_loss",
        "validation_bleu",
        "validation_chrf",
        "validation_exact_match",
    }
