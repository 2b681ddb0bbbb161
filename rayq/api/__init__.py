"""The API layer: what ``import rayq`` exposes, and what the CLI is built on.

- :mod:`~rayq.api.quantize`: ``rayq.quantize`` (NNCF's basic post-training quantization).
- :mod:`~rayq.api.search`: ``rayq.search``, prepared, run and assembled in three steps.
- :mod:`~rayq.api.accuracy_control`: ``rayq.quantize_with_accuracy_control`` (NNCF's signature).
- :mod:`~rayq.api.options`: the frozen option objects ``SearchSpace``, ``SearchOptions`` and
  ``Execution``: one definition (types, defaults, checks) for the Python API, YAML configs and CLI.
- :mod:`~rayq.api.config` / :mod:`~rayq.api.config_schema`: YAML configs of the CLI commands,
  built from those options.
- :mod:`~rayq.api.session`: one model + calibration data, loaded once (statistics, workers).
- :mod:`~rayq.api.sweep`: many searches in one job; :mod:`~rayq.api.submit`: ``rayq.submit`` /
  ``rayq.attach`` (a search as a Ray job followed from a notebook).
- :mod:`~rayq.api.compare`: FP32 vs INT8 metric and latency on each runtime (``rayq quantize --validation``).
- :mod:`~rayq.api.progress`: the one progress reporter (bars in terminals, log lines in jobs).

Nothing is imported here, so ``import rayq.api.config`` stays light.
"""
