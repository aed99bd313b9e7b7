"""Measurement: profiling, benchmarking, machine ceilings, recorded results, kernel inspection.

Nothing in the kernels or the fused modules imports this package: ``import fused`` does not load
it, and it uses only their public names.

* :mod:`~fused.measure.profiler`: :func:`profile` and :func:`profile_model`, block by block;
  :mod:`~fused.measure.rows` (the :class:`Profile`, its table and files),
  :mod:`~fused.measure.blocks` (which modules are rows, what one forward pass records),
  :mod:`~fused.measure.columns` (torch.compile, fused and trace columns),
  :mod:`~fused.measure.charts` (the only matplotlib importer),
  :mod:`~fused.measure.models` (the model zoo, inputs and profile options),
  :mod:`~fused.measure.tensors` (tensors in nested arguments, FLOP and byte counts);
* :mod:`~fused.measure.benchmark`: the GPU benchmark of the kernel families;
* :mod:`~fused.measure.timing`, :mod:`~fused.measure.ceilings`, :mod:`~fused.measure.environment`:
  how everything is timed, the measured roofline, and where a result was measured;
* :mod:`~fused.measure.results`: recorded GPU results and the README's table;
* :mod:`~fused.measure.inspect`: the kernels compiled for a GPU on any machine.

The ``facefuse`` command that runs them is :mod:`fused.cli`.
"""

__all__ = [
    "profile", "profile_model", "Profile", "Row", "read_csv", "SUM", "OUTSIDE", "TOTAL",
    "MODELS", "build_model", "example_input", "find_rows", "trace_runs",
]

from pathlib import Path

#: name → the module that defines it; imported on first use (PEP 562), so that the command line
#: and ``fused.measure.choices`` load without torch.
_WHERE = {"find_rows": "blocks", "trace_runs": "columns", "MODELS": "models", "build_model": "models",
          "example_input": "models", "profile": "profiler", "profile_model": "profiler", "OUTSIDE": "rows",
          "SUM": "rows", "TOTAL": "rows", "Profile": "rows", "Row": "rows", "read_csv": "rows"}


def __getattr__(name: str):
    """A name of ``__all__``, or a submodule (``fused.measure.ceilings``), imported now."""
    import importlib

    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif not name.startswith("_") and ((Path(__file__).parent / f"{name}.py").is_file()
                                       or (Path(__file__).parent / name / "__init__.py").is_file()):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'fused.measure' has no attribute {name!r}")
    globals()[name] = value
    return value
