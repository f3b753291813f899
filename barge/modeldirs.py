"""Model directories: what is in one, and whether Barge can load it (no torch here)."""

from __future__ import annotations

import json
from typing import Any

from barge.errors import PermanentJobError
from barge.settings import Settings
from barge.storage import ObjectStore, S3Uri, iter_prefix_files, local_model_dir

PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA adapter; its weights are the file below
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# The files of a model directory a worker copies and loads: top-level only, these names or
# safetensors weights. Anything else (READMEs, pickles, nested folders, odd keys) is never
# written to the worker's disk.
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "preprocessor_config.json",
        "chat_template.jinja",  # a chat model's template (transformers >= 4.49 saves it here)
        "chat_template.json",
        "training_summary.json",
        "model.onnx",  # an ONNX model directory: the graph and its barge.json (barge.onnxdirs)
        "barge.json",
        "adapter_config.json",  # a LoRA adapter (its weights: adapter_model.safetensors)
        "barge_adapter.json",  # a LoRA adapter's task and labels, written by Barge
    }
)


def is_model_file(relative: str) -> bool:
    """Whether ``relative`` (a path inside a model directory) is one a worker copies."""
    return "/" not in relative and (
        relative in MODEL_FILES
        or (relative.endswith(".safetensors") and relative != ".safetensors")
    )


def list_model_files(settings: Settings, store: ObjectStore, ref: str) -> dict[str, str]:
    """Relative path → fingerprint (ETag or mtime/size) of every file in the model directory."""
    local = local_model_dir(settings, ref)
    if local is not None:
        if not local.is_dir():
            return {}
        return {
            str(p.relative_to(local)): f"{p.stat().st_mtime_ns}-{p.stat().st_size}"
            for p in sorted(local.rglob("*"))
            if p.is_file()
        }
    uri = S3Uri.parse(ref, field="model")
    return {rel: info.etag for info, rel in iter_prefix_files(store, uri) if rel}


MAX_JSON_BYTES = 16 << 20  # a config or tokenizer config read to check a directory
# The architectures (config.json) of a causal language model: what a generate fine-tune trains.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def read_json(settings: Settings, store: ObjectStore, ref: str, name: str) -> Any:
    """The parsed JSON file ``name`` of model directory ``ref`` (a local directory or an s3://
    prefix); None when it has none, it is over MAX_JSON_BYTES or it is not JSON."""
    local = local_model_dir(settings, ref)
    if local is not None:
        path = local / name
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        data = path.read_bytes()
    else:
        uri = S3Uri.parse(ref, field="model").as_prefix().join(name)
        info = store.head(uri)
        if info is None or info.size > MAX_JSON_BYTES:
            return None
        data = store.get_bytes(uri)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def causal_lm_problem(settings: Settings, store: ObjectStore, ref: str, chat: bool) -> str | None:
    """Why the model directory at ``ref`` cannot be trained to generate text: it is no causal
    language model (an embedding encoder, a classifier, a seq2seq model), or, for ``chat``
    examples, it has no chat template. None when it can, or when its config does not say."""
    config = read_json(settings, store, ref, "config.json")
    names = config.get("architectures") if isinstance(config, dict) else None
    if (
        isinstance(names, list)
        and names
        and not any(isinstance(n, str) and n.endswith(CAUSAL_LM_SUFFIXES) for n in names)
    ):
        return (
            f"{ref} is a {', '.join(map(str, names[:3]))}, not a causal language model "
            f"(*{' or *'.join(CAUSAL_LM_SUFFIXES)}): it cannot learn to generate text"
        )
    if not chat:
        return None
    tokenizer = read_json(settings, store, ref, "tokenizer_config.json")
    files = list_model_files(settings, store, ref)
    if not (
        "chat_template.jinja" in files
        or "chat_template.json" in files
        or (isinstance(tokenizer, dict) and tokenizer.get("chat_template"))
    ):
        return (
            f"{ref} has no chat template (chat_template.jinja, or chat_template in "
            "tokenizer_config.json), which chat examples need; train on "
            '{"prompt", "completion"} examples, or choose a chat model'
        )
    return None


def is_onnx_dir(files: dict[str, str] | set[str] | list[str]) -> bool:
    """Whether a model directory (its relative file names) is an ONNX one (``model.onnx``)."""
    return "model.onnx" in files


def check_model_files(ref: str, files: dict[str, str]) -> None:
    """Refuse a directory that is neither a loadable safetensors Hugging Face model nor an ONNX
    one (``model.onnx`` + ``barge.json``, checked further by ``barge.onnxdirs``), saying why."""
    if not files:
        raise PermanentJobError(f"model directory {ref} is empty or does not exist")
    if is_onnx_dir(files):
        if "barge.json" not in files:
            raise PermanentJobError(
                f"model directory {ref} has model.onnx but no barge.json (which maps record "
                "fields to the graph's inputs and names its output; see docs/how-to/onnx-models.md)"
            )
        return
    if ADAPTER_CONFIG in files and "config.json" not in files:
        _check_adapter_files(ref, files)
        return
    if "config.json" not in files:
        raise PermanentJobError(
            f"model directory {ref} has no config.json: it must be a Hugging Face model "
            f"directory (found: {', '.join(sorted(files)[:8])})"
        )
    if not any(is_model_file(name) and name.endswith(".safetensors") for name in files):
        pickled = [n for n in files if n.endswith(PICKLED_WEIGHTS)]
        why = (
            f" (found pickled weights {', '.join(pickled)}, which Barge never loads)"
            if pickled
            else ""
        )
        raise PermanentJobError(
            f"model directory {ref} has no *.safetensors weights{why}; save it with "
            "save_pretrained(..., safe_serialization=True)"
        )


def _check_adapter_files(ref: str, files: dict[str, str]) -> None:
    """A LoRA adapter directory (``adapter_config.json`` and no ``config.json``) must hold the
    adapter's weights, ``adapter_model.safetensors``: no other file stands for them."""
    if ADAPTER_WEIGHTS in files:
        return
    pickled = [n for n in files if n.startswith("adapter_model.") and n.endswith(PICKLED_WEIGHTS)]
    found = (
        f"found pickled {', '.join(pickled)}, which Barge never loads"
        if pickled
        else f"found: {', '.join(sorted(files)[:8])}"
    )
    raise PermanentJobError(
        f"model directory {ref} is a LoRA adapter ({ADAPTER_CONFIG}) without its weights, "
        f"{ADAPTER_WEIGHTS} ({found}); save it with save_pretrained(..., "
        "safe_serialization=True)"
    )
