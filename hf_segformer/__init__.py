"""hf-segformer: Hugging Face Trainer fine-tuning recipes for SegFormer semantic segmentation."""

__version__ = "0.1.0"
