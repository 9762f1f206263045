"""Test support code (not tests): data writers, tiny models, processes, the local Hub stand-in, streams."""
