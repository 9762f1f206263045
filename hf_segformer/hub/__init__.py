"""The Hub: model and dataset cards, publishing models and datasets."""
