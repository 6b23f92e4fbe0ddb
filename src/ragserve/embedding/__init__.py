"""The embedder (sentence-transformers weights on onnxruntime / OpenVINO / PyTorch) and the
index-compatibility check between an index and the embedder that reads it."""
