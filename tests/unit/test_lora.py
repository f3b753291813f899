"""LoRA, chat data and evaluation building blocks without services: the method and selection
fields, assistant-only labels of chat records, metrics equal to scikit-learn's, the best epoch,
and a LoRA checkpoint round trip that saves only the adapter and continues exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from barge.specs import FinetuneSpec, LoraMethod
from tests.helpers import CHAT_TEMPLATE, minilm_dir, tiny_encoder, topic_examples
from worker.kinds.finetune_data import Messages, chat_record
from worker.runners.finetune.metrics import classification_metrics, exact_match
from worker.runners.finetune.run import best_epoch
from worker.runners.finetune.training import IGNORE, Trainer, chat_tokens

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
    def test_method_defaults_to_full_and_lora_has_defaults(self) -> None:
        assert spec().method.type == "full" and spec().lora is None
        lora = spec(method={"type": "lora"}).lora
        assert isinstance(lora, LoraMethod)
        assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 16, 0.0, None)
        assert (lora.base_dtype, lora.quantize, lora.merge) == ("float32", None, False)
        assert spec().metric == "validation_macro_f1"
        assert spec(task="generate").metric == "validation_loss"

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            ({"method": {"type": "lora", "r": 0}}, "r"),
            ({"method": {"type": "lora", "target_modules": ["a b"]}}, "module names"),
            ({"method": {"type": "adapter"}}, "tag"),
            ({"method": {"type": "lora"}, "task": "embed"}, "classify and generate"),
            ({"select": "best"}, "need validation data"),
            ({"early_stopping_epochs": 2}, "need validation data"),
            (
                {"select": "best", "validation": "s3://data/v", "select_metric": "bleu"},
                "select_metric must be one of",
            ),
            (
                {
                    "select": "best",
                    "validation": "s3://data/v",
                    "select_metric": "validation_exact_match",
                },
                "not measured for task 'classify'",
            ),
        ],
    )
    def test_refusals(self, overrides: dict[str, Any], match: str) -> None:
        with pytest.raises(ValidationError, match=match):
            spec(**overrides)


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_only_assistant_tokens_carry_loss_in_a_chat() -> None:
    tok = _tokenizer()
    eos = tok.sep_token_id
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "colour of snow"},
        {"role": "assistant", "content": "white"},
        {"role": "user", "content": "and grass"},
        {"role": "assistant", "content": "green"},
    ]
    ids, labels = chat_tokens(tok, eos, messages, max_length=128)
    assert len(ids) == len(labels)
    learned = [t for t in labels if t != IGNORE]
    words = tok.convert_ids_to_tokens([t for t in learned if t != eos])
    assert words == ["white", "green"] and learned.count(eos) == 2
    for i, label in enumerate(labels):  # a learned token is the token at its position
        assert label in (IGNORE, ids[i])
    ignored = tok.convert_ids_to_tokens(
        [t for t, y in zip(ids, labels, strict=True) if y == IGNORE]
    )
    assert {"answer", "briefly", "snow", "grass", "system", "user"} <= set(ignored)
    assert "white" not in ignored and "green" not in ignored
    # The prompt a model is asked at inference is the context the answer was learned after.
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    first = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(first)] == first and labels[len(first)] == tok.convert_tokens_to_ids("white")


def test_chat_records_are_checked() -> None:
    ok, problem = chat_record(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 100
    )
    assert problem is None and ok is not None
    assert isinstance(ok[0], Messages) and ok[1] == "yo"
    assert ok[0].prompt_messages() == [{"role": "user", "content": "hi"}]
    assert chat_record([{"role": "user", "content": "hi"}], 100)[1] == (
        "'messages' has no assistant message with content to learn"
    )
    assert "role" in str(chat_record([{"role": "robot", "content": "x"}], 100)[1])
    assert "more than the limit" in str(
        chat_record(
            [{"role": "user", "content": "x" * 90}, {"role": "assistant", "content": "y" * 20}], 100
        )[1]
    )


def test_classification_metrics_equal_scikit_learns() -> None:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = ["a", "b", "c", "d"]
    rng = random.Random(7)
    truth = [rng.randrange(4) for _ in range(200)]
    predicted = [t if rng.random() < 0.6 else rng.randrange(3) for t in truth]  # never "d"
    ours = classification_metrics(truth, predicted, labels)
    p, r, f, support = precision_recall_fscore_support(
        truth, predicted, labels=range(4), zero_division=0
    )
    for i, label in enumerate(labels):
        got = ours["validation_per_class"][label]
        assert got["precision"] == pytest.approx(p[i], abs=1e-6)
        assert got["recall"] == pytest.approx(r[i], abs=1e-6)
        assert got["f1"] == pytest.approx(f[i], abs=1e-6)
        assert got["support"] == support[i]
    macro = f1_score(truth, predicted, labels=range(4), average="macro", zero_division=0)
    assert ours["validation_macro_f1"] == pytest.approx(macro, abs=1e-6)
    matrix = confusion_matrix(truth, predicted, labels=range(4)).tolist()
    assert ours["validation_confusion_matrix"] == {"labels": labels, "matrix": matrix}


def test_exact_match_and_best_epoch() -> None:
    assert exact_match([" red ", "blue", "green"], ["red", "blue", "red"]) == pytest.approx(
        2 / 3, abs=1e-6
    )
    history = [
        {"epoch": 1, "validation_loss": 0.9, "validation_macro_f1": 0.5},
        {"epoch": 2, "validation_loss": 0.7, "validation_macro_f1": 0.8},
        {"epoch": 3, "validation_loss": 0.8, "validation_macro_f1": 0.8},
    ]
    assert best_epoch(history, "validation_loss", higher=False) == 2
    assert best_epoch(history, "validation_macro_f1", higher=True) == 2  # the earliest tie


def test_a_lora_checkpoint_holds_only_the_adapter_and_continues_exactly(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    base = tiny_encoder(tmp_path / "base")
    rows = [(r["text"], r["label"]) for r in topic_examples(48, seed=4)]
    labels = sorted({label for _, label in rows})
    s = spec(
        method={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        hyperparameters={"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "seed": 9},
    )

    def trainer() -> Trainer:
        return Trainer(s, base, torch.device("cpu"), rows, labels)

    straight = trainer()
    frozen = {
        n: p.detach().clone() for n, p in straight.model.named_parameters() if not p.requires_grad
    }
    while not straight.done:
        straight.train_step()
    for name, param in straight.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name  # the base never moves

    stopped = trainer()
    for _ in range(7):
        stopped.train_step()
    stopped.keep_best(1)
    files = stopped.save_checkpoint(tmp_path / "ckpt", {"history": []})
    assert sorted(f.name for f in files) == [
        "best.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert saved and all("lora_" in k or "classifier" in k for k in saved)
    assert sum(t.numel() for t in saved.values()) < sum(t.numel() for t in frozen.values()) / 20

    resumed = trainer()
    assert resumed.load_checkpoint(tmp_path / "ckpt")["step"] == 7
    assert resumed.best is not None and resumed.best[0] == 1
    while not resumed.done:
        resumed.train_step()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # select best puts the kept epoch's weights back.
    kept = {n: t.clone() for n, t in resumed.best[1].items()}
    assert resumed.restore_best() == 1
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), kept[name]), name

    out = tmp_path / "adapter"
    resumed.save_model(out)
    names = sorted(p.name for p in out.iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    assert "model.safetensors" not in names and "README.md" not in names
    assert json.loads((out / "barge_adapter.json").read_text())["labels"] == labels


def test_a_merged_export_is_a_full_model_that_answers_as_base_plus_adapter(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from tests.helpers import tiny_generator

    base = tiny_generator(tmp_path / "base")
    rows = [(f"colour of item {i}:", ["red", "blue"][i % 2]) for i in range(16)]
    s = spec(
        task="generate",
        method={"type": "lora", "r": 4, "alpha": 8, "merge": True},
        hyperparameters={"epochs": 1, "batch_size": 8, "learning_rate": 5e-2, "seed": 1},
    )
    trainer = Trainer(s, base, torch.device("cpu"), rows, [])
    while not trainer.done:
        trainer.train_step()
    ids = torch.tensor([[101, 2000, 2001, 2002]])
    trainer.model.eval()
    with torch.no_grad():
        adapted = trainer.model(input_ids=ids).logits
    trainer.save_model(tmp_path / "merged")
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "config.json"} <= names and "adapter_config.json" not in names
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


def test_a_bf16_base_trains_an_fp32_adapter(tmp_path: Path) -> None:
    import torch

    from tests.helpers import tiny_generator

    base = tiny_generator(tmp_path / "base")
    rows = [(f"colour of item {i}:", ["red", "blue"][i % 2]) for i in range(8)]
    s = spec(
        task="generate",
        method={"type": "lora", "base_dtype": "bfloat16"},
        hyperparameters={"epochs": 1, "batch_size": 4, "learning_rate": 1e-2},
    )
    trainer = Trainer(s, base, torch.device("cpu"), rows, [])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    while not trainer.done:
        assert torch.isfinite(trainer.train_step())
    dtypes = {p.dtype for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16}
    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trained.items())
    with pytest.raises(Exception, match="needs a CUDA worker"):
        Trainer(
            spec(task="generate", method={"type": "lora", "quantize": "4bit"}),
            base,
            torch.device("cpu"),
            rows,
            [],
        )


def test_an_adapters_base_is_a_location_the_worker_checks() -> None:
    from services.scopes import locations

    spec_json = {"type": "inference", "input": "s3://data/in.jsonl"}
    found = locations(spec_json, "s3://models/adapter/", "s3://data/out/", "s3://models/base/")
    assert ("model", "s3://models/base/", "read") in found
    assert ("model", "s3://models/adapter/", "read") in found
    assert len(locations(spec_json, "s3://models/adapter/", "s3://data/out/")) == len(found) - 1


def test_the_model_cache_keeps_one_base_and_switches_and_drops_adapters(tmp_path: Path) -> None:
    """Two adapters of one base in one cache: the base loads once, each adapter once onto it;
    with room for one adapter, the least recently used is dropped from the base and loaded
    again when named again; the adapters answer differently."""
    import torch

    from barge.settings import Settings
    from barge.specs import GenerateParams
    from tests.helpers import tiny_generator
    from worker.models import engines
    from worker.models.cache import ModelCache

    def predict(loaded: Any, texts: list[str], params: Any) -> list[dict[str, Any]]:
        """Greedy generation through the engine the runners use, over the adapter's base."""
        engine = engines.build("batched", loaded.model, loaded.tokenizer, loaded.device, settings)
        requests = [
            engines.GenRequest(
                i, loaded.tokenizer(t)["input_ids"], params.max_new_tokens, adapter=loaded.adapter
            )
            for i, t in enumerate(texts)
        ]
        return [{"text": r.text} for r in sorted(engine.run(requests), key=lambda r: r.index)]

    base = tiny_generator(tmp_path / "base")
    for name, word in (("a", "red"), ("b", "blue")):
        s = spec(
            task="generate",
            method={"type": "lora", "r": 4, "alpha": 32},
            hyperparameters={"epochs": 2, "batch_size": 4, "learning_rate": 5e-2, "seed": 1},
        )
        trainer = Trainer(
            s, base, torch.device("cpu"), [(f"item {i}:", word) for i in range(8)], []
        )
        while not trainer.done:
            trainer.train_step()
        trainer.save_model(tmp_path / name)
    settings = Settings(
        local_model_dirs=[tmp_path], adapter_cache_size=1, device="cpu", cache_dir=tmp_path / "c"
    )
    cache = ModelCache(settings, store=None)  # type: ignore[arg-type]  # local models only
    params = GenerateParams(max_new_tokens=2)
    ref = {name: str(tmp_path / name) for name in ("a", "b")}

    a = cache.get(ref["a"], "generate", base=str(base))
    first = predict(a, ["item 3:"], params)[0]["text"]
    b = cache.get(ref["b"], "generate", base=str(base))
    assert b.model is a.model  # one base, two adapters on it
    second = predict(b, ["item 3:"], params)[0]["text"]
    assert cache.loads == {"model": 0, "base": 1, "adapter": 2}
    assert first != second, (first, second)
    assert list(b.model.peft_config) == [b.adapter]  # a was dropped (room for one)
    again = cache.get(ref["a"], "generate", base=str(base))
    assert cache.loads == {"model": 0, "base": 1, "adapter": 3}
    assert predict(again, ["item 3:"], params)[0]["text"] == first
    assert cache.warm() == {"models": 1, "adapters": 1}
    assert cache.held() == [  # the base with its task (its key's head, labels=0, is not one)
        {"model": str(base), "task": "generate", "kind": "base"},
        {"model": ref["a"], "task": "generate", "kind": "adapter", "base": str(base)},
    ]
