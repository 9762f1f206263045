"""The front door: one module per `hf-segformer` command (`train`, `evaluate`, `predict`, ...).

Each module holds its command's options, parses them and calls into the library; `main(argv) -> int` is what
`hf_segformer.cli` runs. Commands import the library, never the other way round: no library module imports
this package, so the library works the same for API users and for the command line.
"""
