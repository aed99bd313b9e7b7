"""The CI check of ``facefuse inspect``: every default variant of both models compiles for sm_90a,
every float16/bfloat16 ``tl.dot`` uses tensor cores, and no variant spills more or lost its tensor
cores against the recorded baseline ``tests/data/inspect_baseline.json``.

A change that makes a variant spill, or its dot fall back to FMA, fails here. If that is intended
(or after a deliberate kernel change), regenerate the baseline with one command and commit it::

    python -m fused inspect --write-baseline

Compiling the 386 distinct variants (20 configurations: float32 both TF32 and exact) took 7 to 9
minutes the first time in the parallel suite on two CPU cores (Triton 3.9; it is the first unit of
work, see ``tests/conftest.py``); results are cached on disk (``$FACEFUSE_INSPECT_CACHE``, default
``~/.cache/facefuse/inspect``), so a rerun with unchanged kernels takes about 15 seconds.
Every scenario must also keep at most 5% of its FLOPs in loops that wait after each MMA.
"""

import json

import pytest

from fused.measure.inspect import BASELINE_PATH, compare_with_baseline, default_configs, inspect_models
from fused.measure.inspect.report import TENSOR_CORE


@pytest.fixture(scope="module")
def inspection():
    return inspect_models(default_configs(), target="sm_90a", progress=False, timeout=3600)


@pytest.fixture(scope="module")
def baseline():
    return json.loads(BASELINE_PATH.read_text())


def test_every_default_variant_compiles_for_sm_90a(inspection):
    failed = [f"{r.label}: {r.error}" for r in inspection.rows if r.error]
    assert not failed, "\n".join(failed[:5])
    names = {r.config for r in inspection.rows}
    assert len(names) == 20  # five model configurations x (float16, bfloat16, float32 TF32 and exact)
    assert {r.kernel for r in inspection.rows} >= {"conv2d_bias_act", "conv_dw_fused", "lateral_upsample_add",
                                                  "anchor_heads", "se_excite"}


def test_every_half_precision_dot_uses_tensor_cores(inspection):
    half = [r for r in inspection.rows if r.dtype in ("fp16", "bf16") and r.lowering != "-"]
    assert half
    slow = sorted({f"{r.label}: {r.lowering}" for r in half if r.lowering not in TENSOR_CORE})
    assert not slow, "\n".join(slow)


def test_no_regression_against_the_baseline(inspection, baseline):
    assert baseline["target"] == inspection.target
    if baseline["versions"]["triton"] != inspection.versions["triton"]:
        pytest.skip(f"the baseline was recorded with Triton {baseline['versions']['triton']}, this is "
                    f"{inspection.versions['triton']}: registers and spills differ between compilers")
    problems = compare_with_baseline(inspection.rows, baseline)
    assert not problems, ("\n".join(problems[:20]) + "\nIf intended, regenerate the baseline: "
                          "python -m fused inspect --write-baseline")


#: The most of a scenario's FLOPs that may run in main loops waiting for every MMA (issue 27).
MAX_WAITING_SHARE = 0.05


def test_no_scenario_waits_after_each_mma_in_more_than_5_percent_of_its_flops(inspection, baseline):
    """Both on this compiler and in the recorded baseline; the rest is the stems' scalar loads."""
    for name, summary in [*inspection.summary.items(), *baseline["summary"].items()]:
        assert summary["share_mma_waits"] <= MAX_WAITING_SHARE, (
            f"{name}: {summary['share_mma_waits']:.1%} of the FLOPs in main loops that wait after each MMA; "
            "facefuse inspect --model ... --dtype ... shows which variants (column mma)")
    waiting = {(r.kernel, r.loads) for r in inspection.rows if r.mma_wait == "waits"}
    assert all(kernel == "conv2d_bias_act" and "scalar" in loads for kernel, loads in waiting), waiting
