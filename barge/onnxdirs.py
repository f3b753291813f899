"""ONNX model directories: ``model.onnx`` (the user's own network) and ``barge.json``, which maps
record fields to the graph's inputs and says what its output means.

Parsing and checking only (``onnx`` parses the graph; no torch, no onnxruntime): the registry
checks a directory when it is registered, a submission reads the record fields the model needs,
and the worker checks again before it loads. Every refusal says what to fix.

``barge.json``::

    {
      "inputs": [
        {"input": "x", "feature_fields": ["f0", "f1", "f2"]},
        {"text_field": "text", "tokenizer": "tokenizer.json", "max_length": 128,
         "input_ids": "input_ids", "attention_mask": "attention_mask"},
        {"input": "pixels", "image_field": "image", "size": [8, 8], "mode": "L",
         "mean": [0.5], "std": [0.5]}
      ],
      "output": {"name": "logits", "meaning": "classify", "labels": ["cat", "dog"]}
    }

Imports: ``barge`` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from barge.errors import PermanentJobError, excerpt
from barge.settings import Settings
from barge.storage import ObjectStore, S3Uri, local_model_dir

ONNX_FILE = "model.onnx"
CONFIG_FILE = "barge.json"
MAX_CONFIG_BYTES = 64 * 1024
MEANINGS = ("regress", "classify", "embed")
# Operator domains every onnxruntime build runs: standard ONNX, ONNX-ML, onnxruntime's contrib
# operators. Anything else is a custom operator (a shared library Barge never loads).
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Operators that load a file named in their attributes (onnxruntime's EPContext: a compiled
# model beside the graph), refused wherever they are, like tensors kept as external data.
FILE_OPS = frozenset({("com.microsoft", "EPContext")})
PLACES_SHOWN = 3  # places named in a refusal; the rest are counted
FLOAT_TYPES = frozenset({"float", "double", "float16", "bfloat16"})
INT_TYPES = frozenset({"int64", "int32"})
CHANNELS = {"L": 1, "RGB": 3}

_NAME = Field(..., min_length=1, max_length=256)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureInput(_Config):
    """Numeric record fields, in order, as one float tensor ``[batch, len(feature_fields)]``."""

    input: str = _NAME
    feature_fields: list[str] = Field(..., min_length=1, max_length=65_536)

    @model_validator(mode="after")
    def _unique(self) -> FeatureInput:
        seen: set[str] = set()
        for name in self.feature_fields:
            if not name or name in seen:
                raise ValueError(f"feature_fields has {name!r} twice or empty")
            seen.add(name)
        return self

    def graph_inputs(self) -> list[str]:
        return [self.input]


class TextInput(_Config):
    """A text field through the directory's tokenizer: token ids (and, when named, the attention
    mask and token type ids) as int64 tensors ``[batch, tokens]``."""

    text_field: str = _NAME
    tokenizer: Literal["tokenizer.json"] = "tokenizer.json"
    max_length: int = Field(512, ge=1, le=65_536)
    input_ids: str = Field("input_ids", min_length=1, max_length=256)
    attention_mask: str | None = Field(None, min_length=1, max_length=256)
    token_type_ids: str | None = Field(None, min_length=1, max_length=256)

    def graph_inputs(self) -> list[str]:
        names = [self.input_ids, self.attention_mask, self.token_type_ids]
        return [n for n in names if n is not None]


class ImageInput(_Config):
    """An image field (PNG/JPEG bytes, or their base64 text) decoded, converted to ``mode``,
    resized to ``size`` (height, width), scaled to 0..1 and normalised per channel:
    a float tensor ``[batch, channels, height, width]``."""

    input: str = _NAME
    image_field: str = _NAME
    size: tuple[int, int] = Field(..., description="(height, width)")
    mode: Literal["L", "RGB"] = "RGB"
    mean: list[float] = Field(..., min_length=1, max_length=3)
    std: list[float] = Field(..., min_length=1, max_length=3)

    @model_validator(mode="after")
    def _per_channel(self) -> ImageInput:
        channels = CHANNELS[self.mode]
        if not all(1 <= s <= 8192 for s in self.size):
            raise ValueError("size must be [height, width], each 1 to 8192")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != channels:
                raise ValueError(f"{name} needs {channels} value(s) for mode {self.mode!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    def graph_inputs(self) -> list[str]:
        return [self.input]


Binding = FeatureInput | TextInput | ImageInput
_KINDS: tuple[tuple[str, type[Binding]], ...] = (
    ("feature_fields", FeatureInput),
    ("text_field", TextInput),
    ("image_field", ImageInput),
)


class Output(_Config):
    name: str = _NAME
    meaning: Literal["regress", "classify", "embed"]
    labels: list[str] | None = Field(None, min_length=1, max_length=100_000)
    scores: Literal["logits", "probabilities"] = Field(
        "logits", description="classify: softmax is applied to logits, probabilities are kept"
    )


class OnnxConfig(_Config):
    """A parsed ``barge.json``."""

    inputs: list[Binding] = Field(..., min_length=1, max_length=64)
    output: Output

    @property
    def task(self) -> str:
        return self.output.meaning

    def record_fields(self) -> list[str]:
        """Every record field the model reads, in order."""
        out: list[str] = []
        for b in self.inputs:
            if isinstance(b, FeatureInput):
                out.extend(b.feature_fields)
            elif isinstance(b, TextInput):
                out.append(b.text_field)
            else:
                out.append(b.image_field)
        return out


def parse_config(raw: bytes, ref: str = "") -> OnnxConfig:
    """``barge.json``'s bytes as an ``OnnxConfig``, or a ``PermanentJobError`` naming each
    problem (``barge.json inputs[0].size: ...``)."""
    where = f"{ref.rstrip('/')}/{CONFIG_FILE}" if ref else CONFIG_FILE
    if len(raw) > MAX_CONFIG_BYTES:
        raise PermanentJobError(f"{where} is over {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentJobError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PermanentJobError(f"{where} must be a JSON object with inputs and output")
    problems: list[str] = [f"{key}: unknown key" for key in data if key not in ("inputs", "output")]
    inputs = data.get("inputs")
    bindings: list[Binding] = []
    if not isinstance(inputs, list) or not inputs:
        problems.append("inputs: missing (a list of feature, text or image inputs)")
    else:
        for i, item in enumerate(inputs):
            kinds = [m for key, m in _KINDS if isinstance(item, dict) and key in item]
            if len(kinds) != 1:
                problems.append(
                    f"inputs[{i}]: needs exactly one of feature_fields, text_field or image_field"
                )
                continue
            try:
                bindings.append(kinds[0].model_validate(item))
            except ValidationError as exc:
                problems.extend(_messages(exc, f"inputs[{i}]"))
    output: Output | None = None
    if "output" not in data:
        problems.append("output: missing (its name and meaning: regress, classify or embed)")
    else:
        try:
            output = Output.model_validate(data["output"])
        except ValidationError as exc:
            problems.extend(_messages(exc, "output"))
    if problems or output is None:
        raise PermanentJobError(f"{where}: " + "; ".join(problems))
    return OnnxConfig(inputs=bindings, output=output)


def _messages(exc: ValidationError, prefix: str) -> list[str]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged")))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and loc.endswith("meaning"):
            msg = f"unknown meaning {excerpt(e['input'])} (one of: {', '.join(MEANINGS)})"
        elif e["type"] == "missing":
            msg = "missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


# --- the graph ----------------------------------------------------------------------------------

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # ONNX element type, lower case: "float", "int64", ...
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def shown(self) -> str:
        if self.shape is None:
            return f"{self.name} ({self.dtype}, any shape)"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype} [{dims}])"


@dataclass(frozen=True)
class Signature:
    """What Barge needs to know of a graph: its inputs and outputs, the operators of each
    non-standard domain it uses, and where (anywhere in the model) it names files to read:
    tensors kept as external data, onnxruntime EPContext nodes."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    custom_ops: dict[str, list[str]] = field(default_factory=dict)  # domain -> op types
    external_data: tuple[str, ...] = ()  # where each tensor kept in a file is
    file_ops: tuple[str, ...] = ()  # where each node that loads a file is

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def read_signature(data: bytes, ref: str = "") -> Signature:
    """Parse ``model.onnx``'s bytes (protobuf only: nothing is executed or unpickled) and walk
    the whole model once (``_walk``)."""
    import onnx

    where = f"{ref.rstrip('/')}/{ONNX_FILE}" if ref else ONNX_FILE
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise PermanentJobError(f"{where} is not a readable ONNX model: {excerpt(exc)}") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    found = _walk(model)
    return Signature(
        inputs=tuple(_tensor(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor(v) for v in graph.output),
        custom_ops={d: sorted(ops) for d, ops in sorted(found.custom_ops.items())},
        external_data=tuple(found.external_data),
        file_ops=tuple(found.file_ops),
    )


@dataclass
class _Found:
    """What the walk over a model found for the rules of ``problems_of``."""

    custom_ops: dict[str, set[str]] = field(default_factory=dict)
    external_data: list[str] = field(default_factory=list)
    file_ops: list[str] = field(default_factory=list)


def _walk(model: Any) -> _Found:
    """Every part of the model that holds nodes or tensors, visited once, depth first, with
    where it is: the graph, each graph in a node's attributes at any depth (If and Loop
    branches, ...), the model's local functions (their nodes and attribute defaults), its
    training graphs; every initializer, sparse initializer and tensor or sparse tensor of an
    attribute (a Constant's value, a TENSORS list), whatever the attribute's declared type.
    Each node and tensor goes through every rule here: nothing is checked anywhere else."""
    import onnx

    local = {(f.domain, f.name) for f in model.functions}
    found = _Found()
    todo: list[tuple[Any, str]] = [(model.graph, "")]
    todo += [(f, f"function {f.domain[:60]}.{f.name[:60]}") for f in model.functions]
    for i, info in enumerate(model.training_info):
        todo += [
            (info.initialization, f"training_info[{i}] > initialization"),
            (info.algorithm, f"training_info[{i}] > algorithm"),
        ]
    todo.reverse()
    while todo:
        item, where = todo.pop()
        if isinstance(item, onnx.TensorProto):
            if item.data_location == onnx.TensorProto.EXTERNAL or len(item.external_data):
                found.external_data.append(where)
        elif isinstance(item, onnx.NodeProto):
            domain = item.domain or ""
            if (domain, item.op_type) in FILE_OPS:
                found.file_ops.append(where)
            elif domain not in STANDARD_DOMAINS and (domain, item.op_type) not in local:
                found.custom_ops.setdefault(domain, set()).add(item.op_type)
        todo.extend(reversed(list(_parts(item, where))))
    return found


def _parts(item: Any, where: str) -> Iterator[tuple[Any, str]]:
    """The parts of one piece of a model that can hold nodes or tensors, with where each is
    (``node 1 (If) > then_branch > initializer 'w'``)."""
    import onnx

    def at(label: str) -> str:
        return f"{where} > {label}" if where else label

    if isinstance(item, onnx.GraphProto):
        for t in item.initializer:
            yield t, at(f"initializer {excerpt(t.name, 60)}")
        for s in item.sparse_initializer:
            yield s, at(f"sparse initializer {excerpt(s.values.name, 60)}")
    if isinstance(item, onnx.GraphProto | onnx.FunctionProto):
        for i, node in enumerate(item.node):
            yield node, at(f"node {i} ({node.op_type[:60]})")
    if isinstance(item, onnx.FunctionProto):
        for a in item.attribute_proto:
            yield a, at(f"default {a.name[:60]}")
    elif isinstance(item, onnx.NodeProto):
        for a in item.attribute:
            yield a, at(a.name[:60])
    elif isinstance(item, onnx.SparseTensorProto):
        yield item.values, at("values")
        yield item.indices, at("indices")
    elif isinstance(item, onnx.AttributeProto):
        for one, many in (("t", "tensors"), ("sparse_tensor", "sparse_tensors"), ("g", "graphs")):
            if item.HasField(one):
                yield getattr(item, one), where
            for i, part in enumerate(getattr(item, many)):
                yield part, f"{where}[{i}]"


def _tensor(value: Any) -> Tensor:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return Tensor(value.name, kind or "unknown", None)
    tt = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
    if not tt.HasField("shape"):
        return Tensor(value.name, dtype, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return Tensor(value.name, dtype, tuple(dims))


# --- barge.json against the graph --------------------------------------------------------------


def check_graph(settings: Settings, config: OnnxConfig, data: bytes, ref: str) -> Signature:
    """Read ``model.onnx``'s bytes and refuse (``PermanentJobError``), naming every mismatch, a
    graph Barge will not run under ``settings``, or a ``barge.json`` that does not fit it: the
    registry and the worker check a model the same way."""
    sig = read_signature(data, ref)
    check_config(
        config,
        sig,
        allowed_domains=settings.onnx_allowed_op_domains,
        size=len(data),
        max_bytes=settings.onnx_max_bytes,
        max_output_values=settings.onnx_max_output_values,
        ref=ref,
    )
    return sig


def check_config(
    config: OnnxConfig,
    sig: Signature,
    *,
    allowed_domains: list[str] | tuple[str, ...] = (),
    size: int | None = None,
    max_bytes: int | None = None,
    max_output_values: int | None = None,
    ref: str = "",
) -> None:
    """Refuse (``PermanentJobError``) a graph Barge will not run, or a ``barge.json`` that does
    not fit it, naming every mismatch."""
    problems = problems_of(
        config,
        sig,
        allowed_domains=allowed_domains,
        size=size,
        max_bytes=max_bytes,
        max_output_values=max_output_values,
    )
    if problems:
        where = f"model {ref}: " if ref else ""
        raise PermanentJobError(
            f"{where}{ONNX_FILE} and {CONFIG_FILE} do not fit: " + "; ".join(problems)
        )


def problems_of(
    config: OnnxConfig,
    sig: Signature,
    *,
    allowed_domains: list[str] | tuple[str, ...] = (),
    size: int | None = None,
    max_bytes: int | None = None,
    max_output_values: int | None = None,
) -> list[str]:
    """What does not match, one sentence each (empty when the model can run)."""
    problems = _model_problems(sig, allowed_domains, size, max_bytes)
    problems.extend(_binding_problems(config, sig))
    problems.extend(_output_problems(config.output, sig, max_output_values))
    return problems


def _model_problems(
    sig: Signature,
    allowed_domains: list[str] | tuple[str, ...],
    size: int | None,
    max_bytes: int | None,
) -> list[str]:
    """The rules of the whole model: its size, its operators, the files it names."""
    problems: list[str] = []
    if size is not None and max_bytes is not None and size > max_bytes:
        problems.append(
            f"{ONNX_FILE} is {size:,} bytes, more than the limit of {max_bytes:,} "
            "(BARGE_ONNX_MAX_BYTES)"
        )
    for domain, ops in sig.custom_ops.items():
        if domain not in allowed_domains:
            problems.append(
                f"the graph uses custom operators of domain {domain!r} "
                f"({', '.join(ops[:5])}); Barge runs standard ONNX operators only, unless "
                "BARGE_ONNX_ALLOWED_OP_DOMAINS lists the domain"
            )
    if sig.external_data:
        problems.append(
            f"the graph keeps tensors in external data files ({_places(sig.external_data)}); "
            f"Barge reads no file beside {ONNX_FILE}: save it as one file "
            "(onnx.save_model(..., save_as_external_data=False))"
        )
    if sig.file_ops:
        problems.append(
            f"the graph has onnxruntime EPContext nodes ({_places(sig.file_ops)}), which load "
            "a compiled model from a file; export the ONNX graph itself"
        )
    return problems


def _places(places: tuple[str, ...]) -> str:
    shown = "; ".join(places[:PLACES_SHOWN])
    rest = len(places) - PLACES_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


def _binding_problems(config: OnnxConfig, sig: Signature) -> list[str]:
    """barge.json's inputs against the graph's."""
    problems: list[str] = []
    graph_names = ", ".join(t.shown() for t in sig.inputs) or "none"
    bound: dict[str, str] = {}
    for i, binding in enumerate(config.inputs):
        for name in binding.graph_inputs():
            if name in bound:
                problems.append(
                    f"graph input {name!r} is fed twice (inputs[{i}] and {bound[name]})"
                )
                continue
            bound[name] = f"inputs[{i}]"
            tensor = sig.input(name)
            if tensor is None:
                problems.append(
                    f"inputs[{i}] names graph input {name!r}, which the graph does not have "
                    f"(its inputs: {graph_names})"
                )
                continue
            problems.extend(_input_problems(f"inputs[{i}]", binding, tensor))
    for tensor in sig.inputs:
        if tensor.name not in bound:
            problems.append(
                f"graph input {tensor.shown()} is not fed by any of barge.json's inputs"
            )
    batch = {
        name: t.shape[0]
        for name in bound
        if (t := sig.input(name)) is not None and t.shape and isinstance(t.shape[0], int)
    }
    if len(set(batch.values())) > 1:
        problems.append(
            "graph inputs have different fixed batch sizes: "
            + ", ".join(f"{n} {b}" for n, b in batch.items())
        )
    return problems


def _input_problems(where: str, binding: Binding, t: Tensor) -> list[str]:
    out: list[str] = []
    if isinstance(binding, TextInput):
        if t.dtype not in INT_TYPES:
            out.append(f"{where}: graph input {t.shown()} takes {t.dtype}, not token ids (int64)")
        if t.shape is not None and len(t.shape) != 2:
            out.append(f"{where}: graph input {t.shown()} must be [batch, tokens]")
        return out
    if t.dtype not in FLOAT_TYPES:
        out.append(f"{where}: graph input {t.shown()} takes {t.dtype}; Barge feeds float tensors")
    if isinstance(binding, FeatureInput):
        n = len(binding.feature_fields)
        if t.shape is not None and len(t.shape) != 2:
            out.append(
                f"{where}: graph input {t.shown()} must be [batch, features] for feature_fields"
            )
        elif t.shape is not None and isinstance(t.shape[1], int) and t.shape[1] != n:
            out.append(
                f"{where}: graph input {t.shown()} takes {t.shape[1]} features per record, "
                f"but feature_fields names {n}"
            )
        return out
    channels = CHANNELS[binding.mode]
    if t.shape is not None and len(t.shape) != 4:
        out.append(f"{where}: graph input {t.shown()} must be [batch, channels, height, width]")
    elif t.shape is not None:
        expected = (channels, *binding.size)
        for axis, name, want in zip(
            (1, 2, 3), ("channels", "height", "width"), expected, strict=True
        ):
            got = t.shape[axis]
            if isinstance(got, int) and got != want:
                out.append(
                    f"{where}: graph input {t.shown()} has {got} {name}, but barge.json gives "
                    f"{want} (mode {binding.mode!r}, size {list(binding.size)})"
                )
    return out


def _output_problems(output: Output, sig: Signature, max_values: int | None) -> list[str]:
    t = sig.output(output.name)
    if t is None:
        names = ", ".join(o.shown() for o in sig.outputs) or "none"
        return [f"output {output.name!r} is not an output of the graph (its outputs: {names})"]
    out: list[str] = []
    if t.dtype not in FLOAT_TYPES:
        out.append(f"output {t.shown()} is {t.dtype}; Barge reads float outputs")
    if t.shape is not None:
        if output.meaning in ("classify", "embed") and len(t.shape) != 2:
            out.append(f"output {t.shown()} must be [batch, n] for {output.meaning}")
        if output.meaning == "regress" and len(t.shape) not in (1, 2):
            out.append(f"output {t.shown()} must be [batch] or [batch, n] for regress")
        width = t.shape[1] if len(t.shape) == 2 else None
        if (
            output.meaning == "classify"
            and output.labels is not None
            and isinstance(width, int)
            and width != len(output.labels)
        ):
            out.append(
                f"output {t.shown()} scores {width} classes, but barge.json has "
                f"{len(output.labels)} labels"
            )
    if output.labels is not None and output.meaning != "classify":
        out.append(f"output.labels is for classify, not {output.meaning}")
    per_record = t.shape[1:] if t.shape else ()
    if max_values is not None and all(isinstance(d, int) for d in per_record):
        values = math.prod(d for d in per_record if isinstance(d, int))
        if values > max_values:
            out.append(f"output {t.shown()} gives {output_too_large(values, max_values)}")
    return out


def output_too_large(values: int, limit: int) -> str:
    """The end of the sentence refusing an output of ``values`` values per record."""
    return (
        f"{values:,} values per record, more than the limit of {limit:,} "
        "(BARGE_ONNX_MAX_OUTPUT_VALUES)"
    )


def fixed_batch_size(config: OnnxConfig, sig: Signature) -> int | None:
    """The batch size the graph was exported with, when its first axis is fixed."""
    for binding in config.inputs:
        for name in binding.graph_inputs():
            t = sig.input(name)
            if t is not None and t.shape and isinstance(t.shape[0], int):
                return t.shape[0]
    return None


# --- a directory in the store -------------------------------------------------------------------


def _read(settings: Settings, store: ObjectStore, ref: str, name: str, limit: int) -> bytes:
    """The bytes of ``name`` in model directory ``ref`` (a local directory or an s3:// prefix),
    refused when over ``limit`` bytes before it is read."""
    local = local_model_dir(settings, ref)
    if local is not None:
        path = local / name
        if not path.is_file():
            raise PermanentJobError(f"model directory {ref} has no {name}")
        size = path.stat().st_size
        read = path.read_bytes
    else:
        uri = S3Uri.parse(ref, field="model").as_prefix().join(name)
        info = store.head(uri)
        if info is None:
            raise PermanentJobError(f"model directory {ref} has no {name}")
        size = info.size

        def read() -> bytes:
            return store.get_bytes(uri)

    if size > limit:
        what = "BARGE_ONNX_MAX_BYTES" if name == ONNX_FILE else "the limit"
        raise PermanentJobError(
            f"model directory {ref}: {name} is {size:,} bytes, more than {limit:,} ({what})"
        )
    return read()


def read_config(settings: Settings, store: ObjectStore, ref: str) -> OnnxConfig:
    """The directory's parsed ``barge.json`` (the graph is not read)."""
    return parse_config(_read(settings, store, ref, CONFIG_FILE, MAX_CONFIG_BYTES), ref)


def check_directory(settings: Settings, store: ObjectStore, ref: str) -> OnnxConfig:
    """Read ``barge.json`` and ``model.onnx`` (at most ``BARGE_ONNX_MAX_BYTES``) and refuse,
    naming every mismatch, a directory Barge would not run."""
    config = read_config(settings, store, ref)
    check_graph(
        settings, config, _read(settings, store, ref, ONNX_FILE, settings.onnx_max_bytes), ref
    )
    return config


def find_config(settings: Settings, store: ObjectStore, ref: str) -> OnnxConfig | None:
    """The directory's ``barge.json`` when it has one (an ONNX model directory), else None."""
    local = local_model_dir(settings, ref)
    if local is not None:
        present = (local / CONFIG_FILE).is_file()
    else:
        uri = S3Uri.parse(ref, field="model").as_prefix().join(CONFIG_FILE)
        present = store.head(uri) is not None
    return read_config(settings, store, ref) if present else None
