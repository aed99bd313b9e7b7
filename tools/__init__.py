"""The project's own tools (not installed with facefuse): run them from a checkout as ``python -m tools.<name>``.

- :mod:`tools.gpu_check`: every GPU check and measurement as one prepared command (``python -m tools.gpu_check``).
- :mod:`tools.sanitize_run`: every kernel family once on small CUDA inputs, for ``compute-sanitizer``.
- :mod:`tools.pytest_cuda`: a pytest plugin that keeps only the tests that run on CUDA tensors.
"""
