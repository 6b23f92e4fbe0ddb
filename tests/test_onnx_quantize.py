"""int8 quantisation keeps onnxruntime's per-tensor chatter out of the service log."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ragserve.runtime.onnx import quantize_int8


def _tiny_matmul_model(path: Path) -> Path:
    """x @ W + x with a constant W: one MatMul to quantise and one tensor it will log about."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32) * 0.5, name="W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("Add", ["h", "x"], ["y"], name="add"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_quantising_logs_nothing_from_onnxruntime_and_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    source = _tiny_matmul_model(tmp_path / "fp32.onnx")
    with caplog.at_level(logging.DEBUG):
        quantize_int8(source, tmp_path / "int8.onnx")
    assert [r for r in caplog.records if "onnxruntime" in r.pathname] == []

    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], 1.5 * x, rtol=0.05, atol=0.1)


def test_other_loggers_and_later_quantiser_calls_are_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _tiny_matmul_model(tmp_path / "fp32.onnx")
    quantize_int8(source, tmp_path / "int8.onnx")
    with caplog.at_level(logging.INFO):
        logging.info("a root record from elsewhere")
        logging.getLogger("ragserve.rerank.cross_encoder").info("a ragserve record")
    assert [r.getMessage() for r in caplog.records] == [
        "a root record from elsewhere",
        "a ragserve record",
    ]
    assert logging.getLogger().filters == []
