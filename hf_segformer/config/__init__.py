"""Configuration: the recipe's data and model fields, the parsers of their values, and the YAML + command-line parser.

Nothing here imports transformers' models or torch, so a command that only reads a recipe starts quickly.
`SegformerTrainingArguments` (transformers' `TrainingArguments`) lives with training: `training/arguments.py`.
"""
