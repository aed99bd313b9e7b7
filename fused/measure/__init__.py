"""Measurement: profiling, benchmarking, machine ceilings, recorded results and the ``facefuse`` command.

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
* :mod:`~fused.measure.cli`: the ``facefuse`` command (also ``python -m fused``).
"""

from .blocks import find_rows
from .columns import trace_runs
from .models import MODELS, build_model, example_input
from .profiler import profile, profile_model
from .rows import OUTSIDE, SUM, TOTAL, Profile, Row, read_csv

__all__ = [
    "profile", "profile_model", "Profile", "Row", "read_csv", "SUM", "OUTSIDE", "TOTAL",
    "MODELS", "build_model", "example_input", "find_rows", "trace_runs",
]
