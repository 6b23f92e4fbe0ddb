"""Runtime plumbing: CPU facts, model assembly from PyPI parts, ONNX export and
quantisation, foreground/background priority. Stages use it; it uses no stage."""
