"""Checked kernel-writing exercises: the learner finishes a stub ``@triton.jit`` kernel, and
:func:`check_kernel` says whether it is right and, when it is not, what is wrong.

    from fused import exercises
    report = exercises.check_kernel("conv3x3", my_kernel, raise_on_fail=False)  # prints the report

Each exercise (:data:`KERNEL_EXERCISES`) fixes the kernel's signature, its grid and tiles, a few
small input cases (tails that end mid-tile, borders, batch > 1, stride 2, odd sizes, NaN and
Inf) and a float64 *model* of the answer. The check launches the kernel in Triton's interpreter
(or on the GPU) on each case and compares it with the model under the project's tolerance policy
(:func:`fused.tolerance.assert_close`: NaN and Inf exactly). On a mismatch it names the output
element, the expected and the actual value, and the likely cause, found two ways:

* traps set by the checker: every input is surrounded by NaN, every output by a fill value, so a
  load without its mask shows as NaN (the check reruns with zeros around the inputs to be sure),
  a store without its mask as a changed fill, and an element never stored as the fill itself;
* the model's *knobs*: each exercise's model can make the usual mistakes (a tap offset off by one,
  no padding mask, a dropped bias, a maximum that drops NaN, a missing stride, ...). The check
  looks for the fewest mistakes that reproduce the kernel's whole output and names them.

What a NaN turns into is judged on the output, never on which operation dropped it, so the same
kernel gets the same diagnosis whatever Triton version runs it (``tl.maximum`` keeps NaN in some
interpreters and drops it in others and on GPUs).

Worked solutions are in ``lessons/solutions/lesson_NN.py`` (:func:`solution` loads one), and
``tests/lessons/test_kernel_exercises.py`` proves that each passes and that the stubs and planted
wrong kernels fail with the right cause.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import triton

from .tolerance import assert_close, largest_finite, tolerance

#: The value every output element holds before the kernel runs; one still there was never stored.
FILL = -7777.0
NAN = float("nan")
INF = float("inf")


@dataclass(frozen=True)
class Case:
    """One input case: its sizes (passed to the exercise's functions), a seed, and whether to plant NaN/Inf."""

    sizes: dict
    seed: int
    special: bool = False

    def describe(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return text + (", with NaN and Inf in the input" if self.special else "")


@dataclass(frozen=True)
class KernelExercise:
    """A kernel-writing exercise: the task, the launch, the inputs, and the float64 model with its knobs.

    ``knobs``: name -> alternatives ``(value, cause)``; the first is the right one (cause ``""``).
    ``model(inputs64, case, **knobs)`` computes the output a kernel with those choices produces.
    """

    name: str
    lesson: str
    kernel_name: str
    task: str
    cases: tuple[Case, ...]
    make_inputs: Callable[[Case, torch.Generator], dict]
    out_shape: Callable[[Case], tuple]
    launch: Callable  # (kernel, inputs, out, case) -> None
    model: Callable
    knobs: dict = field(default_factory=dict)
    reduction_length: Callable[[Case], int] = lambda case: 1
    nan_lost: str = "NaN lost: the reference has NaN there and your kernel a number"
    border_hint: bool = False


@dataclass
class KernelReport:
    """What :func:`check_kernel` found: ``passed``, and for a failure the case, the element and the causes."""

    exercise: str
    passed: bool
    cases_run: int = 0
    case: str = ""
    problem: str = ""
    causes: list = field(default_factory=list)

    def __str__(self) -> str:
        if self.passed:
            return f"kernel exercise {self.exercise}: correct on all {self.cases_run} cases (float64 model, tolerance policy)."
        lines = [f"kernel exercise {self.exercise}: WRONG on case {self.case}", f"  {self.problem}"]
        if self.causes:
            lines.append("  likely cause" + ("s" if len(self.causes) > 1 else "") + ":")
            lines += [f"  - {cause}" for cause in self.causes]
        return "\n".join(lines)

    def __bool__(self) -> bool:
        return self.passed


KERNEL_EXERCISES: dict[str, KernelExercise] = {}


def _register(ex: KernelExercise) -> KernelExercise:
    KERNEL_EXERCISES[ex.name] = ex
    return ex


# ---------------------------------------------------------------------------------- the checker


def _guarded(t: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): ``t`` copied into the middle of a flat buffer of ``fill`` with room on both sides."""
    guard = 2 * t.numel() + 1024
    buf = torch.full((t.numel() + 2 * guard,), fill, dtype=t.dtype, device=t.device)
    view = buf[guard:guard + t.numel()].view(t.shape)
    view.copy_(t)
    return buf, view


def _run(ex: KernelExercise, kernel, inputs: dict, case: Case, guard_fill: float):
    """Launch ``kernel`` on guarded copies of ``inputs``; returns (output, output buffer's guard intact)."""
    guarded = {k: _guarded(v, guard_fill)[1] for k, v in inputs.items()}
    out_buf, out = _guarded(torch.full(ex.out_shape(case), FILL, dtype=torch.float32, device=_device()), FILL)
    with np.errstate(invalid="ignore", over="ignore"):  # the interpreter's numpy meets the planted NaN and Inf
        ex.launch(kernel, guarded, out, case)
    start = out.storage_offset()
    guard_ok = bool((out_buf[:start] == FILL).all() and (out_buf[start + out.numel():] == FILL).all())
    return out.clone().cpu(), guard_ok


def _device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _close(actual: torch.Tensor, expected: torch.Tensor, length: int) -> bool:
    try:
        assert_close(actual, expected, reduction_length=length)
    except AssertionError:
        return False
    return True


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v == INF else ("-inf" if v == -INF else f"{v:.6g}"))


def _first_bad(got: torch.Tensor, expected: torch.Tensor) -> tuple:
    """The index of the element to show: the first NaN/Inf disagreement, else the worst one."""
    a, e = got.double(), expected
    nonfinite = (a.isnan() != e.isnan()) | ((a == INF) != (e == INF)) | ((a == -INF) != (e == -INF))
    if nonfinite.any():
        return tuple(int(i) for i in torch.nonzero(nonfinite)[0])
    err = torch.where(torch.isfinite(e), (a - e).abs(), 0.0)
    return tuple(int(i) for i in torch.unravel_index(torch.argmax(err), e.shape))


def _bad_mask(got: torch.Tensor, expected: torch.Tensor, length: int) -> torch.Tensor:
    a, e = got.double(), expected
    tol = tolerance(torch.float32, length, largest_finite(e))
    nonfinite = (a.isnan() != e.isnan()) | ((a == INF) != (e == INF)) | ((a == -INF) != (e == -INF))
    finite = torch.isfinite(a) & torch.isfinite(e)
    far = torch.where(finite, (a - e).abs() > tol.atol + tol.rtol * e.abs(), False)
    return nonfinite | far


def _knob_settings(knobs: dict):
    """Every combination of knob choices, fewest mistakes first: (mistakes, {name: value}, [causes])."""
    names = list(knobs)
    combos = []
    for choice in itertools.product(*(range(len(knobs[n])) for n in names)):
        wrong = [n for n, i in zip(names, choice) if i]
        if 0 < len(wrong) <= 3:
            values = {n: knobs[n][i][0] for n, i in zip(names, choice)}
            causes = [knobs[n][i][1] for n, i in zip(names, choice) if i]
            combos.append((len(wrong), values, causes))
    return sorted(combos, key=lambda c: c[0])


def _diagnose(ex: KernelExercise, kernel, inputs: dict, inputs64: dict, case: Case, got: torch.Tensor,
              expected: torch.Tensor) -> list[str]:
    length = ex.reduction_length(case)
    causes = []
    unwritten = got == FILL
    if unwritten.any():
        index = tuple(int(i) for i in torch.nonzero(unwritten)[0])
        causes.append(f"{int(unwritten.sum())} output elements were never stored (first at {index}): a store "
                      "mask that is too strict, or offsets that send two lanes to one element")
    new_nan = got.isnan() & ~expected.isnan()
    if new_nan.any():
        try:
            again, _ = _run(ex, kernel, inputs, case, 0.0)
        except Exception:  # noqa: BLE001 - it ran once already; the diagnosis is a best effort
            again = got
        if (~again[new_nan].isnan()).any():
            causes.append("reads outside the input: the checker surrounds each input with NaN, and these NaN "
                          "disappear when it surrounds them with 0. A tl.load without its mask (the tail of "
                          "the last tile, or a tap in the padding) or offsets that run past the tensor")
    # The fewest modelled mistakes that give exactly this output.
    level = None
    for mistakes, values, knob_causes in _knob_settings(ex.knobs):
        if level is not None and mistakes > level:
            break
        if _close(got, ex.model(inputs64, case, **values), length):
            level = mistakes
            causes += [c for c in knob_causes if c not in causes]
    lost = expected.isnan() & ~got.isnan()
    if lost.any() and not any("NaN" in c for c in causes):
        causes.append(ex.nan_lost)
    if (expected.isinf() & got.isnan()).any():
        causes.append("an Inf became NaN: Inf * 0 or Inf - Inf on the way (a masked lane's 0 times an Inf?)")
    if level is None and ex.border_hint:
        bad = _bad_mask(got, expected, length)
        h, w = got.shape[-2:]
        border = torch.zeros(h, w, dtype=torch.bool)
        border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
        if bad.any() and not (bad & ~border).any():
            causes.append("only pixels on the border of the map are wrong: the taps that fall in the zero padding "
                          "must be masked and read 0 (ih, iw outside [0, H) x [0, W))")
    if not causes:
        causes.append("none of the usual mistakes reproduces this output; compare each line with the task")
    return causes


def check_kernel(name: str, kernel, *, raise_on_fail: bool = True, verbose: bool = True) -> KernelReport:
    """Run ``kernel`` on every case of kernel exercise ``name`` and compare it with the float64 model.

    Returns a :class:`KernelReport` (truthy when correct) and prints it (``verbose``). A wrong
    kernel raises AssertionError with the report unless ``raise_on_fail=False``; a kernel that
    raises while it runs counts as wrong, with the error in the report."""
    if name not in KERNEL_EXERCISES:
        raise KeyError(f"no kernel exercise {name!r}; known: {', '.join(sorted(KERNEL_EXERCISES))}")
    ex = KERNEL_EXERCISES[name]
    report = KernelReport(name, passed=True)
    for number, case in enumerate(ex.cases, 1):
        gen = torch.Generator().manual_seed(case.seed)
        inputs = ex.make_inputs(case, gen)
        inputs64 = {k: v.double() for k, v in inputs.items()}
        expected = ex.model(inputs64, case)
        report.cases_run = number
        label = f"{number} of {len(ex.cases)} ({case.describe()})"
        try:
            got, guard_ok = _run(ex, kernel, {k: v.to(_device()) for k, v in inputs.items()}, case, NAN)
        except Exception as error:  # noqa: BLE001 - the learner's kernel may fail in any way
            report.passed, report.case = False, label
            report.problem = f"the kernel raised {type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
            report.causes = ["read the error: a shape that does not broadcast, a name that is not defined, "
                             "or a signature that differs from the task's"]
            break
        if guard_ok and _close(got, expected, ex.reduction_length(case)):
            continue
        report.passed, report.case = False, label
        if not guard_ok:
            report.problem = "the kernel wrote outside the output tensor"
            report.causes = ["a tl.store without its mask: the last tile's lanes past the end must not store"]
        else:
            index = _first_bad(got, expected)
            n_bad = int(_bad_mask(got, expected, ex.reduction_length(case)).sum())
            report.problem = (f"output{list(index)}: expected {_fmt(expected[index].item())}, got "
                              f"{_fmt(got[index].item())} ({n_bad} of {got.numel()} elements wrong)")
            report.causes = _diagnose(ex, kernel, {k: v.to(_device()) for k, v in inputs.items()}, inputs64,
                                      case, got, expected)
        break
    if verbose:
        print(report)
    if not report.passed and raise_on_fail:
        raise AssertionError(str(report))
    return report


def task(name: str) -> str:
    """The task of kernel exercise ``name``: what to compute, the signature, and how it is launched."""
    ex = KERNEL_EXERCISES[name]
    return f"kernel exercise {name} (lesson {ex.lesson}): {ex.task}"


def solution(name: str):
    """The worked solution of kernel exercise ``name``: ``lessons/solutions/lesson_NN.py``'s kernel."""
    ex = KERNEL_EXERCISES[name]
    path = Path(__file__).resolve().parents[1] / "lessons" / "solutions" / f"lesson_{ex.lesson}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the worked solutions live in the repository's lessons/solutions/; "
                                "run from a checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"lesson_{ex.lesson}_solutions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, ex.kernel_name)


# ------------------------------------------------------------------------------- the exercises


def _values(gen: torch.Generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _plant_specials(t: torch.Tensor, gen: torch.Generator, values=(NAN, INF, -INF)) -> None:
    """Put each of ``values`` at a random element of ``t`` (different elements)."""
    spots = torch.randperm(t.numel(), generator=gen)[:len(values)]
    for spot, v in zip(spots.tolist(), values):
        t.view(-1)[spot] = v


def _read(x: torch.Tensor, n, c, ih, iw, masked: bool) -> torch.Tensor:
    """``x[n, c, ih, iw]`` (broadcast index tensors) as a kernel's load sees it: masked, 0 outside the
    map; unmasked, the flat NCHW element there, and the checker's NaN outside the tensor."""
    N, C, H, W = x.shape
    flat = x.reshape(-1)
    if masked:
        ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        at = ((n * C + c) * H + ih.clamp(0, H - 1)) * W + iw.clamp(0, W - 1)
        return torch.where(ok, flat[at], 0.0)
    at = ((n * C + c) * H + ih) * W + iw
    ok = (at >= 0) & (at < flat.numel())
    return torch.where(ok, flat[at.clamp(0, flat.numel() - 1)], NAN)


def _leaky(y: torch.Tensor, slope) -> torch.Tensor:
    return torch.where(y > 0, y, y * slope)


_SHIFTS = [(dh, dw) for dh in (0, -1, 1) for dw in (0, -1, 1)]


def _shift_cause(shift) -> str:
    dh, dw = shift

    def term(axis, d):
        return f"{axis} + {'r' if axis == 'h' else 's'}" + ("" if d == 1 else (" - 2" if d == -1 else " - 1"))
    return (f"tap offsets off by one: tap (r, s) of output pixel (h, w) must read input pixel (h + r - 1, w + s - 1) "
            f"(padding 1); yours reads ({term('h', dh)}, {term('w', dw)})")


# ---- lesson 01: a 3x3 convolution with bias and LeakyReLU ----

def _conv_inputs(case: Case, gen) -> dict:
    s = case.sizes
    x = _values(gen, s["N"], s["C"], s["H"], s["W"])
    if case.special:
        _plant_specials(x, gen)
    return {"x": x, "w": _values(gen, s["K"], s["C"], 3, 3) / 3, "b": _values(gen, s["K"])}


def _conv_model(t, case, shift=(0, 0), mask=True, bias=True, act=True):
    x, w, b = t["x"], t["w"], t["b"]
    N, C, H, W = x.shape
    n, c, h, ww, r, s = (torch.arange(d).view([-1 if i == j else 1 for j in range(6)])
                         for i, d in enumerate((N, C, H, W, 3, 3)))
    taps = _read(x, n, c, h + r - 1 + shift[0], ww + s - 1 + shift[1], mask)  # [N, C, H, W, 3, 3]
    y = torch.einsum("nchwrs,kcrs->nkhw", taps, w)
    if bias:
        y = y + b.view(1, -1, 1, 1)
    return _leaky(y, 0.1) if act else y


def _conv_launch(kernel, t, out, case):
    s = case.sizes
    grid = (triton.cdiv(s["N"] * s["H"] * s["W"], 32), triton.cdiv(s["K"], 16))
    kernel[grid](t["x"], t["w"], t["b"], out, s["N"], s["C"], s["H"], s["W"], s["K"], 0.1, BLOCK_M=32, BLOCK_N=16)


_register(KernelExercise(
    name="conv3x3", lesson="01", kernel_name="conv3x3_kernel",
    task=("out = leaky_relu(conv2d(x, w, b, padding=1), 0.1) for x [N, C, H, W], w [K, C, 3, 3], b [K], all NCHW "
          "contiguous float32. conv3x3_kernel[(cdiv(N*H*W, 32), cdiv(K, 16))](x, w, b, out, N, C, H, W, K, slope, "
          "BLOCK_M=32, BLOCK_N=16): program (i, j) computes output pixels i*32.. (flattened over n, h, w) x "
          "output channels j*16.."),
    cases=(Case({"N": 1, "C": 3, "H": 5, "W": 6, "K": 5}, 1), Case({"N": 2, "C": 2, "H": 4, "W": 5, "K": 17}, 2),
           Case({"N": 1, "C": 2, "H": 6, "W": 5, "K": 4}, 3, special=True)),
    make_inputs=_conv_inputs, out_shape=lambda c: (c.sizes["N"], c.sizes["K"], c.sizes["H"], c.sizes["W"]),
    launch=_conv_launch, model=_conv_model,
    knobs={
        "shift": [(sh, _shift_cause(sh) if sh != (0, 0) else "") for sh in _SHIFTS],
        "mask": [(True, ""), (False, "no padding mask: a tap outside [0, H) x [0, W) must read 0 (mask=row_ok & "
                                     "(ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), other=0.0); unmasked it reads a "
                                     "neighbouring row or channel")],
        "bias": [(True, ""), (False, "dropped bias: add b[k] to the accumulator before the activation")],
        "act": [(True, ""), (False, "no LeakyReLU: y = tl.where(y > 0, y, y * slope) before the store")],
    },
    reduction_length=lambda c: c.sizes["C"] * 9, border_hint=True,
))


# ---- lesson 02: a depthwise 3x3 convolution with bias, stride 1 or 2 ----

def _dw_inputs(case: Case, gen) -> dict:
    s = case.sizes
    x = _values(gen, s["N"], s["C"], s["H"], s["W"])
    if case.special:
        _plant_specials(x, gen)
    return {"x": x, "w": _values(gen, s["C"], 1, 3, 3), "b": _values(gen, s["C"])}


def _dw_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _dw_out_shape(case):
    s = case.sizes
    return s["N"], s["C"], _dw_size(s["H"], s["stride"]), _dw_size(s["W"], s["stride"])


def _dw_model(t, case, stride=None, weight="own", shift=(0, 0), mask=True, bias=True):
    x, w, b = t["x"], t["w"].reshape(-1, 3, 3), t["b"]
    N, C, OH, OW = _dw_out_shape(case)
    st = case.sizes["stride"] if stride is None else stride
    n, c, oh, ow = (torch.arange(d).view([-1 if i == j else 1 for j in range(4)]) for i, d in enumerate((N, C, OH, OW)))
    y = torch.zeros(N, C, OH, OW, dtype=x.dtype)
    for r in range(3):
        for s in range(3):
            tap = _read(x, n, c, oh * st + r - 1 + shift[0], ow * st + s - 1 + shift[1], mask)
            filt = {"own": w[:, r, s], "first": w[0, r, s].expand(C), "transposed": w[:, s, r],
                    "unscaled": w.reshape(-1)[torch.arange(C) + r * 3 + s]}[weight]
            y = y + tap * filt.view(1, -1, 1, 1)
    return y + b.view(1, -1, 1, 1) if bias else y


def _dw_launch(kernel, t, out, case):
    s = case.sizes
    N, C, OH, OW = _dw_out_shape(case)
    kernel[(triton.cdiv(out.numel(), 64),)](t["x"], t["w"], t["b"], out, N, C, s["H"], s["W"], OH, OW, s["stride"],
                                            BLOCK=64)


_register(KernelExercise(
    name="depthwise", lesson="02", kernel_name="depthwise_kernel",
    task=("out = conv2d(x, w, b, stride, padding=1, groups=C) for x [N, C, H, W], w [C, 1, 3, 3], b [C], NCHW "
          "contiguous float32, stride 1 or 2, OH = (H - 1) // stride + 1. depthwise_kernel[(cdiv(N*C*OH*OW, 64),)]"
          "(x, w, b, out, N, C, H, W, OH, OW, stride, BLOCK=64): one output element per lane, flattened over "
          "(n, c, oh, ow)."),
    cases=(Case({"N": 1, "C": 3, "H": 7, "W": 9, "stride": 1}, 11),
           Case({"N": 2, "C": 4, "H": 9, "W": 8, "stride": 2}, 12),
           Case({"N": 2, "C": 2, "H": 6, "W": 7, "stride": 2}, 13, special=True)),
    make_inputs=_dw_inputs, out_shape=_dw_out_shape, launch=_dw_launch, model=_dw_model,
    knobs={
        "stride": [(None, ""), (1, "the stride is missing: output pixel (oh, ow) reads around input pixel "
                                   "(oh * stride, ow * stride)")],
        "weight": [("own", ""), ("first", "every channel uses channel 0's filter: the weight offset must include "
                                          "c * 9 (w[c, 0, r, s] is at c * 9 + r * 3 + s)"),
                   ("transposed", "r and s swapped in the weight offset: w[c, 0, r, s] is at c * 9 + r * 3 + s"),
                   ("unscaled", "channel c's filter starts at c * 9, not c: each filter holds 9 weights "
                                "(w[c, 0, r, s] is at c * 9 + r * 3 + s)")],
        "shift": [(sh, _shift_cause(sh).replace("(h + r - 1, w + s - 1)", "(oh * stride + r - 1, ow * stride + s - 1)")
                   if sh != (0, 0) else "") for sh in _SHIFTS],
        "mask": [(True, ""), (False, "no padding mask: a tap outside [0, H) x [0, W) must read 0 (mask it, other=0.0)")],
        "bias": [(True, ""), (False, "dropped bias: add b[c]")],
    },
    reduction_length=lambda c: 9, border_hint=True,
))


# ---- lesson 03: the squeeze, one split of the positions per program ----

SQUEEZE_BLOCK_P, SQUEEZE_BLOCK_HW = 4, 16


def _squeeze_plan(case):
    s = case.sizes
    planes, hw = s["N"] * s["C"], s["H"] * s["W"]
    per_split = triton.cdiv(triton.cdiv(hw, s["splits"]), SQUEEZE_BLOCK_HW) * SQUEEZE_BLOCK_HW
    return planes, hw, per_split, triton.cdiv(hw, per_split)


def _squeeze_inputs(case: Case, gen) -> dict:
    s = case.sizes
    x = _values(gen, s["N"], s["C"], s["H"], s["W"])
    if case.special:
        _plant_specials(x, gen, (NAN, INF))
    return {"x": x}


def _squeeze_model(t, case, mask=True, first="split", divide="hw"):
    x = t["x"].reshape(-1)
    planes, hw, per_split, splits = _squeeze_plan(case)
    total = torch.zeros(planes, dtype=x.dtype)
    p = torch.arange(planes)[:, None]
    for split in range(splits):
        start = split * per_split if first == "split" else 0
        pos = torch.arange(start, start + per_split)[None, :]
        at = p * hw + pos
        if mask:
            vals = torch.where(pos < hw, x[at.clamp(max=x.numel() - 1)], 0.0)
        else:
            vals = torch.where(at < x.numel(), x[at.clamp(max=x.numel() - 1)], NAN)
        scale = {"hw": 1 / hw, "tile": 1 / SQUEEZE_BLOCK_HW, "none": 1.0, "split": 1 / per_split}[divide]
        total = total + vals.sum(1) * scale
    return total.view(case.sizes["N"], case.sizes["C"])


def _squeeze_launch(kernel, t, out, case):
    planes, hw, per_split, splits = _squeeze_plan(case)
    partial = torch.full((splits, planes), NAN, dtype=torch.float32, device=out.device)
    kernel[(triton.cdiv(planes, SQUEEZE_BLOCK_P), splits)](t["x"], partial, planes, hw, per_split,
                                                           BLOCK_P=SQUEEZE_BLOCK_P, BLOCK_HW=SQUEEZE_BLOCK_HW)
    out.copy_(partial.sum(0).view(out.shape))  # the finish step, done here: the splits in order


_register(KernelExercise(
    name="squeeze", lesson="03", kernel_name="squeeze_partial_kernel",
    task=("partial[split, p] = (sum of x's plane p over positions split*per_split .. split*per_split + per_split - 1, "
          "those inside the map) / (H*W), for x [N, C, H, W] NCHW contiguous float32 and planes p = n*C + c; "
          "per_split is a multiple of BLOCK_HW. squeeze_partial_kernel[(cdiv(planes, 4), splits)](x, partial, "
          "planes, HW, per_split, BLOCK_P=4, BLOCK_HW=16); the check adds the splits' partials into the mean."),
    cases=(Case({"N": 1, "C": 5, "H": 7, "W": 9, "splits": 2}, 21), Case({"N": 2, "C": 3, "H": 10, "W": 11, "splits": 3}, 22),
           Case({"N": 2, "C": 3, "H": 5, "W": 13, "splits": 2}, 23, special=True)),
    make_inputs=_squeeze_inputs, out_shape=lambda c: (c.sizes["N"], c.sizes["C"]),
    launch=_squeeze_launch, model=_squeeze_model,
    knobs={
        "mask": [(True, ""), (False, "no mask on the positions: the map's last tile runs past H*W and must read 0 "
                                     "(mask=(hw < HW)[None, :] & p_ok[:, None], other=0.0)")],
        "first": [("split", ""), ("zero", "every split starts at position 0: split s starts at s * per_split")],
        "divide": [("hw", ""), ("tile", "divided by BLOCK_HW: a mean over the map divides by H*W"),
                   ("split", "divided by per_split, this split's size: each split's share of the mean is its sum / (H*W)"),
                   ("none", "not divided: the squeeze is a mean, the sum / (H*W)")],
    },
    reduction_length=lambda c: c.sizes["H"] * c.sizes["W"],
))


# ---- lesson 04: FPN's nearest upsample-and-add, after the lateral's LeakyReLU ----

def _up_inputs(case: Case, gen) -> dict:
    s = case.sizes
    lateral = _values(gen, s["N"], s["C"], s["H"], s["W"])
    coarse = _values(gen, s["N"], s["C"], s["CH"], s["CW"])
    if case.special:
        _plant_specials(lateral, gen, (NAN, -INF))
        _plant_specials(coarse, gen, (INF,))
    return {"lateral": lateral, "coarse": coarse}


def _source(d: torch.Tensor, size_in: int, size_out: int, rule: str) -> torch.Tensor:
    if rule == "float32":  # PyTorch: floor(d * float32(in / out)) in float32, clamped
        scale = np.float32(size_in) / np.float32(size_out)
        return torch.from_numpy(np.minimum(np.floor(d.numpy().astype(np.float32) * scale).astype(np.int64), size_in - 1))
    if rule == "exact":
        return d * size_in // size_out
    if rule == "round":
        return torch.clamp(torch.round(d * size_in / size_out).long(), max=size_in - 1)
    return torch.clamp(d * size_out // size_in, max=size_in - 1)  # "inverted"


def _up_model(t, case, rule="float32", act="before"):
    lateral, coarse = t["lateral"], t["coarse"]
    N, C, H, W = lateral.shape
    rows = _source(torch.arange(H), coarse.shape[2], H, rule)
    cols = _source(torch.arange(W), coarse.shape[3], W, rule)
    up = coarse[:, :, rows][:, :, :, cols]
    if act == "before":
        return _leaky(lateral, 0.1) + up
    return _leaky(lateral + up, 0.1) if act == "after" else lateral + up


def _up_launch(kernel, t, out, case):
    s = case.sizes
    scale_h = float(np.float32(s["CH"]) / np.float32(s["H"]))
    scale_w = float(np.float32(s["CW"]) / np.float32(s["W"]))
    kernel[(triton.cdiv(out.numel(), 64),)](t["lateral"], t["coarse"], out, out.numel(), s["C"], s["H"], s["W"],
                                            s["CH"], s["CW"], scale_h, scale_w, 0.1, BLOCK=64)


_register(KernelExercise(
    name="upsample_add", lesson="04", kernel_name="upsample_add_kernel",
    task=("out = leaky_relu(lateral, 0.1) + F.interpolate(coarse, size=(H, W), mode='nearest') for lateral "
          "[N, C, H, W] and coarse [N, C, CH, CW], NCHW contiguous float32. Output row h reads coarse row "
          "min(floor(h * scale_h), CH - 1) with scale_h = float32(CH / H) and the product in float32 (columns "
          "alike). upsample_add_kernel[(cdiv(N*C*H*W, 64),)](lateral, coarse, out, total, C, H, W, CH, CW, "
          "scale_h, scale_w, slope, BLOCK=64): one output element per lane, flattened over (n, c, h, w)."),
    cases=(Case({"N": 1, "C": 2, "H": 7, "W": 11, "CH": 4, "CW": 6}, 31),
           Case({"N": 1, "C": 1, "H": 82, "W": 3, "CH": 2, "CW": 2}, 32),
           Case({"N": 2, "C": 3, "H": 6, "W": 9, "CH": 3, "CW": 5}, 33, special=True)),
    make_inputs=_up_inputs, out_shape=lambda c: (c.sizes["N"], c.sizes["C"], c.sizes["H"], c.sizes["W"]),
    launch=_up_launch, model=_up_model,
    knobs={
        "rule": [("float32", ""),
                 ("exact", "the source row is computed exactly (h * CH // H); PyTorch computes floor(h * scale) in "
                           "float32 with scale = float32(CH / H), and at 2 -> 82 rows the two pick different rows"),
                 ("round", "the source row is rounded to nearest; nearest upsampling takes floor(h * scale)"),
                 ("inverted", "the scale is inverted: it is CH / H (coarse over fine), not H / CH")],
        "act": [("before", ""), ("after", "the LeakyReLU is applied after the add; FPN's lateral has its activation "
                                          "before the coarse map is added"),
                ("none", "no LeakyReLU on the lateral: tl.where(y > 0, y, y * slope)")],
    },
))


# ---- lesson 05: the stem's epilogue, PReLU then a 2x2 max-pool that keeps NaN ----

def _pool_inputs(case: Case, gen) -> dict:
    s = case.sizes
    y = _values(gen, s["N"], s["C"], s["H"], s["W"])
    if case.special:  # NaN in separate windows (never a window of NaN only), and the infinities
        y[0, 0, 0, 1] = NAN
        y[-1, -1, 2, 2] = NAN
        y[0, -1, 3, 0] = INF
        y[-1, 0, 1, 3] = -INF
    slopes = torch.linspace(-0.5, 0.5, s["C"])  # negative slopes too: then the max does not commute with the PReLU
    return {"y": y, "slopes": slopes}


def _pool_model(t, case, nan="keep", window=2, order="prelu_first", slope="own"):
    y, slopes = t["y"], t["slopes"]
    N, C, H, W = y.shape
    PH, PW = H // 2, W // 2
    a = slopes.view(1, -1, 1, 1) if slope == "own" else slopes[0]
    v = _leaky(y, a) if order == "prelu_first" else y
    ph, pw = torch.arange(PH).view(-1, 1), torch.arange(PW).view(1, -1)
    taps = torch.stack([v[:, :, ph * window + dy, pw * window + dx] for dy in range(2) for dx in range(2)])
    best = taps.amax(0) if nan == "keep" else torch.where(taps.isnan(), -INF, taps).amax(0)
    return best if order == "prelu_first" else _leaky(best, a)


def _pool_launch(kernel, t, out, case):
    s = case.sizes
    kernel[(triton.cdiv(out.numel(), 64),)](t["y"], t["slopes"], out, out.numel(), s["C"], s["H"], s["W"],
                                            s["H"] // 2, s["W"] // 2, BLOCK=64)


_register(KernelExercise(
    name="prelu_maxpool", lesson="05", kernel_name="prelu_maxpool_kernel",
    task=("out = F.max_pool2d(F.prelu(y, slopes), 2) for y [N, C, H, W] NCHW contiguous float32 and slopes [C]; "
          "PH, PW = H // 2, W // 2 (an odd last row or column is dropped). A NaN in a window gives NaN, as "
          "torch.max_pool2d does. prelu_maxpool_kernel[(cdiv(N*C*PH*PW, 64),)](y, slopes, out, total, C, H, W, PH, PW, "
          "BLOCK=64): one output element per lane, flattened over (n, c, ph, pw)."),
    cases=(Case({"N": 1, "C": 3, "H": 8, "W": 10}, 41), Case({"N": 2, "C": 4, "H": 7, "W": 9}, 42),
           Case({"N": 2, "C": 3, "H": 6, "W": 8}, 43, special=True)),
    make_inputs=_pool_inputs, out_shape=lambda c: (c.sizes["N"], c.sizes["C"], c.sizes["H"] // 2, c.sizes["W"] // 2),
    launch=_pool_launch, model=_pool_model,
    knobs={
        "nan": [("keep", ""), ("drop", "NaN lost by the maximum: torch.max_pool2d propagates NaN, but tl.maximum (on a "
                                       "GPU and in recent interpreters) and tl.where(v > best, v, best) drop it; keep "
                                       "it with tl.where((v > best) | (v != v), v, best)")],
        "window": [(2, ""), (1, "the window stride is missing: pooled pixel (ph, pw) covers rows 2*ph, 2*ph + 1 "
                                "and columns 2*pw, 2*pw + 1")],
        "order": [("prelu_first", ""), ("max_first", "the max is taken before the PReLU: that gives the same result "
                                                     "only for slopes >= 0 (lesson 05, exercise 3)")],
        "slope": [("own", ""), ("first", "every channel uses slopes[0]: load slopes[c], one slope per channel")],
    },
    nan_lost=("NaN lost by the maximum: torch.max_pool2d propagates NaN, but tl.maximum (on a GPU and in recent "
              "interpreters) and tl.where(v > best, v, best) drop it; keep it with tl.where((v > best) | (v != v), v, best)"),
))
