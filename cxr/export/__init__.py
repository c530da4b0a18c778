"""Export to ONNX, validation and quantization. Imports cxr.train (the model) and cxr.runtime (card, scorer)."""
