"""How inference models load: weights in their stored dtype on CUDA and fp32 on CPU, their size
read from the safetensors headers, and a model that does not fit refused before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from barge.errors import PermanentJobError
from barge.settings import Settings
from tests.helpers import minilm_dir
from worker.models import hf, text
from worker.models.cache import load_options


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT saved in bf16, with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("bf16") / "model"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).to(torch.bfloat16).save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def _params(path: Path) -> int:
    return hf.stored_parameters(path)


def test_weight_bytes_as_stored_and_widened(bf16_model: Path) -> None:
    n = _params(bf16_model)
    assert hf.weight_bytes(bf16_model) == 2 * n
    assert hf.weight_bytes(bf16_model, element_bytes=4) == 4 * n
    stored_fp32 = minilm_dir()  # fp32 weights and an int64 position_ids buffer
    assert hf.weight_bytes(stored_fp32) == hf.weight_bytes(stored_fp32, element_bytes=4)
    assert hf.weight_bytes(stored_fp32, element_bytes=2) < hf.weight_bytes(stored_fp32)


def test_cpu_loads_fp32_and_cuda_keeps_the_stored_dtype(bf16_model: Path) -> None:
    options = load_options(Settings(), bf16_model, torch.device("cpu"), "m")
    assert options == {"dtype": torch.float32}
    loaded = text.load_model(bf16_model, "embed", torch.device("cpu"), "m", "r", options)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    if torch.cuda.is_available():
        cuda = load_options(Settings(device_map="auto"), bf16_model, torch.device("cuda"), "m")
        assert cuda == {"dtype": "auto", "device_map": "auto"}
        on_gpu = text.load_model(bf16_model, "embed", torch.device("cuda"), "m", "r", cuda)
        assert {p.dtype for p in on_gpu.model.parameters()} == {torch.bfloat16}


def test_a_model_that_does_not_fit_is_refused_before_loading(bf16_model: Path) -> None:
    need = hf.weight_bytes(bf16_model, element_bytes=4)
    tight = Settings(model_memory_bytes=need - 1)
    with pytest.raises(PermanentJobError) as caught:
        load_options(tight, bf16_model, torch.device("cpu"), "s3://models/tiny/")
    message = caught.value.message
    assert "model s3://models/tiny/ does not fit" in message
    assert "BARGE_MODEL_MEMORY_BYTES" in message
    assert load_options(Settings(model_memory_bytes=need), bf16_model, torch.device("cpu"), "m")


def test_a_time_limit_wrapped_by_a_library_is_still_the_time_limit() -> None:
    """transformers' lazy import turns whatever interrupts it into "Could not import module
    'BertModel'"; when that was the shard's soft time limit, the shard says so."""
    from celery.exceptions import SoftTimeLimitExceeded

    from worker.lifecycle import time_ran_out

    def wrapped() -> BaseException:
        try:
            try:
                raise SoftTimeLimitExceeded()
            except SoftTimeLimitExceeded as inner:
                raise RuntimeError("Could not import module 'BertModel'") from inner
        except RuntimeError as outer:
            try:
                raise PermanentJobError(f"cannot load model: {outer}") from outer
            except PermanentJobError as exc:
                return exc

    assert time_ran_out(wrapped())
    assert time_ran_out(SoftTimeLimitExceeded())
    assert not time_ran_out(PermanentJobError("cannot load model: bad config.json"))
    try:
        try:
            raise ValueError("a record's fault")
        except ValueError:
            raise RuntimeError("during handling") from None
    except RuntimeError as plain:
        assert not time_ran_out(plain)
