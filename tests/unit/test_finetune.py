"""Fine-tune building blocks without services: the spec, the step arithmetic, completion-only
labels, epoch order, and a checkpoint round trip that continues exactly where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from barge.settings import Settings
from barge.specs import FinetuneSpec, Hyperparameters, InferenceSpec, parse_spec
from tests.helpers import minilm_dir, tiny_encoder, topic_examples
from worker.kinds.finetune_data import Dataset, check_datasets, steps_per_epoch
from worker.runners.finetune.training import IGNORE, Trainer, completion_tokens, epoch_order

BASE: dict[str, Any] = {
    "type": "finetune",
    "base_model": "s3://models/base/",
    "task": "classify",
    "train": "s3://data/train.jsonl",
    "model_name": "topics",
}


def spec(**overrides: Any) -> FinetuneSpec:
    return FinetuneSpec.model_validate({**BASE, **overrides})


class TestSpec:
    def test_defaults_and_normalisation(self) -> None:
        s = spec(output="s3://data/ft")
        assert s.output == "s3://data/ft/"
        assert s.hyperparameters == Hyperparameters.model_validate({})
        assert s.checkpoint_seconds == 600.0  # neither interval given
        assert spec(checkpoint_every_steps=50).checkpoint_seconds is None
        assert s.fields == ("text", "label")

    @pytest.mark.parametrize(
        ("overrides", "loc"),
        [
            ({"hyperparameters": {"learning_rate": 0}}, ("hyperparameters", "learning_rate")),
            ({"hyperparameters": {"warmup_ratio": 1.0}}, ("hyperparameters", "warmup_ratio")),
            ({"hyperparameters": {"batch": 8}}, ("hyperparameters", "batch")),
            ({"model_name": "has space"}, ("model_name",)),
            ({"model_name": "pinned@2"}, ("model_name",)),
            ({"train": "/local/file.jsonl"}, ("train",)),
            ({"checkpoint_every_seconds": 0}, ("checkpoint_every_seconds",)),
            ({"checkpoint_every_seconds": 1e-300}, ("checkpoint_every_seconds",)),
            ({"epoch_models": -1}, ("epoch_models",)),
            ({"epoch_models": 11}, ("epoch_models",)),
        ],
    )
    def test_refusals_name_the_field(self, overrides: dict[str, Any], loc: tuple[str]) -> None:
        with pytest.raises(ValidationError) as exc:
            spec(**overrides)
        assert exc.value.errors()[0]["loc"] == loc

    def test_epoch_models_refuse_a_merged_adapter(self) -> None:
        lora = {"type": "lora", "merge": True}
        with pytest.raises(ValidationError, match="epoch_models keeps each epoch's adapter"):
            spec(task="generate", method=lora, epoch_models=2)
        assert spec(task="generate", method=lora).epoch_models == 0

    def test_epoch_model_names_fit_the_registry(self) -> None:
        from barge.specs import MODEL_NAME_MAX
        from worker.runners.finetune.epochs import checkpoint_name

        assert checkpoint_name("colours", 90) == "colours-ckpt-step-90"
        long = checkpoint_name("m" * MODEL_NAME_MAX, 123456)
        assert len(long) == MODEL_NAME_MAX and long.endswith("-ckpt-step-123456")
        assert spec(model_name=long).model_name == long

    def test_parse_spec_picks_the_type(self) -> None:
        assert isinstance(parse_spec(BASE), FinetuneSpec)
        inference = {"model": "m", "task": "embed", "input": "s3://bkt/b", "output": "s3://bkt/c"}
        assert isinstance(parse_spec(inference), InferenceSpec)

    def test_a_slice_leaves_room_inside_the_shard_time_limit(self) -> None:
        assert Settings().slice_seconds == 1200
        lowered = Settings(finetune_slice_seconds=1200, shard_soft_time_limit=100)
        assert lowered.slice_seconds == 80  # 80 % of the soft limit: room for the checkpoint
        with pytest.raises(ValidationError, match="finetune_slice_seconds"):
            Settings(finetune_slice_seconds=0)


def test_steps_per_epoch_counts_partial_batches_and_accumulation() -> None:
    hp = Hyperparameters.model_validate({"batch_size": 16, "gradient_accumulation_steps": 3})
    assert steps_per_epoch(240, hp) == 5  # 15 batches, 3 per step
    assert steps_per_epoch(241, hp) == 6  # a 16th, partial batch makes a partial step
    assert steps_per_epoch(1, hp) == 1


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    assert sorted(epoch_order(50, 1, 0)) == list(range(50))
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)
    assert epoch_order(50, 1, 0) != epoch_order(50, 2, 0)


def test_only_completion_tokens_carry_loss() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    eos = tok.sep_token_id
    ids, labels = completion_tokens(tok, eos, "translate: cat", "chat", max_length=64)
    prompt = tok("translate: cat")["input_ids"]
    completion = tok("chat", add_special_tokens=False)["input_ids"]
    assert ids == prompt + completion + [eos]
    assert labels == [IGNORE] * len(prompt) + completion + [eos]
    # A long prompt is cut, never the whole completion.
    ids, labels = completion_tokens(tok, eos, "word " * 100, "the answer", max_length=16)
    assert len(ids) == 16
    assert labels[-3:] == [*tok("the answer", add_special_tokens=False)["input_ids"], eos]


def test_label_checks_say_what_to_fix() -> None:
    from barge.errors import PermanentJobError

    train = Dataset("train", [("a", "x"), ("b", "y")])
    with pytest.raises(PermanentJobError, match="validation has labels train never saw: 'z'"):
        check_datasets(spec(), train, Dataset("validation", [("c", "z")]))
    with pytest.raises(PermanentJobError, match="only one label"):
        check_datasets(spec(), Dataset("train", [("a", "x")]), None)
    bad = Dataset(
        "train", [("a", "x")], [{"source": "s", "line": 2, "error": "record has no 'label'"}]
    )
    with pytest.raises(PermanentJobError, match="line 2: record has no 'label'"):
        check_datasets(spec(max_failed_ratio=0.2), bad, None)


def test_a_checkpoint_round_trip_continues_exactly(tmp_path: Path) -> None:
    import torch

    base = tiny_encoder(tmp_path / "base")
    rows = [(r["text"], r["label"]) for r in topic_examples(48, seed=4)]
    labels = sorted({label for _, label in rows})
    s = spec(hyperparameters={"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 9})

    def trainer() -> Trainer:
        return Trainer(s, base, torch.device("cpu"), rows, labels)

    straight = trainer()
    while not straight.done:
        straight.train_step()

    stopped = trainer()
    for _ in range(7):  # mid-epoch
        stopped.train_step()
    files = stopped.save_checkpoint(tmp_path / "ckpt", {"history": [{"epoch": 1}]})
    assert sorted(f.name for f in files) == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    state = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["history"] == [{"epoch": 1}]

    resumed = trainer()
    assert resumed.load_checkpoint(tmp_path / "ckpt")["step"] == 7
    while not resumed.done:
        resumed.train_step()
    assert resumed.step == straight.step == 12
    # Tokens trained on: every example's, once an epoch, counted apart from the trainer.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    lengths = [len(tok(text)["input_ids"]) for text, _ in rows]
    assert straight.tokens == 2 * sum(lengths)
    # Seven steps of six an epoch: all of epoch 1, then the first batch of epoch 2.
    second = sum(lengths[i] for i in epoch_order(len(rows), 9, 1)[:8])
    assert state["tokens"] == stopped.tokens == sum(lengths) + second
    assert resumed.tokens == straight.tokens  # the count resumes with the checkpoint
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
