"""The OpenAI batch kind's run step: one shard of an OpenAI batch (a job whose spec has
``openai_endpoint``). Each record is a request line ``{custom_id, method, url, body}``; each
result is an OpenAI batch output line ``{id, custom_id, response: {status_code, request_id,
body}, error}``, in the shard's part, or in its errors file when the request failed alone (bad
parameters, too long: a 4xx with a message).

Embeddings requests run in length-sorted batches (any parameters). Chat and completions requests
run through the worker's generation engine (``worker.runners.generation``), a window's requests
at once, each with its own ``max_tokens``, ``temperature``, ``top_p``, ``seed`` and ``stop``
(greedy outputs equal ``model.generate`` on each prompt alone); a request longer than the
engine's token budget is a 400 line naming its token count. Chat messages are rendered with the
model's chat template. Every response carries ``usage`` counted with the model's tokenizer, and
the shard's token counts go to its heartbeat and usage.

At finalize the parts are joined into one output and one error file (the kind's finalize step,
``worker.kinds.openai_batch``).

Imports: ``barge``, ``db``, ``services.openai_batches``, ``worker.*``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, describe
from barge.records import Record, iter_range
from barge.specs import InferenceSpec
from services import openai_requests
from services.openai_requests import RequestError
from worker import metrics
from worker.context import WorkerContext
from worker.kinds.openai_batch import line_id
from worker.lease import Lease, Result, ShardWork, Stop
from worker.models import chat, hf
from worker.models.cache import cache_for
from worker.models.engines import GenResult
from worker.models.loaded import LoadedModel
from worker.runners.generation import ShardGeneration
from worker.runners.records import WINDOW_BATCHES
from worker.shard import JsonlPart, ShardRun, input_info, prefetch, windows

MAX_STOP = 4
MAX_DEFAULT_TOKENS = 4096  # max_tokens when a request names none: what is left, at most this


@dataclass
class Request:
    """One request line, parsed: where it sits in the window and what to run."""

    at: int  # index in the window
    custom_id: str
    body: dict[str, Any]
    inputs: list[list[int]] = field(default_factory=list)  # embeddings: token ids per input
    tokens: list[int] = field(default_factory=list)  # embeddings: per input
    prompt_ids: list[int] = field(default_factory=list)  # generation
    max_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    spec = work.spec
    assert isinstance(spec, InferenceSpec) and spec.openai_endpoint is not None
    loaded = cache_for(ctx).get(work.model_ref, spec.task, base=work.base_ref)
    if loaded.read is not None:
        raise PermanentJobError(
            f"model {work.model_ref} is an ONNX model; OpenAI batches need a Hugging Face model"
        )
    info = input_info(ctx, work)
    with ctx.scratch() as tmp:
        shard = _BatchShard(ctx, work, lease, loaded, tmp)
        window_size = spec.batch_size * WINDOW_BATCHES
        records = prefetch(iter_range(ctx.store, info, work.fmt, work.rng), window_size * 2)
        return shard.upload(shard.process(records, window_size), usage=shard.usage or None)


class _BatchShard(ShardRun[LoadedModel]):
    """One OpenAI batch shard's run (``worker.shard.ShardRun``): request lines in, OpenAI
    output lines out (always JSONL)."""

    def __init__(
        self, ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: LoadedModel, tmp: Path
    ):
        super().__init__(ctx, work, lease, loaded, tmp, JsonlPart(tmp / "part"))
        assert self.spec.openai_endpoint is not None
        self.endpoint: str = self.spec.openai_endpoint
        self.created = int(time.time())
        self.usage: dict[str, int] = {}  # tokens of the requests generated so far
        lease.tokens = self.usage  # the heartbeat reads the tokens so far (tokens/s over time)
        self._generation: ShardGeneration | None = None

    # --- the shard -----------------------------------------------------------------------------

    def process(self, records: Iterator[Record], window_size: int) -> Stop | None:
        """Every request, window by window; the ``Stop`` that cut the shard short, if any."""
        return self.walk(windows(records, window_size), self._window)

    def _window(self, window: list[Record]) -> None:
        """Parse the window's requests, run them (embeddings in length-sorted batches, chat and
        completions through the generation engine, all at once), write the lines in input
        order (whatever finished, even when stopping mid-window)."""
        lines: list[tuple[bool, dict[str, Any]] | None] = [None] * len(window)
        todo: list[Request] = []
        for i, rec in enumerate(window):
            custom_id = str((rec.data or {}).get("custom_id", f"line-{rec.line}"))
            try:
                todo.append(self._parse(i, custom_id, rec))
            except RequestError as exc:
                lines[i] = (False, self._error_line(custom_id, 400, exc))
        try:
            if self.endpoint == "/v1/embeddings":
                self._embed_window(todo, lines)
            else:
                self._generate_window(todo, lines)
        finally:
            self.part.write_rows([line for ok, line in filter(None, lines) if ok])
            self.errors.write_rows([line for ok, line in filter(None, lines) if not ok])
            self.lease.succeeded = self.part.count
            self.lease.failed = self.errors.count

    def _progress(self, lines: list[tuple[bool, dict[str, Any]] | None]) -> None:
        """The lease's counts (the heartbeat records them): written parts and finished lines."""
        self.lease.succeeded = self.part.count + sum(1 for x in lines if x is not None and x[0])
        self.lease.failed = self.errors.count + sum(1 for x in lines if x is not None and not x[0])

    def _embed_window(
        self, todo: list[Request], lines: list[tuple[bool, dict[str, Any]] | None]
    ) -> None:
        ordered = sorted(todo, key=lambda r: sum(r.tokens))
        for start in range(0, len(ordered), self.spec.batch_size):
            self.next_batch()
            batch = ordered[start : start + self.spec.batch_size]
            for req, outcome in zip(batch, self._run_isolating(batch), strict=True):
                lines[req.at] = outcome
            self._progress(lines)

    def _generate_window(
        self, todo: list[Request], lines: list[tuple[bool, dict[str, Any]] | None]
    ) -> None:
        """Every request of the window through the engine at once; each line is made as its
        request finishes, a request the engine refuses (too long for its token budget) is a
        400 line naming its token count, one that failed in the model a 500 line."""
        if not todo:
            return
        self.next_batch()
        gen = self.generation()
        by_index = {req.at: req for req in todo}
        started = time.monotonic()

        def take(result: GenResult) -> None:
            req = by_index[result.index]
            if result.error is not None:
                if result.refused:  # the request asked for more than the engine holds
                    error = RequestError(result.error, "max_tokens", "context_length_exceeded")
                else:
                    error = RequestError(f"the model failed on this request: {result.error}")
                status = 400 if result.refused else 500
                lines[req.at] = (False, self._error_line(req.custom_id, status, error))
            else:
                body = self._completion_body(
                    req, result.text, result.finish_reason, result.completion_tokens
                )
                lines[req.at] = (True, self._ok_line(req.custom_id, body))
                for k, n in _usage(result).items():
                    self.usage[k] = self.usage.get(k, 0) + n
            self._progress(lines)

        try:
            gen.run((gen.request(req.at, req.prompt_ids, req) for req in todo), take)
        finally:
            done: list[tuple[bool, Any]] = [(True, x) for x in lines if x is not None and x[0]]
            metrics.observe_batch(
                self.loaded.task, time.monotonic() - started, done, self.loaded.device
            )

    def generation(self) -> ShardGeneration:
        """The shard's generation engine, made for its first window that generates."""
        if self._generation is None:
            self._generation = ShardGeneration(self.ctx, self.work, self.lease, self.loaded)
        return self._generation

    # --- requests ------------------------------------------------------------------------------

    def _parse(self, at: int, custom_id: str, rec: Record) -> Request:
        if rec.data is None:
            raise RequestError(rec.error or "unreadable line", code="invalid_json_line")
        body = rec.data.get("body")
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object", "body")
        openai_requests.check_parameters(self.endpoint, body)
        req = Request(at=at, custom_id=custom_id, body=body)
        if self.endpoint == "/v1/embeddings":
            self._parse_embeddings(req)
        else:
            self._parse_generation(req)
        return req

    def _limit(self) -> int | None:
        return self.loaded.max_positions

    def _parse_embeddings(self, req: Request) -> None:
        body = req.body
        inputs = openai_requests.embedding_inputs(body.get("input"))
        if body.get("encoding_format", "float") not in ("float", "base64"):
            raise RequestError("encoding_format must be float or base64", "encoding_format")
        limit = self._limit()
        tok = self.loaded.tokenizer
        for text in inputs:
            if not isinstance(text, str):  # token ids, as the model's tokenizer makes them
                openai_requests.check_token_ids(text, len(tok), "input")
            elif len(text) > self.ctx.settings.max_text_chars:
                raise RequestError(
                    f"an input has {len(text)} characters, more than "
                    f"{self.ctx.settings.max_text_chars}",
                    "input",
                    "context_length_exceeded",
                )
            ids = text if not isinstance(text, str) else tok(text, truncation=False)["input_ids"]
            n = len(ids)
            if limit is not None and n > limit:
                raise RequestError(
                    f"an input has {n} tokens; this model takes at most {limit}",
                    "input",
                    "context_length_exceeded",
                )
            req.tokens.append(n)
            req.inputs.append(list(ids))

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """The request's prompt as token ids: its chat messages rendered with the model's
        template, or its completion prompt (text, or token ids as the tokenizer makes them)."""
        tok = self.loaded.tokenizer
        if self.endpoint == "/v1/chat/completions":
            try:
                messages = chat.parse_messages(body.get("messages"))
                if not chat.has_template(tok):
                    raise RequestError(
                        "this model has no chat template; use /v1/completions", "model"
                    )
                rendered = chat.render(tok, messages)
            except chat.MessagesError as exc:
                raise RequestError(exc.message, exc.param) from None
            return list(tok(rendered, add_special_tokens=False)["input_ids"])
        prompt = openai_requests.prompt_of(body.get("prompt"))
        if isinstance(prompt, str):
            return list(tok(prompt)["input_ids"])
        openai_requests.check_token_ids(prompt, len(tok), "prompt")
        return prompt

    def _parse_generation(self, req: Request) -> None:
        body = req.body
        req.prompt_ids = self._prompt_ids(body)
        limit = self._limit()
        room = (limit - len(req.prompt_ids)) if limit is not None else MAX_DEFAULT_TOKENS
        if room < 1:
            raise RequestError(
                f"the prompt has {len(req.prompt_ids)} tokens; this model takes at most {limit}",
                "messages" if self.endpoint == "/v1/chat/completions" else "prompt",
                "context_length_exceeded",
            )
        wanted = body.get("max_completion_tokens", body.get("max_tokens"))
        if wanted is None:
            wanted = min(room, MAX_DEFAULT_TOKENS)
        if not _is_int(wanted) or wanted < 1:
            raise RequestError("max_tokens must be a positive integer", "max_tokens")
        if wanted > room:
            raise RequestError(
                f"the prompt has {len(req.prompt_ids)} tokens and max_tokens is {wanted}: more "
                f"than the {limit} this model takes",
                "max_tokens",
                "context_length_exceeded",
            )
        req.max_new_tokens = wanted
        req.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if req.top_p == 0:
            raise RequestError("top_p must be above 0", "top_p")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise RequestError("seed must be an integer", "seed")
        req.seed = (
            int(seed) % 2**63
            if seed is not None
            else uuid.uuid5(self.work.job_id, req.custom_id).int % 2**63
        )
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stops, list) or len(stops) > MAX_STOP:
            raise RequestError("stop must be a string or a list of at most 4 strings", "stop")
        if not all(isinstance(s, str) and s for s in stops):
            raise RequestError("stop must hold non-empty strings", "stop")
        req.stop = stops

    # --- running -------------------------------------------------------------------------------

    def _run_isolating(self, batch: list[Request]) -> list[tuple[bool, dict[str, Any]]]:
        """The lines of a batch of embeddings requests; if the model fails on it, retry one by
        one so a bad request fails alone (a 500 line)."""
        loaded = self.loaded
        started = time.monotonic()
        try:
            bodies = self._embed(batch)
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            if len(batch) == 1:
                error = RequestError(f"the model failed on this request: {describe(exc)}")
                return [(False, self._error_line(batch[0].custom_id, 500, error))]
            return [line for req in batch for line in self._run_isolating([req])]
        metrics.observe_batch(
            loaded.task,
            time.monotonic() - started,
            [(True, b) for b in bodies],
            loaded.device,
        )
        return [
            (True, self._ok_line(req.custom_id, body))
            for req, body in zip(batch, bodies, strict=True)
        ]

    def _embed(self, batch: list[Request]) -> list[dict[str, Any]]:
        inputs = [ids for req in batch for ids in req.inputs]
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), self.spec.batch_size):
            vectors.extend(self._embed_ids(inputs[start : start + self.spec.batch_size]))
        bodies = []
        at = 0
        for req in batch:
            mine = vectors[at : at + len(req.inputs)]
            at += len(req.inputs)
            base64_out = req.body.get("encoding_format") == "base64"
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64(v) if base64_out else v,
                }
                for i, v in enumerate(mine)
            ]
            used = sum(req.tokens)
            bodies.append(
                {
                    "object": "list",
                    "data": data,
                    "model": req.body["model"],
                    "usage": {"prompt_tokens": used, "total_tokens": used},
                }
            )
        return bodies

    def _embed_ids(self, inputs: list[list[int]]) -> list[list[float]]:
        """Mean-pooled, L2-normalised embeddings of token ids (a text's are its tokenizer's:
        the same vectors as ``predict`` makes of the text)."""
        import torch

        loaded = self.loaded
        enc = loaded.tokenizer.pad({"input_ids": inputs}, return_tensors="pt").to(loaded.device)
        loaded.activate()
        with torch.inference_mode(), loaded.autocast():
            mask = enc["attention_mask"]
            hidden = loaded.model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
            pooled = hf.mean_pool(hidden, mask).float()
            return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist()  # type: ignore[no-any-return]

    def _completion_body(
        self, req: Request, text: str, finish: str, completion_tokens: int
    ) -> dict[str, Any]:
        usage = {
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(req.prompt_ids) + completion_tokens,
        }
        rid = line_id(self.work.job_id, req.custom_id, "completion")
        if self.endpoint == "/v1/chat/completions":
            return {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "created": self.created,
                "model": req.body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        return {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": self.created,
            "model": req.body["model"],
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }

    # --- lines ---------------------------------------------------------------------------------

    def _ok_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"batch_req_{line_id(self.work.job_id, custom_id, 'line')}",
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": line_id(self.work.job_id, custom_id, "request"),
                "body": body,
            },
            "error": None,
        }

    def _error_line(self, custom_id: str, status: int, error: RequestError) -> dict[str, Any]:
        return {
            "id": f"batch_req_{line_id(self.work.job_id, custom_id, 'line')}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": line_id(self.work.job_id, custom_id, "request"),
                "body": {
                    "error": {
                        "message": error.message,
                        "type": "invalid_request_error" if status < 500 else "server_error",
                        "param": error.param,
                        "code": error.code,
                    }
                },
            },
            "error": None,
        }


def _usage(result: GenResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number", name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}", name)
    return float(value)


def _base64(vector: list[float]) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
