"""ONNX export and onnxruntime sessions shared by the embedder and the re-ranker.

Both export a Hugging Face / sentence-transformers encoder with the TorchScript exporter,
optionally quantise its weights to int8, and run it on onnxruntime's CPU provider; the CPU
facts that decide which precision pays (int8 dot-product instructions, physical cores) live
here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragserve.runtime.cpu import physical_cores

__all__ = [
    "export_onnx",
    "input_names",
    "node_names",
    "ort_session",
    "quantize_int8",
]


def export_onnx(
    module: Any,
    example: Mapping[str, Any],
    path: Path,
    *,
    output_name: str,
    output_axes: Mapping[int, str],
) -> Path:
    """Trace ``module(**example)`` into an ONNX file with dynamic batch and sequence axes on
    every input (named as in ``example``) and ``output_axes`` on its one output."""
    import torch

    names = list(example)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=[output_name],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                output_name: dict(output_axes),
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT fully
        )
    return path


def quantize_int8(source: Path, target: Path, *, keep_fp32: Sequence[str] = ()) -> Path:
    """Dynamic int8 quantisation, per output channel: weights stored as int8, activations
    quantised on the fly, so no calibration data is needed. Nodes named in ``keep_fp32`` stay
    in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quantizer_chatter_dropped():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=list(keep_fp32),
        )
    return target


class _DropQuantizerChatter(logging.Filter):
    """onnxruntime's quantiser logs one line per tensor it leaves alone (about 40 for a
    6-layer BERT) through the root logger, plus advice meant for people calibrating image
    models. None of it says anything a ragserve user can act on; a real failure raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not from_quantizer or record.levelno >= logging.ERROR


@contextmanager
def _quantizer_chatter_dropped() -> Iterator[None]:
    # A filter on the root logger, not a level change: other threads (the reader loading
    # beside this export) keep logging as configured.
    chatter = _DropQuantizerChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def node_names(model_file: Path, op_type: str) -> list[str]:
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == op_type]


def ort_session(model_file: Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with full graph optimisation and ``threads`` intra-op
    threads (physical cores by default); one inter-op thread, as the graphs are sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # quantised graphs log harmless fusion notices
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def input_names(session: Any) -> Sequence[str]:
    return [i.name for i in session.get_inputs()]
