"""Inference: Segmenter (images to masks), the predict and export-onnx commands, INT8 quantization, ranking unlabelled images."""
