"""What one request of an OpenAI batch may ask, per endpoint, checked before it runs: the
parameters Barge runs, those it accepts because they ask nothing of the output, and every
other one refused with a 400 naming it, never silently ignored; and the shapes ``input`` and
``prompt`` take (text, or token ids as the model's tokenizer makes them). Pure Python: the
worker checks each request line with it, and a refused request fails alone (an error-file
line with OpenAI's error body).

Imports: ``barge`` only.
"""

from __future__ import annotations

import json
from typing import Any

from barge.errors import EXCERPT_CHARS, excerpt

EMBEDDINGS, CHAT, COMPLETIONS = "/v1/embeddings", "/v1/chat/completions", "/v1/completions"
MAX_INPUTS = 2048  # texts (or token arrays) in one embeddings request, as OpenAI allows

# The parameters each endpoint runs.
RUN: dict[str, tuple[str, ...]] = {
    EMBEDDINGS: ("model", "input", "encoding_format"),
    CHAT: (
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
    ),
    COMPLETIONS: ("model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop"),
}
# Accepted everywhere and without effect: whom a request is for and OpenAI's own bookkeeping,
# which ask nothing of the output.
BOOKKEEPING = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")
# The parameters of each endpoint that Barge does not run, each with the values that ask for
# nothing, which pass (as does null, "not given", for every one).
CHAT_OFF: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "stream": (False,),
    "stream_options": (),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),  # no tools run, so none run in parallel
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
}
OFF: dict[str, dict[str, tuple[Any, ...]]] = {
    EMBEDDINGS: {"dimensions": ()},
    CHAT: CHAT_OFF,
    COMPLETIONS: {
        "n": (1,),
        "best_of": (1,),
        "stream": (False,),
        "stream_options": (),
        "logprobs": (),
        "echo": (False,),
        "suffix": ("",),
        "presence_penalty": (0,),
        "frequency_penalty": (0,),
        "logit_bias": ({},),
    },
}


class RequestError(Exception):
    """A request that fails alone: what is wrong, the parameter at fault and OpenAI's code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _same(value: Any, wanted: Any) -> bool:
    """JSON equality, where ``true`` is not ``1`` and ``0`` is ``0.0``."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def _json_excerpt(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= EXCERPT_CHARS else f"{text[:EXCERPT_CHARS]}…"


def check_parameters(endpoint: str, body: dict[str, Any]) -> None:
    """Refuse the first parameter of ``body`` that Barge would not honour: one it does not
    run (``unsupported_parameter``, saying which values would pass) or one the endpoint does
    not have (``unknown_parameter``)."""
    off = OFF[endpoint]
    for name, value in body.items():
        if name in RUN[endpoint] or name in BOOKKEEPING or value is None:
            continue
        if name not in off:
            raise RequestError(
                f"{excerpt(name)} is not a parameter of {endpoint}", name, "unknown_parameter"
            )
        passing = off[name]
        if not any(_same(value, v) for v in passing):
            shown = " or ".join(json.dumps(v) for v in passing)
            allowed = f"leave it out or set it to {shown}" if shown else "leave it out"
            raise RequestError(
                f"{name} {_json_excerpt(value)} is not supported by Barge; {allowed}",
                name,
                "unsupported_parameter",
            )


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def embedding_inputs(value: Any) -> list[str | list[int]]:
    """``input`` as OpenAI takes it: a string, a list of strings, one array of token ids or a
    list of them; never empty, nor an empty string."""
    if isinstance(value, str) or _token_ids(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestError(
            "input must be a non-empty string, a list of them, an array of token ids or a "
            "list of them",
            "input",
        )
    if len(value) > MAX_INPUTS:
        raise RequestError(f"input may hold at most {MAX_INPUTS} items", "input")
    for i, item in enumerate(value):
        if item == "":
            raise RequestError(f"input[{i}] is empty: there is nothing to embed", "input")
        if not isinstance(item, str) and not _token_ids(item):
            raise RequestError(
                f"input[{i}] must be a non-empty string or a non-empty array of token ids",
                "input",
            )
    return value


def prompt_of(value: Any) -> str | list[int]:
    """``prompt`` as OpenAI takes it: a string or an array of token ids, alone or as the one
    item of a list (several prompts in one request are refused: one request per prompt)."""
    if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        if len(value) > 1:
            raise RequestError(
                "several prompts in one request are not supported by Barge; send one request "
                "per prompt",
                "prompt",
                "unsupported_parameter",
            )
        value = value[0]
    if isinstance(value, str) and value:
        return value
    if _token_ids(value):
        return list(value)
    raise RequestError(
        "prompt must be a non-empty string or a non-empty array of token ids", "prompt"
    )


def check_token_ids(ids: list[int], vocabulary: int, param: str) -> None:
    """Token ids must be ids of the model's vocabulary (``0`` to ``vocabulary - 1``)."""
    bad = next((t for t in ids if not 0 <= t < vocabulary), None)
    if bad is not None:
        raise RequestError(
            f"{param} holds token id {bad}, outside this model's vocabulary (0 to "
            f"{vocabulary - 1})",
            param,
        )
