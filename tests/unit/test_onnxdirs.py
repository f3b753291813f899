"""barge.json against an ONNX graph: every refusal names what does not fit (graphs built with
onnx.helper, no torch); numeric features from tabular records; image decoding; the text
metrics and token counts of text2text."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from barge.errors import PermanentJobError
from barge.modeldirs import check_model_files, is_model_file
from barge.onnxdirs import (
    ImageInput,
    check_config,
    fixed_batch_size,
    parse_config,
    problems_of,
    read_signature,
)
from barge.records.tabular import feature_vector, numeric_value
from tests.helpers import ONNX_PLACEMENTS, onnx_file_reader

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _graph(
    inputs: list[tuple[str, int, list[Any]]],
    outputs: list[tuple[str, int, list[Any]]],
    nodes: list[Any] | None = None,
    opsets: list[tuple[str, int]] | None = None,
) -> bytes:
    """A model whose nodes (default: Identity from the first input to the first output) are
    never run here: only its signature is read."""
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    outs = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    nodes = nodes or [helper.make_node("Identity", [inputs[0][0]], [outputs[0][0]])]
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or [("", 17)])]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs), opset_imports=imports)
    return model.SerializeToString()


def _config(**overrides: Any) -> bytes:
    data = {
        "inputs": [{"input": "x", "feature_fields": ["a", "b", "c"]}],
        "output": {"name": "y", "meaning": "regress"},
        **overrides,
    }
    return json.dumps(data).encode()


FEATURES_GRAPH = _graph([("x", FLOAT, ["batch", 3])], [("y", FLOAT, ["batch", 1])])


def _problems(config: bytes, graph: bytes = FEATURES_GRAPH, **kwargs: Any) -> list[str]:
    return problems_of(parse_config(config), read_signature(graph), **kwargs)


class TestBargeJson:
    def test_a_matching_directory_has_no_problems(self) -> None:
        assert _problems(_config()) == []
        check_config(parse_config(_config()), read_signature(FEATURES_GRAPH))

    def test_an_unknown_output_meaning_is_named_with_the_known_ones(self) -> None:
        with pytest.raises(PermanentJobError) as exc:
            parse_config(_config(output={"name": "y", "meaning": "segment"}), "s3://b/m/")
        assert exc.value.message == (
            "s3://b/m/barge.json: output.meaning: unknown meaning 'segment' (one of: regress, "
            "classify, embed)"
        )

    def test_every_structural_problem_is_listed(self) -> None:
        bad = {
            "inputs": [
                {"input": "x", "feature_fields": ["a"], "text_field": "t"},
                {
                    "input": "p",
                    "image_field": "img",
                    "size": [8, 8],
                    "mode": "L",
                    "mean": [0.5, 1],
                    "std": [1],
                },
                {"input": "z", "feature_fields": ["a"], "scale": 2},
            ],
            "outputs": {},
        }
        with pytest.raises(PermanentJobError) as exc:
            parse_config(json.dumps(bad).encode())
        assert exc.value.message == (
            "barge.json: outputs: unknown key; "
            "inputs[0]: needs exactly one of feature_fields, text_field or image_field; "
            "inputs[1]: mean needs 1 value(s) for mode 'L'; "
            "inputs[2].scale: unknown key; "
            "output: missing (its name and meaning: regress, classify or embed)"
        )

    def test_not_json_and_not_an_object(self) -> None:
        with pytest.raises(PermanentJobError, match=r"barge\.json is not valid JSON"):
            parse_config(b"{nope")
        with pytest.raises(PermanentJobError, match="must be a JSON object"):
            parse_config(b"[1]")

    def test_mismatched_input_names_and_shapes(self) -> None:
        config = _config(inputs=[{"input": "features", "feature_fields": ["a", "b"]}])
        assert _problems(config) == [
            "inputs[0] names graph input 'features', which the graph does not have (its "
            "inputs: x (float [batch, 3]))",
            "graph input x (float [batch, 3]) is not fed by any of barge.json's inputs",
        ]
        config = _config(inputs=[{"input": "x", "feature_fields": ["a", "b"]}])
        assert _problems(config) == [
            "inputs[0]: graph input x (float [batch, 3]) takes 3 features per record, but "
            "feature_fields names 2"
        ]
        ints = _graph([("x", INT64, ["batch", 3])], [("y", FLOAT, ["batch"])])
        assert _problems(_config(), ints) == [
            "inputs[0]: graph input x (int64 [batch, 3]) takes int64; Barge feeds float tensors"
        ]

    def test_image_inputs_must_match_mode_and_size(self) -> None:
        graph = _graph([("px", FLOAT, ["n", 3, 32, 32])], [("y", FLOAT, ["n", 10])])
        config = _config(
            inputs=[
                {
                    "input": "px",
                    "image_field": "img",
                    "size": [28, 32],
                    "mode": "L",
                    "mean": [0.5],
                    "std": [0.5],
                }
            ],
            output={"name": "y", "meaning": "classify"},
        )
        assert _problems(config, graph) == [
            "inputs[0]: graph input px (float [n, 3, 32, 32]) has 3 channels, but barge.json "
            "gives 1 (mode 'L', size [28, 32])",
            "inputs[0]: graph input px (float [n, 3, 32, 32]) has 32 height, but barge.json "
            "gives 28 (mode 'L', size [28, 32])",
        ]

    def test_outputs_must_exist_and_labels_fit(self) -> None:
        graph = _graph([("x", FLOAT, ["batch", 3])], [("logits", FLOAT, ["batch", 4])])
        assert _problems(_config(), graph) == [
            "output 'y' is not an output of the graph (its outputs: logits (float [batch, 4]))"
        ]
        config = _config(output={"name": "logits", "meaning": "classify", "labels": ["a", "b"]})
        assert _problems(config, graph) == [
            "output logits (float [batch, 4]) scores 4 classes, but barge.json has 2 labels"
        ]
        config = _config(output={"name": "logits", "meaning": "regress", "labels": ["a"]})
        assert _problems(config, graph) == ["output.labels is for classify, not regress"]

    def test_text_inputs_take_token_ids(self) -> None:
        graph = _graph(
            [("ids", INT64, ["b", "t"]), ("mask", INT64, ["b", "t"])], [("emb", FLOAT, ["b", 8])]
        )
        config = _config(
            inputs=[{"text_field": "text", "input_ids": "ids", "attention_mask": "mask"}],
            output={"name": "emb", "meaning": "embed"},
        )
        assert _problems(config, graph) == []
        no_mask = _config(
            inputs=[{"text_field": "text", "input_ids": "ids"}],
            output={"name": "emb", "meaning": "embed"},
        )
        assert _problems(no_mask, graph) == [
            "graph input mask (int64 [b, t]) is not fed by any of barge.json's inputs"
        ]

    def test_custom_operators_are_refused_unless_their_domain_is_allowed(self) -> None:
        graph = _graph(
            [("x", FLOAT, ["batch", 3])],
            [("y", FLOAT, ["batch", 1])],
            nodes=[helper.make_node("FancyOp", ["x"], ["y"], domain="acme.ops")],
            opsets=[("", 17), ("acme.ops", 1)],
        )
        assert _problems(_config(), graph) == [
            "the graph uses custom operators of domain 'acme.ops' (FancyOp); Barge runs "
            "standard ONNX operators only, unless BARGE_ONNX_ALLOWED_OP_DOMAINS lists the domain"
        ]
        assert _problems(_config(), graph, allowed_domains=["acme.ops"]) == []
        with pytest.raises(
            PermanentJobError,
            match=r"^model s3://b/m/: model.onnx and barge.json do not fit: the graph uses custom operators",
        ):
            check_config(parse_config(_config()), read_signature(graph), ref="s3://b/m/")

    def test_a_model_over_the_size_limit_is_refused(self) -> None:
        assert _problems(_config(), size=2_000_000, max_bytes=1_000_000) == [
            "model.onnx is 2,000,000 bytes, more than the limit of 1,000,000 (BARGE_ONNX_MAX_BYTES)"
        ]

    def test_unreadable_graphs_are_refused(self) -> None:
        with pytest.raises(PermanentJobError, match=r"model\.onnx is not a readable ONNX model"):
            read_signature(b"\x00not a protobuf\xff" * 10)

    def test_a_fixed_batch_size_is_found(self) -> None:
        fixed = _graph([("x", FLOAT, [16, 3])], [("y", FLOAT, [16, 1])])
        assert fixed_batch_size(parse_config(_config()), read_signature(fixed)) == 16
        assert fixed_batch_size(parse_config(_config()), read_signature(FEATURES_GRAPH)) is None

    def test_model_files_of_an_onnx_directory(self) -> None:
        assert is_model_file("model.onnx") and is_model_file("barge.json")
        check_model_files("s3://b/m/", {"model.onnx": "e1", "barge.json": "e2"})
        with pytest.raises(PermanentJobError, match=r"has model\.onnx but no barge\.json"):
            check_model_files("s3://b/m/", {"model.onnx": "e1"})


class TestNumericFeatures:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(1, 1.0), (2.5, 2.5), (" 3.25 ", 3.25), ("-1e3", -1000.0), ("7", 7.0)],
    )
    def test_numbers_and_numeric_text(self, value: Any, expected: float) -> None:
        assert numeric_value(value, "f") == (expected, None)

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            (None, "feature field 'f' has no value"),
            ("", "feature field 'f' has no value"),
            ("abc", "feature field 'f' is 'abc', expected a number"),
            (True, "feature field 'f' is a boolean (true), expected a number"),
            (float("nan"), "feature field 'f' is nan, expected a finite number"),
            ("inf", "feature field 'f' is 'inf', expected a finite number"),
            ([1], "feature field 'f' is list, expected a number"),
        ],
    )
    def test_anything_else_is_a_per_record_problem(self, value: Any, problem: str) -> None:
        assert numeric_value(value, "f") == (None, problem)

    def test_a_vector_names_the_first_bad_field(self) -> None:
        assert feature_vector({"a": "1", "b": 2}, ["a", "b"]) == ([1.0, 2.0], None)
        assert feature_vector({"a": "1"}, ["a", "b"]) == (None, "record has no feature field 'b'")


def _png(mode: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color=128 if mode == "L" else (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


class TestImages:
    binding = ImageInput(
        input="x",
        image_field="img",
        size=(4, 6),
        mode="RGB",
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
    )

    def test_bytes_and_base64_decode_resize_and_normalise(self) -> None:
        from worker.models.onnx import decode_image

        raw = _png("RGB", (3, 2))
        for value in (
            raw,
            base64.b64encode(raw).decode(),
            "data:image/png;base64," + base64.b64encode(raw).decode(),
        ):
            array, problem = decode_image({"img": value}, self.binding)
            assert problem is None
            assert array.shape == (3, 4, 6)
            assert np.allclose(array[0], 1.0) and np.allclose(array[1], -1.0)

    def test_grey_images_become_rgb(self, tmp_path: Path) -> None:
        from worker.models.onnx import decode_image

        array, problem = decode_image({"img": _png("L", (6, 4))}, self.binding)
        assert problem is None and array.shape == (3, 4, 6)

    @pytest.mark.parametrize(
        ("row", "problem"),
        [
            ({}, "record has no image field 'img'"),
            ({"img": 5}, "image field 'img' is int, expected bytes or base64"),
            ({"img": "not base64!"}, "image field 'img' is text that is not base64: 'not base64!'"),
        ],
    )
    def test_bad_images_are_per_record_problems(self, row: dict[str, Any], problem: str) -> None:
        from worker.models.onnx import decode_image

        assert decode_image(row, self.binding) == (None, problem)
        array, why = decode_image({"img": b"\x89PNG garbage"}, self.binding)
        assert (
            array is None
            and why is not None
            and why.startswith("image field 'img' is not an image")
        )


class TestText2TextMetrics:
    def test_a_completion_ends_at_the_first_end_of_sequence(self) -> None:
        from worker.models.hf import completion

        assert completion([5, 6, 1, 0, 0], {1}) == (3, "stop")
        assert completion([5, 6, 7], {1}) == (3, "length")
        assert completion([], {1}) == (0, "length")

    def test_bleu_chrf_and_exact_match(self) -> None:
        from worker.models.seq2seq import text_metrics

        perfect = text_metrics(["das haus", "ein baum"], ["das haus", "ein baum"])
        assert perfect == {
            "validation_bleu": 100.0,
            "validation_chrf": 100.0,
            "validation_exact_match": 1.0,
        }
        half = text_metrics(["das haus", "zwei"], ["das haus", "ein baum"])
        assert half["validation_exact_match"] == 0.5
        assert 0 < half["validation_chrf"] < 100


class TestOnnxRunner:
    """The worker's runner on graphs built here: text through tokenizer.json, fixed batches,
    the session's file access, the bound on each record's output."""

    def _load(self, tmp_path: Path, graph: bytes, config: bytes, task: str, **settings: Any) -> Any:
        from barge.settings import Settings
        from worker.models.onnx import OnnxRunner

        (tmp_path / "model.onnx").write_bytes(graph)
        (tmp_path / "barge.json").write_bytes(config)
        return OnnxRunner.load(tmp_path, task, Settings(device="cpu", **settings), "s3://b/m/")

    def test_a_model_planted_in_the_cache_is_still_walked(self, tmp_path: Path) -> None:
        graph = onnx_file_reader("barge.json", 8, "if_constant")
        with pytest.raises(PermanentJobError) as exc:
            self._load(tmp_path, graph, READER_CONFIG, "embed")
        assert exc.value.message.startswith(
            "model s3://b/m/: model.onnx and barge.json do not fit: the graph keeps tensors in "
            "external data files (node 1 (If) > then_branch > node 0 (Constant) > value)"
        )

    @pytest.mark.parametrize("placement", [p for p in ONNX_PLACEMENTS if p != "tensors"])
    def test_a_session_reads_no_file_even_when_the_walk_is_skipped(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placement: str
    ) -> None:
        import onnxruntime as ort

        from barge.settings import Settings
        from worker.models.onnx import inference_session

        planted = b"planted: the bytes of another tenant's records."
        n = len(planted)
        (tmp_path / "planted.txt").write_bytes(planted)
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "planted.txt").write_bytes(planted)
        (tmp_path / "model" / "model.onnx").write_bytes(onnx_file_reader("planted.txt", n))
        monkeypatch.chdir(tmp_path)
        x = {"x": np.zeros((1, 3), np.float32)}
        # Left to itself, onnxruntime reads the file from the process's working directory.
        bare = ort.InferenceSession(
            onnx_file_reader("planted.txt", n, placement), providers=["CPUExecutionProvider"]
        )
        assert bytes(bare.run(["y"], x)[0][0].astype(np.uint8)) == planted
        for location in (
            "planted.txt",
            "model/planted.txt",
            "../planted.txt",
            "model.onnx",
            str(tmp_path / "planted.txt"),
        ):
            data = onnx_file_reader(location, n, placement)
            with pytest.raises(Exception) as exc:  # onnxruntime's own error types
                inference_session(data, Settings(device="cpu")).run(["y"], x)
            assert b"another tenant" not in str(exc.value).encode(), exc.value

    def test_an_output_over_the_per_record_limit_is_refused(self, tmp_path: Path) -> None:
        from worker.models.onnx import OutputTooLarge

        shape = helper.make_tensor("shape", INT64, [2], [1, 1000])
        graph = _graph(
            [("x", FLOAT, ["batch", 3])],
            [("y", FLOAT, ["batch", "k"])],
            nodes=[
                helper.make_node("Constant", [], ["shape"], value=shape),
                helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, axes=[1]),
                helper.make_node("Expand", ["s", "shape"], ["y"]),
            ],
            opsets=[("", 11)],
        )
        records = [{"x": [1.0, 2.0, 3.0]}] * 3
        runner = self._load(tmp_path, graph, READER_CONFIG, "embed", onnx_max_output_values=999)
        with pytest.raises(OutputTooLarge) as exc:
            runner.predict(records, None)
        assert str(exc.value) == (
            "output 'y' gives 1,000 values per record, more than the limit of 999 "
            "(BARGE_ONNX_MAX_OUTPUT_VALUES)"
        )
        runner = self._load(tmp_path, graph, READER_CONFIG, "embed", onnx_max_output_values=1000)
        assert runner.predict(records, None) == [{"embedding": [6.0] * 1000}] * 3

    def test_text_through_the_tokenizer_into_token_ids(self, tmp_path: Path) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(
            models.WordLevel({"[PAD]": 0, "a": 1, "b": 2, "[UNK]": 3}, unk_token="[UNK]")
        )
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(tmp_path / "tokenizer.json"))
        nodes = [
            helper.make_node("Cast", ["ids"], ["f"], to=FLOAT),
            helper.make_node("Cast", ["mask"], ["m"], to=FLOAT),
            helper.make_node("ReduceSum", ["f"], ["s"], keepdims=1, axes=[1]),
            helper.make_node("ReduceSum", ["m"], ["n"], keepdims=1, axes=[1]),
            helper.make_node("Concat", ["s", "n"], ["emb"], axis=1),
        ]
        graph = _graph(
            [("ids", INT64, ["b", "t"]), ("mask", INT64, ["b", "t"])],
            [("emb", FLOAT, ["b", 2])],
            nodes=nodes,
            opsets=[("", 11)],
        )
        config = _config(
            inputs=[
                {"text_field": "t", "input_ids": "ids", "attention_mask": "mask", "max_length": 3}
            ],
            output={"name": "emb", "meaning": "embed"},
        )
        runner = self._load(tmp_path, graph, config, "embed")
        records = [runner.read({"t": text})[0] for text in ("a b", "b b b b", "zz")]
        params = type("P", (), {"max_length": 512, "normalize": False})()
        assert runner.predict(records, params) == [
            {"embedding": [3.0, 2.0]},  # a + b, two tokens
            {"embedding": [6.0, 3.0]},  # truncated to three b
            {"embedding": [3.0, 1.0]},  # unknown
        ]
        assert runner.read({"t": 5}) == (None, "field 't' is int, expected a string")
        assert runner.read({}) == (None, "record has no field 't'")

    def test_a_fixed_batch_graph_runs_in_batches_of_its_size(self, tmp_path: Path) -> None:
        graph = _graph(
            [("x", FLOAT, [4, 3])],
            [("y", FLOAT, [4, 1])],
            nodes=[helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1, axes=[1])],
            opsets=[("", 11)],
        )
        runner = self._load(tmp_path, graph, _config(), "regress")
        assert runner.batch_size == 4
        records = [runner.read({"a": i, "b": "1", "c": 0.5})[0] for i in range(6)]
        out = runner.predict(records, None)
        assert out == [{"value": i + 1.5} for i in range(6)]

    def test_the_job_task_must_be_the_output_meaning(self, tmp_path: Path) -> None:
        with pytest.raises(
            PermanentJobError, match="output means 'regress'; the job's task is 'classify'"
        ):
            self._load(tmp_path, FEATURES_GRAPH, _config(), "classify")


READER_CONFIG = _config(
    inputs=[{"input": "x", "feature_fields": ["a", "b", "c"]}],
    output={"name": "y", "meaning": "embed"},
)
# Where the walk finds the tensor each placement of ``onnx_file_reader`` hides.
PLACES = {
    "initializer": "initializer 'secret'",
    "constant": "node 0 (Constant) > value",
    "if_initializer": "node 1 (If) > then_branch > initializer 'secret'",
    "if_constant": "node 1 (If) > then_branch > node 0 (Constant) > value",
    "function": "function local.Leak > node 0 (Constant) > value",
    "sparse_initializer": "sparse initializer 'secret' > values",
    "sparse_constant": "node 0 (Constant) > sparse_value > values",
    "tensors": "node 0 (Cast) > data[0]",
}


class TestWholeModel:
    """One walk over the whole model (graph, branches, functions, every kind of tensor)."""

    @pytest.mark.parametrize("placement", ONNX_PLACEMENTS)
    def test_external_data_anywhere_is_refused_naming_where(self, placement: str) -> None:
        sig = read_signature(onnx_file_reader("alembic.ini", 8, placement))
        assert sig.external_data == (PLACES[placement],)
        assert _problems(READER_CONFIG, onnx_file_reader("alembic.ini", 8, placement)) == [
            f"the graph keeps tensors in external data files ({PLACES[placement]}); Barge reads "
            "no file beside model.onnx: save it as one file "
            "(onnx.save_model(..., save_as_external_data=False))"
        ]

    def test_a_tensor_naming_a_file_without_the_external_flag_is_refused_too(self) -> None:
        model = onnx.load_model_from_string(onnx_file_reader("alembic.ini", 8, "if_constant"))
        branch = model.graph.node[1].attribute[0].g
        branch.node[0].attribute[0].t.data_location = TensorProto.DEFAULT
        sig = read_signature(model.SerializeToString())
        assert sig.external_data == ("node 1 (If) > then_branch > node 0 (Constant) > value",)

    def test_training_graphs_and_function_attribute_defaults_are_walked(self) -> None:
        model = onnx.load_model_from_string(onnx_file_reader("a", 4, "function"))
        tensor = model.functions[0].node[0].attribute[0].t
        model.functions[0].attribute_proto.append(helper.make_attribute("w", tensor))
        training = onnx.TrainingInfoProto()
        training.initialization.initializer.append(tensor)
        model.training_info.append(training)
        assert read_signature(model.SerializeToString()).external_data == (
            "function local.Leak > node 0 (Constant) > value",
            "function local.Leak > default w",
            "training_info[0] > initialization > initializer 'secret'",
        )

    def test_many_places_are_counted(self) -> None:
        model = onnx.load_model_from_string(onnx_file_reader("a", 4, "initializer"))
        for i in range(5):
            extra = onnx.TensorProto()
            extra.CopyFrom(model.graph.initializer[1])
            extra.name = f"w{i}"
            model.graph.initializer.append(extra)
        problem = _problems(READER_CONFIG, model.SerializeToString())[0]
        assert problem.startswith(
            "the graph keeps tensors in external data files (initializer 'secret'; "
            "initializer 'w0'; initializer 'w1' and 3 more)"
        ), problem

    def test_custom_operators_in_branches_and_functions_are_found(self) -> None:
        model = onnx.load_model_from_string(onnx_file_reader("a", 4, "if_initializer"))
        model.graph.node[1].attribute[0].g.node.append(
            helper.make_node("Deep", ["c"], ["d"], domain="acme.ops")
        )
        function = helper.make_function(
            "local", "Fn", [], ["e"], [helper.make_node("Other", [], ["e"], domain="zeta")], []
        )
        model.functions.append(function)
        sig = read_signature(model.SerializeToString())
        assert sig.custom_ops == {"acme.ops": ["Deep"], "zeta": ["Other"]}

    def test_onnxruntime_ep_context_nodes_are_refused(self) -> None:
        graph = _graph(
            [("x", FLOAT, ["batch", 3])],
            [("y", FLOAT, ["batch", 1])],
            nodes=[
                helper.make_node(
                    "EPContext",
                    ["x"],
                    ["y"],
                    domain="com.microsoft",
                    embed_mode=0,
                    ep_cache_context="alembic.ini",
                )
            ],
            opsets=[("", 17), ("com.microsoft", 1)],
        )
        assert _problems(_config(), graph) == [
            "the graph has onnxruntime EPContext nodes (node 0 (EPContext)), which load a "
            "compiled model from a file; export the ONNX graph itself"
        ]

    def test_a_fixed_output_over_the_per_record_limit_is_refused(self) -> None:
        graph = _graph([("x", FLOAT, ["batch", 3])], [("y", FLOAT, ["batch", 300, 300])])
        config = _config(output={"name": "y", "meaning": "regress"})
        assert _problems(config, graph, max_output_values=50_000) == [
            "output y (float [batch, 300, 300]) must be [batch] or [batch, n] for regress",
            "output y (float [batch, 300, 300]) gives 90,000 values per record, more than the "
            "limit of 50,000 (BARGE_ONNX_MAX_OUTPUT_VALUES)",
        ]
        assert _problems(config, graph, max_output_values=90_000)[1:] == []
