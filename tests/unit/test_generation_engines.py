"""The generation engines (``worker.models.engines``) against ``model.generate``: greedy outputs equal
``generate`` on each prompt alone (fp32 on CPU, a tiny Llama and a tiny GPT-2, mixed prompt
lengths, mixed ``max_tokens``, stop strings, per-request seeds), token for token or identical up
to the first position where the reference's top two logits are within 1e-4; sampled outputs are
reproducible for a seed whatever batch they land in; too long is a per-record error; an
out-of-memory error halves the batch and is remembered; cancel stops between steps; LoRA
adapters per request. The vLLM engine and the CUDA paths have tests that skip without them
(``bench/gpu_check.sh`` runs them on a CUDA machine)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from barge.settings import Settings
from tests.helpers import minilm_dir
from worker.models import engines, hf
from worker.models.engines import GenRequest, GenResult, SizeMemory, sampling
from worker.models.engines.batched import BatchedEngine
from worker.models.engines.continuous import ContinuousEngine

CPU = torch.device("cpu")
TIE = 1e-4  # fp32 on CPU: a mismatch is allowed only after the reference's top two were this close
CPU_ENGINES = ("batched", "continuous")


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama(tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(tok: Any) -> Any:
    """A tiny GPT-2 whose end-of-sequence token is one it often makes (so requests end early on
    it, beside those ending at ``max_tokens``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tok.vocab_size,
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    made: dict[int, int] = {}
    for prompt in prompts(6, seed=5):
        for token in reference(model, tok, prompt, 12)[0]:
            made[token] = made.get(token, 0) + 1
    common = max(made, key=made.__getitem__)
    model.generation_config.eos_token_id = common
    model.config.eos_token_id = common
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest, tok: Any) -> Any:
    return tiny_llama(tok) if request.param == "llama" else tiny_gpt2(tok)


def prompts(n: int, seed: int = 1, low: int = 3, high: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 20000) for _ in range(rng.randint(low, high))] for _ in range(n)]


def reference(
    model: Any, tok: Any, prompt: list[int], max_new: int, device: Any = CPU
) -> tuple[list[int], list[float]]:
    """Greedy ``model.generate`` on ``prompt`` alone: its new tokens and, at each position, the
    gap between the top two logits."""
    ids = torch.tensor([prompt], device=device)
    with torch.inference_mode(), hf.autocast(hf.autocast_dtype(device)):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    gaps = []
    for logits in out.logits:
        top = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    return tokens, gaps


def cut_at_stop(
    tok: Any, tokens: list[int], eos: set[int], stops: list[str]
) -> tuple[list[int], str]:
    """The reference's tokens up to the one whose text first holds a stop string, and its text
    cut before that stop (or every token and the whole text)."""

    def text(part: list[int]) -> str:
        return str(tok.decode([t for t in part if t not in eos], skip_special_tokens=True))

    for k in range(1, len(tokens) + 1):
        found = [text(tokens[:k]).find(s) for s in stops if s in text(tokens[:k])]
        if found:
            return tokens[:k], text(tokens[:k])[: min(found)]
    return tokens, text(tokens)


def agrees(got: list[int], want: list[int], gaps: list[float], tie: float) -> bool:
    """``got`` equals ``want`` token for token, or up to the first near-tie of the reference."""
    for position, expected in enumerate(want):
        if gaps[position] < tie:
            return True
        if position >= len(got) or got[position] != expected:
            return False
    return len(got) == len(want)


def build(kind: str, model: Any, tok: Any, budget: int = 4096, rows: int = 4, **kw: Any) -> Any:
    cls = BatchedEngine if kind == "batched" else ContinuousEngine
    return cls(model, tok, kw.pop("device", CPU), token_budget=budget, max_rows=rows, **kw)


def run_all(engine: Any, requests: list[GenRequest], **kw: Any) -> dict[int, GenResult]:
    results: dict[int, GenResult] = {}
    for result in engine.run(requests, **kw):
        assert result.index not in results, f"request {result.index} answered twice"
        results[result.index] = result
    return results


MIXED: dict[int, tuple[list[GenRequest], dict[int, Any]]] = {}


def mixed_requests(model: Any, tok: Any, n: int = 10) -> tuple[list[GenRequest], dict[int, Any]]:
    """Requests of mixed prompt lengths and max_tokens with seeds, a third of them with a stop
    string taken from the middle of their own reference text; and each one's reference (made
    once per model)."""
    if id(model) not in MIXED:
        MIXED[id(model)] = _mixed_requests(model, tok, n)
    return MIXED[id(model)]


def _mixed_requests(model: Any, tok: Any, n: int) -> tuple[list[GenRequest], dict[int, Any]]:
    eos = hf.eos_ids(model, tok)
    rng = random.Random(3)
    requests, refs = [], {}
    for i, prompt in enumerate(prompts(n)):
        max_new = rng.choice([4, 9, 16])
        tokens, gaps = reference(model, tok, prompt, max_new)
        stop: list[str] = []
        words = tok.decode([t for t in tokens if t not in eos], skip_special_tokens=True).split()
        if i % 3 == 0 and len(words) >= 3:
            stop = [words[len(words) // 2]]
        requests.append(GenRequest(i, prompt, max_new, seed=1000 + i, stop=tuple(stop)))
        refs[i] = (tokens, gaps, stop)
    return requests, refs


# --- greedy equivalence --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_greedy_equals_generate_alone(
    kind: str, model: Any, tok: Any, record_property: Callable[[str, Any], None]
) -> None:
    requests, refs = mixed_requests(model, tok)
    eos = hf.eos_ids(model, tok)
    results = run_all(build(kind, model, tok, rows=4), requests)
    assert sorted(results) == [r.index for r in requests]
    whole = 0
    for request in requests:
        tokens, gaps, stop = refs[request.index]
        want, text = cut_at_stop(tok, tokens, eos, stop)
        got = results[request.index]
        assert got.error is None, got.error
        assert agrees(got.token_ids, want, gaps, TIE), (request.index, got.token_ids, want)
        if got.token_ids == want:
            whole += 1
            assert got.text == text
            stopped = (want and want[-1] in eos) or len(want) < len(tokens)
            assert got.finish_reason == ("stop" if stopped else "length")
            assert got.completion_tokens == len(want)
            assert got.prompt_tokens == len(request.prompt_ids)
    record_property("whole_matches", f"{whole}/{len(requests)}")
    print(f"{kind}: {whole}/{len(requests)} requests matched whole")
    assert whole >= len(requests) // 2  # near-ties are rare: most match token for token


def test_stop_strings_end_generation_early(tok: Any) -> None:
    """A request with a stop string stops as soon as its text holds it (fewer tokens counted
    than the reference made) and its text ends before it."""
    model = tiny_llama(tok)
    prompt = prompts(1, seed=9, low=10, high=10)[0]
    tokens, _ = reference(model, tok, prompt, 16)
    words = tok.decode(tokens, skip_special_tokens=True).split()
    stop = words[2]
    for kind in CPU_ENGINES:
        result = run_all(build(kind, model, tok), [GenRequest(0, prompt, 16, stop=(stop,))])[0]
        assert result.finish_reason == "stop"
        assert stop not in result.text
        assert result.completion_tokens < len(tokens)
        assert result.token_ids == tokens[: result.completion_tokens]


# --- sampling ------------------------------------------------------------------------------------


def sampled_requests(n: int = 8) -> list[GenRequest]:
    rng = random.Random(4)
    return [
        GenRequest(
            i,
            p,
            10,
            temperature=rng.choice([0.0, 0.7, 1.3]),
            top_p=rng.choice([1.0, 0.9]),
            seed=rng.randrange(2**40),
        )
        for i, p in enumerate(prompts(n, seed=4))
    ]


@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_sampled_outputs_are_reproducible_for_a_seed(kind: str, tok: Any) -> None:
    model = tiny_llama(tok)
    requests = sampled_requests()
    first = run_all(build(kind, model, tok, rows=8), requests)
    # Another batch: other neighbours, another order, another width.
    again = run_all(build(kind, model, tok, rows=3), list(reversed(requests[2:])))
    for index, result in again.items():
        assert result.token_ids == first[index].token_ids, index
    reseeded = [
        GenRequest(r.index, r.prompt_ids, r.max_new_tokens, r.temperature, r.top_p, r.seed + 1)
        for r in requests
    ]
    other = run_all(build(kind, model, tok, rows=8), reseeded)
    changed = [r.index for r in requests if other[r.index].token_ids != first[r.index].token_ids]
    assert changed and all(requests[i].temperature > 0 for i in changed)


def test_engines_sample_alike(tok: Any) -> None:
    """The batched and continuous engines draw with the same seeded noise: same tokens."""
    model = tiny_llama(tok)
    requests = sampled_requests()
    batched = run_all(build("batched", model, tok), requests)
    continuous = run_all(build("continuous", model, tok), requests)
    assert {i: r.token_ids for i, r in batched.items()} == {
        i: r.token_ids for i, r in continuous.items()
    }


def test_sampler_draws_from_the_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20_000, 1)
    keys = torch.tensor([sampling.row_key(7, step) for step in range(20_000)])
    ones = torch.ones(20_000)
    drawn = sampling.pick(logits, ones, ones, keys)
    frequencies = torch.bincount(drawn, minlength=4).float() / 20_000
    assert torch.allclose(frequencies, torch.softmax(logits[0], -1), atol=0.015), frequencies
    # top-p 0.5 keeps only the most likely token (it holds 66 % of the mass).
    assert set(sampling.pick(logits, ones, ones * 0.5, keys).tolist()) == {2}
    # key 0 is greedy.
    assert set(sampling.pick(logits, ones, ones, torch.zeros(20_000)).tolist()) == {2}


# --- budgets, memory, cancel ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_a_request_too_long_or_empty_fails_alone(kind: str, tok: Any) -> None:
    model = tiny_llama(tok)
    long_prompt = prompts(1, seed=2, low=100, high=100)[0]
    requests = [
        GenRequest(0, prompts(1)[0], 5),
        GenRequest(1, long_prompt, 50),
        GenRequest(2, prompts(1, seed=3)[0], 5),
        GenRequest(3, [], 5),
    ]
    results = run_all(build(kind, model, tok, budget=128), requests)
    assert results[3].error == "the prompt is empty"
    assert results[1].error is not None and "150 tokens" in results[1].error
    assert "BARGE_GENERATION_TOKEN_BUDGET" in results[1].error
    assert results[1].token_ids == [] and results[1].prompt_tokens == 100
    assert results[0].error is None and results[2].error is None
    assert results[0].completion_tokens == 5


class RowLimitedModel(torch.nn.Module):
    """A causal LM that runs out of memory (``torch.OutOfMemoryError``, as CUDA raises it) on
    any forward of more than ``rows`` rows: an injected allocation limit."""

    def __init__(self, model: Any, rows: int):
        super().__init__()
        self.inner = model
        self.rows = rows
        self.refusals = 0
        self.config = model.config
        self.generation_config = model.generation_config

    def forward(self, input_ids: Any, cache: Any = None, **kwargs: Any) -> Any:
        if input_ids.shape[0] > self.rows:
            self.refusals += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory: {input_ids.shape[0]} rows")
        return self.inner(input_ids=input_ids, cache=cache, **kwargs)


def test_out_of_memory_halves_the_batch_and_is_remembered(tok: Any) -> None:
    model = tiny_llama(tok)
    requests = [GenRequest(i, p, 6) for i, p in enumerate(prompts(10, low=5, high=8))]
    plain = run_all(build("batched", model, tok, rows=8), requests)
    sizes = SizeMemory()
    limited = RowLimitedModel(model, rows=3)
    engine = build("batched", limited, tok, rows=8, sizes=sizes, model_key="tiny")
    results = run_all(engine, requests)
    assert {i: r.token_ids for i, r in results.items()} == {
        i: r.token_ids for i, r in plain.items()
    }
    assert limited.refusals > 0
    learnt = sizes.known()
    assert learnt and all(n <= 3 for n in learnt.values()), learnt
    notes = engine.notes()
    assert notes and "out of memory" in notes[0] and engine.notes() == []
    # A later engine (a later shard or job) starts from what was learnt: no more refusals.
    limited.refusals = 0
    later = build("batched", limited, tok, rows=8, sizes=sizes, model_key="tiny")
    assert len(run_all(later, requests)) == len(requests)
    assert limited.refusals == 0


def test_out_of_memory_alone_is_a_per_record_error(tok: Any) -> None:
    limited = RowLimitedModel(tiny_llama(tok), rows=0)
    engine = build("batched", limited, tok, rows=4, sizes=SizeMemory())
    requests = [GenRequest(i, p, 4) for i, p in enumerate(prompts(3))]
    results = run_all(engine, requests)
    assert sorted(results) == [0, 1, 2]
    for request in requests:
        error = results[request.index].error
        assert error is not None and "out of memory" in error
        assert f"{request.tokens} tokens" in error


def test_continuous_out_of_memory_halves_the_batch(tok: Any) -> None:
    """transformers' manager fails the requests of a forward that ran out of memory: the
    engine runs them again with half the requests per batch, remembered; the results equal a
    run without the limit."""
    from transformers import LlamaForCausalLM

    class TokenLimitedLlama(LlamaForCausalLM):
        """Out of memory on any forward of more than ``limit`` tokens (prefill and decode
        tokens of every request in the batch together)."""

        limit = 10**9
        refusals = 0

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs["input_ids"].shape[-1] > self.limit:
                type(self).refusals += 1
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return super().forward(*args, **kwargs)

    plain = tiny_llama(tok)
    limited = TokenLimitedLlama(plain.config).eval()
    limited.load_state_dict(plain.state_dict())
    requests = [GenRequest(i, p, 4) for i, p in enumerate(prompts(8, low=10, high=10))]
    want = run_all(build("continuous", plain, tok, rows=8), requests)
    TokenLimitedLlama.limit = 25  # two 10-token prompts prefill together; three do not
    sizes = SizeMemory()
    engine = build("continuous", limited, tok, rows=8, sizes=sizes, model_key="tiny")
    got = run_all(engine, requests)
    assert TokenLimitedLlama.refusals > 0
    assert {i: r.token_ids for i, r in got.items()} == {i: r.token_ids for i, r in want.items()}
    assert sizes.known() and all(n <= 4 for n in sizes.known().values())
    assert any("out of memory" in note for note in engine.notes())


@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_cancel_stops_between_steps(kind: str, tok: Any) -> None:
    model = tiny_llama(tok)
    requests = [GenRequest(i, p, 30) for i, p in enumerate(prompts(12))]
    seen: list[GenResult] = []
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 5

    for result in build(kind, model, tok, rows=4).run(requests, should_stop):
        seen.append(result)
    assert len(asked) > 5  # it was asked, and stopped soon after it said stop
    assert len(seen) < len(requests)


# --- adapters ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_model(tok: Any) -> Any:
    """The tiny GPT-2 with two LoRA adapters ("first", "second"), each changing its outputs."""
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt2(tok)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, config, adapter_name="first")
    torch.manual_seed(2)
    peft_model.add_adapter("second", config)
    return peft_model.eval()


def adapter_reference(model: Any, tok: Any, adapter: str | None, prompt: list[int], n: int) -> Any:
    if adapter is None:
        with model.disable_adapter():
            return reference(model, tok, prompt, n)
    model.set_adapter(adapter)
    return reference(model, tok, prompt, n)


@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_adapters_per_request(kind: str, lora_model: Any, tok: Any) -> None:
    """Requests through two adapters and the base, mixed in one call: each equals generate with
    its own adapter (and they differ from each other)."""
    names = [None, "first", "second"]
    requests = [GenRequest(i, p, 8, adapter=names[i % 3]) for i, p in enumerate(prompts(9, seed=6))]
    results = run_all(build(kind, lora_model, tok, rows=4), requests)
    for request in requests:
        want, gaps = adapter_reference(
            lora_model, tok, request.adapter, list(request.prompt_ids), 8
        )
        assert agrees(results[request.index].token_ids, want, gaps, TIE), request
    one = list(requests[0].prompt_ids)
    outs = {name: adapter_reference(lora_model, tok, name, one, 8)[0] for name in names}
    assert len({tuple(v) for v in outs.values()}) == 3, "the adapters must change the outputs"
    unknown = run_all(build(kind, lora_model, tok), [GenRequest(0, one, 4, adapter="zzz")])
    assert unknown[0].error == "adapter zzz is not loaded"


# --- the choice ----------------------------------------------------------------------------------


def test_auto_picks_per_device() -> None:
    assert engines.choose("auto", CPU) == "batched"
    cuda = engines.choose("auto", torch.device("cuda"))
    assert cuda == ("vllm" if engines.vllm_installed() else "continuous")
    for name in engines.ENGINES:
        assert engines.choose(name, CPU) == name


def test_settings_name_the_engine_and_budget(monkeypatch: pytest.MonkeyPatch, tok: Any) -> None:
    monkeypatch.setenv("BARGE_GENERATION_ENGINE", "continuous")
    monkeypatch.setenv("BARGE_GENERATION_TOKEN_BUDGET", "2048")
    settings = Settings()
    assert settings.generation_engine == "continuous"
    engine = engines.build(settings.generation_engine, tiny_llama(tok), tok, CPU, settings)
    assert engine.name == "continuous" and engine.token_budget == 2048
    monkeypatch.setenv("BARGE_GENERATION_ENGINE", "fastest")
    with pytest.raises(ValueError, match="generation_engine"):
        Settings()


def test_finisher_confirms_a_stop_on_the_whole_text(tok: Any) -> None:
    """A stop string found in the decoded tail ends the request only when the whole text holds
    it; the text is cut before its first occurrence."""
    ids = tok("the river runs north", add_special_tokens=False)["input_ids"]
    request = GenRequest(0, [1, 2], 10, stop=("runs",))
    finisher = engines.Finisher(request, tok, set())
    done = [finisher.add(t) for t in ids]
    assert done.index(True) == ids.index(tok.convert_tokens_to_ids("runs"))
    result = finisher.result()
    assert result.text == "the river " and result.finish_reason == "stop"


# --- CUDA and vLLM (skipped without them; bench/gpu_check.sh runs them) --------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA_TIE = 5e-2  # autocast (bf16/fp16) on CUDA: near-ties are wider


@needs_cuda
@pytest.mark.parametrize("kind", CPU_ENGINES)
def test_cuda_greedy_equals_generate_alone(kind: str, tok: Any) -> None:
    device = torch.device("cuda")
    model = tiny_llama(tok).to(device)
    requests = [GenRequest(i, p, 12) for i, p in enumerate(prompts(10))]
    results = run_all(build(kind, model, tok, device=device), requests)
    whole = 0
    for request in requests:
        want, gaps = reference(model, tok, list(request.prompt_ids), 12, device)
        assert agrees(results[request.index].token_ids, want, gaps, CUDA_TIE), request.index
        whole += results[request.index].token_ids == want
    print(f"{kind} on CUDA: {whole}/{len(requests)} requests matched whole")


def test_vllm_sizing(tok: Any) -> None:
    """What the vLLM engine asks of vLLM, worked out without it: the KV bytes of the token
    budget, and how many GPUs a model is split over (one when it fits)."""
    from worker.models.engines.vllm import kv_bytes_per_token, tensor_parallel

    config = tiny_llama(tok).config  # 2 layers, 2 key/value heads of 16 dims
    assert kv_bytes_per_token(config) == 2 * 2 * 2 * 16 * 2
    assert kv_bytes_per_token(config, 4) == 2 * 2 * 2 * 16 * 4
    gib = 2**30
    assert tensor_parallel(10 * gib, [80 * gib] * 4, heads=32) == 1
    assert tensor_parallel(100 * gib, [80 * gib] * 4, heads=32) == 2
    assert tensor_parallel(200 * gib, [80 * gib] * 4, heads=32) == 4
    assert tensor_parallel(300 * gib, [80 * gib] * 4, heads=6) == 2  # 4 does not divide 6
    assert tensor_parallel(10 * gib, [], heads=32) == 1


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Iterator[Any]:
    if not torch.cuda.is_available():
        pytest.skip("the vLLM engine needs a CUDA device")
    pytest.importorskip("vllm", reason="the vLLM engine needs the vllm extra")
    from worker.models.engines.vllm import VllmEngine

    path = Path(tmp_path_factory.mktemp("vllm")) / "llama"
    model = tiny_llama(tok)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    yield VllmEngine(path, tok, token_budget=4096, max_rows=8, dtype="float32"), model


def test_vllm_greedy_equals_generate_alone(vllm_engine: Any, tok: Any) -> None:
    engine, model = vllm_engine
    requests = [GenRequest(i, p, 12) for i, p in enumerate(prompts(10))]
    results = run_all(engine, requests)
    whole = 0
    for request in requests:
        want, gaps = reference(model, tok, list(request.prompt_ids), 12)
        assert agrees(results[request.index].token_ids, want, gaps, 1e-3), request.index
        whole += results[request.index].token_ids == want
    print(f"vllm: {whole}/{len(requests)} requests matched whole")


def test_vllm_sampled_reproducible_too_long_and_cancel(vllm_engine: Any) -> None:
    engine, _ = vllm_engine
    requests = sampled_requests()
    first = run_all(engine, requests)
    again = run_all(engine, list(reversed(requests[2:])))
    assert all(again[i].token_ids == first[i].token_ids for i in again)
    long_prompt = prompts(1, seed=2, low=200, high=200)[0]
    too_long = run_all(engine, [GenRequest(0, long_prompt, 4000)])[0]
    assert too_long.error is not None and "4200 tokens" in too_long.error
    stopped = list(
        engine.run([GenRequest(i, p, 200) for i, p in enumerate(prompts(8))], lambda: True)
    )
    assert stopped == []
