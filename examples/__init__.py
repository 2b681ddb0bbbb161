"""Bundled examples (importable from the repository root, e.g. ``examples.digits.metric:accuracy``)."""
