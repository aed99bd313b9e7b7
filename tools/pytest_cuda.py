"""pytest plugin: keep only the tests that run on CUDA tensors (``-p tools.pytest_cuda``).

A test runs its kernels on CUDA when it takes the ``device`` fixture (``tests/conftest.py``: CUDA
when available) or carries the ``gpu`` marker. Every other test builds CPU tensors for Triton's
interpreter: on a CUDA machine its kernel calls are refused (``fused.runtime.check_inputs``), so
those tests belong in a run with ``TRITON_INTERPRET=1`` instead. ``facefuse gpu-check`` runs the
suite both ways: this selection on CUDA, the rest under the interpreter.
"""

from __future__ import annotations


def runs_on_cuda(item) -> bool:
    """True when ``item`` (a collected test) uses the ``device`` fixture or the ``gpu`` marker."""
    return "device" in getattr(item, "fixturenames", ()) or item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if runs_on_cuda(item)]
    dropped = [item for item in items if not runs_on_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config):
    return "tools.pytest_cuda: only tests that take the `device` fixture or carry the `gpu` marker"
