"""`jobs/export.py`: a model as an ONNX or pt2 file, checked against PyTorch, logged to MLflow."""
