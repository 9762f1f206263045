"""The deploy report: every way of running a trained SegFormer (PyTorch, ONNX, INT8, token merging), side by side."""
