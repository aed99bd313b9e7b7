"""Checks for the lessons' exercises: the learner's answer cell and CI call the same function.

    from fused import exercises
    exercises.check("00", 2, 12600)   # prints "correct", or raises AssertionError saying what is off
    exercises.check("00", 2, None)    # not answered yet: prints the question, raises nothing
    exercises.check_all("00", {1: 0.8, 2: 12600, 3: None})  # a lesson's answer cell: one line per
                                      # answer, then one AssertionError naming every wrong one

A wrong tuple names each wrong element and whether it is too high or too low; a number checked
with a tolerance says the tolerance.

Every check works its answer out from the packages (plans, reference modules, the tolerance
policy), never from a number typed in here. ``lessons/solutions/lesson_NN.py`` holds one worked
answer per exercise (``exercise_N``), and ``tests/lessons/test_solutions.py`` runs each through
its check. Exercises that need a GPU have no check: their lessons say so.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

import reference as R

from .folding import fold_batchnorm
from .kernel_exercises import check_kernel  # noqa: F401  (kernel-writing exercises: fused/kernel_exercises.py)
from .kernels import conv2d as conv_kernels
from .kernels import depthwise as dw_kernels
from .kernels import squeeze_excite as se_kernels
from .tolerance import assert_close

H100_SMS = 132  # streaming multiprocessors of an H100 SXM, the GPU the exercises size grids for
H100_FP16_FLOPS, H100_BYTES_PER_S = 989e12, 3.35e12  # spec sheet: dense fp16 tensor cores, HBM3


@dataclass(frozen=True)
class Exercise:
    """One exercise: its question and the function that checks an answer (returns a short note)."""

    lesson: str
    number: int
    question: str
    check: Callable[[Any], str]


EXERCISES: dict[tuple[str, int], Exercise] = {}


def exercise(lesson: str, number: int, question: str):
    def register(fn: Callable[[Any], str]) -> Callable[[Any], str]:
        EXERCISES[(lesson, number)] = Exercise(lesson, number, question, fn)
        return fn
    return register


def check(lesson: str, number: int, answer: Any) -> bool:
    """Check ``answer`` to exercise ``number`` of lesson ``lesson`` ("00".."07").

    ``None`` means not answered yet: prints the question and returns False. A wrong answer raises
    AssertionError with a hint; a right one prints "correct" and returns True."""
    key = (str(lesson).zfill(2), int(number))
    if key not in EXERCISES:
        known = ", ".join(str(n) for (les, n) in sorted(EXERCISES) if les == key[0])
        raise KeyError(f"lesson {key[0]} has no checked exercise {key[1]} (checked ones: {known or 'none'})")
    ex = EXERCISES[key]
    if answer is None:
        print(f"lesson {ex.lesson}, exercise {ex.number}: not answered yet. {ex.question}")
        return False
    note = ex.check(answer)
    print(f"lesson {ex.lesson}, exercise {ex.number}: correct. {note}".rstrip())
    return True


def check_all(lesson: str, answers: dict[int, Any]) -> dict[int, bool]:
    """Check every answer of ``answers`` (exercise number -> answer) for lesson ``lesson``, print one
    line for each (correct, not answered yet, or what is wrong), and then, if any is wrong, raise one
    AssertionError naming them all. Returns number -> True (correct) or False (not answered).

    A learner's function that raises counts as a wrong answer, reported with its error."""
    lesson = str(lesson).zfill(2)
    unknown = [n for n in answers if (lesson, int(n)) not in EXERCISES]
    if unknown:
        known = ", ".join(str(n) for (les, n) in sorted(EXERCISES) if les == lesson)
        raise KeyError(f"lesson {lesson} has no checked exercise {unknown} (checked ones: {known or 'none'})")
    results, wrong = {}, []
    for number, answer in answers.items():
        try:
            results[number] = check(lesson, number, answer)
        except AssertionError as error:
            print(f"lesson {lesson}, exercise {number}: WRONG. {error}")
            wrong.append(number)
        except Exception as error:  # the learner's function failed: report it with the rest
            print(f"lesson {lesson}, exercise {number}: WRONG. Your answer raised {type(error).__name__}: {error}")
            wrong.append(number)
    if wrong:
        raise AssertionError(f"lesson {lesson}: {len(wrong)} of {len(answers)} answers wrong (exercise "
                             f"{', '.join(map(str, wrong))}); each one is explained above")
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _direction(got: Any, expected: Any) -> str:
    """'too high' or 'too low' for numbers, else 'not right'."""
    if _is_number(got) and _is_number(expected):
        return "too high" if got > expected else "too low"
    return "not right"


def _tolerance(rel: float, abs_: float) -> str:
    parts = ([f"within {rel:.2%} of the answer".replace(".00%", "%")] if rel else []) + ([f"within {abs_:g} of it"] if abs_ else [])
    return " or ".join(parts) or "exactly"


def _near(answer: Any, expected: float, what: str, *, rel: float = 0.01, abs_: float = 0.0) -> None:
    """Pass when ``answer`` is within ``rel`` (relative) or ``abs_`` (absolute) of ``expected``; the
    message states the tolerance and the direction."""
    assert _is_number(answer), f"{what}: expected a number, got {answer!r}"
    assert math.isclose(answer, expected, rel_tol=rel, abs_tol=abs_), (
        f"{what}: {answer!r} is {_direction(answer, expected)} (accepted: {_tolerance(rel, abs_)}); recount")


def _mismatches(got: Any, expected: Any, name: str, *, rel: float, abs_: float) -> list[str]:
    """One message per wrong element of ``got`` (nested tuples recurse), naming the element."""
    if isinstance(expected, tuple):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return [f"{name}: expected a tuple of {len(expected)}, got {got!r}"]
        return [m for i, (g, e) in enumerate(zip(got, expected))
                for m in _mismatches(g, e, f"{name}[{i}]", rel=rel, abs_=abs_)]
    if _is_number(expected) and isinstance(expected, float):
        if not _is_number(got):
            return [f"{name} should be a number, got {got!r}"]
        if math.isclose(got, expected, rel_tol=rel, abs_tol=abs_):
            return []
        return [f"{name} = {got!r} is {_direction(got, expected)} (accepted: {_tolerance(rel, abs_)})"]
    if _is_number(expected) and not _is_number(got):
        return [f"{name} should be a number, got {got!r}"]
    return [] if got == expected else [f"{name} = {got!r} is {_direction(got, expected)}"]


def _equal(answer: Any, expected: Any, what: str, names: tuple[str, ...] = (), *, rel: float = 0.0,
           abs_: float = 0.0) -> None:
    """Pass when ``answer`` equals ``expected`` (float elements within ``rel``/``abs_``). For a tuple,
    the message names each wrong element (``names``: one name per top-level element) and says
    whether it is too high or too low."""
    if isinstance(expected, tuple):
        if not isinstance(answer, (list, tuple)) or len(answer) != len(expected):
            shape = ", ".join(names) if names else f"{len(expected)} values"
            raise AssertionError(f"{what}: expected a tuple ({shape}), got {answer!r}")
        labels = names or tuple(f"element {i}" for i in range(len(expected)))
        wrong = [m for got, exp, label in zip(answer, expected, labels)
                 for m in _mismatches(got, exp, label, rel=rel, abs_=abs_)]
        right = sum(not _mismatches(g, e, "", rel=rel, abs_=abs_) for g, e in zip(answer, expected))
        others = {0: "", 1: " (the other one is right)"}.get(right, f" (the other {right} are right)")
        assert not wrong, f"{what}: " + "; ".join(wrong) + others + "; recount"
        return
    wrong = _mismatches(answer, expected, "your answer", rel=rel, abs_=abs_)
    assert not wrong, f"{what}: {wrong[0]}; recount"


def conv_flops(model: nn.Module, x: torch.Tensor, inside: type | None = None) -> tuple[int, int]:
    """(FLOPs of every conv and linear layer, FLOPs of those inside an ``inside`` module) for one
    forward pass on ``x``: 2 x multiply-accumulates, counted with forward hooks."""
    within = set()
    if inside is not None:
        for m in model.modules():
            if isinstance(m, inside):
                within.update(id(leaf) for leaf in m.modules())
    counts, handles = [0, 0], []

    def hook(module, args, out):
        if isinstance(module, nn.Conv2d):
            macs = out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            macs = out.numel() * module.in_features
        counts[0] += 2 * macs
        counts[1] += 2 * macs if id(module) in within else 0

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


def _programs(plan) -> int:
    return math.prod(plan.grid)


# ---- lesson 00: a tour of the blocks ----

@exercise("00", 1, "What share of RetinaFace resnet50's conv FLOPs (at 320 x 320) is in its Bottleneck blocks? "
          "Answer a fraction, e.g. 0.5 (within 0.005).")
def _00_1(answer):
    # At any size that is a multiple of 32 every map scales alike, so 64 x 64 gives the 320 x 320 share.
    total, bottleneck = conv_flops(R.retinaface("resnet50"), torch.zeros(1, 3, 64, 64), inside=R.Bottleneck)
    _near(answer, bottleneck / total, "Bottleneck share of the FLOPs", abs_=0.005)
    return f"{bottleneck / total:.1%} of the FLOPs are in Bottlenecks."


@exercise("00", 2, "How many priors P does RetinaFace have for a 480 x 640 (rows x columns) input? Answer an int.")
def _00_2(answer):
    _equal(answer, R.num_priors(480, 640), "P for 480 x 640")
    return "Levels of 60 x 80, 30 x 40 and 15 x 20, two anchors per pixel."


@exercise("00", 3, "What is fc5's arithmetic intensity (FLOP per float32 byte of its inputs, weights, bias and "
          "output) at batch 8? Answer a float (within 1%).")
def _00_3(answer):
    fc5, batch, elem = R.arcface().fc5, 8, 4
    flops = 2 * batch * fc5.in_features * fc5.out_features
    nbytes = elem * (batch * fc5.in_features + fc5.weight.numel() + fc5.bias.numel() + batch * fc5.out_features)
    _near(answer, flops / nbytes, "fc5's FLOP/byte at batch 8")
    return f"{flops / nbytes:.2f} FLOP/byte: the weights dominate the bytes, so 8x the batch is almost 8x the intensity."


# ---- lesson 01: conv + BN + LeakyReLU ----

@exercise("01", 2, "SSH conv3X3 on the 20 x 20 level (1 x 64 x 20 x 20 -> 32 channels, 3x3): how many programs does "
          "the GPU plan launch, and how many with BLOCK_M = 32? Answer (programs, programs_with_block_m_32).")
def _01_2(answer):
    plan = conv_kernels.conv2d_plan(1, 64, 20, 20, 32, 3, 1, 1, interpreter=False)
    rows = 20 * 20
    expected = (_programs(plan), math.ceil(rows / 32) * plan.grid[1])
    _equal(answer, expected, "(programs, programs with BLOCK_M = 32)", ("programs", "programs with BLOCK_M = 32"))
    return f"Each row tile reloads the weights, so {expected[1]} tiles read them {expected[1]} times instead of {expected[0]}."


@exercise("01", 6, "Fold a BatchNorm into a conv by hand: write fold(weight, bn) -> (weight, bias) without "
          "fused.fold_batchnorm. Answer the function.")
def _01_6(fold):
    assert callable(fold), f"expected a function fold(weight, bn), got {fold!r}"
    gen = torch.Generator().manual_seed(6)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=False)
    bn = R.randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(7)), seed=6)[0].eval()
    x = torch.randn(2, 5, 6, 8, generator=gen)
    w, b = fold(conv.weight.detach(), bn)
    with torch.no_grad():
        expected = bn.double()(conv.double()(x.double()))
        got = F.conv2d(x, w.float(), b.float(), padding=1)
    assert_close(got, expected, reduction_length=5 * 9, what="conv with your folded weight and bias")
    w_ref, b_ref = fold_batchnorm(conv.weight.float(), None, bn.float())
    return "Matches conv -> BN in float64" + (", and fused.fold_batchnorm." if torch.allclose(w.float(), w_ref) and
                                               torch.allclose(b.float(), b_ref) else ".")


# ---- lesson 02: depthwise ----

@exercise("02", 2, "conv_dw_fused's GPU plan at batch 1 gives stage2 (128 -> 128, 40 x 40) and stage3 (256 -> 256, "
          "20 x 20) few programs (fp16: 25, and 7 x 2 output-channel tiles = 14). How many with BLOCK_M = 16? "
          "Answer (stage2, stage3).")
def _02_2(answer):
    expected = []
    for C, H in ((128, 40), (256, 20)):
        plan = dw_kernels.conv_dw_fused_plan(1, C, H, H, C, 1, interpreter=False)
        expected.append(math.ceil(H * H / 16) * plan.grid[1])
    _equal(answer, tuple(expected), "(stage2 programs, stage3 programs) with BLOCK_M = 16",
           ("stage2 programs", "stage3 programs"))
    return "Four times the programs, each re-reading a 3x3 neighbourhood around a smaller tile."


@exercise("02", 5, "Fusing two stride-1 conv_dw blocks: for an 8 x 8 tile of the second block's output, how many "
          "extra output pixels of the first block must a program compute (the halo), as a fraction of 64? "
          "Answer a float (within 1%).")
def _02_5(answer):
    tile = torch.ones(1, 1, 8, 8)
    needed = F.max_pool2d(F.pad(tile, (1, 1, 1, 1)), 3, stride=1, padding=1)  # pixels the tile's 3x3 windows read
    extra = (needed.sum().item() - tile.sum().item()) / tile.sum().item()
    _near(answer, extra, "extra first-block pixels per tile")
    return f"{extra:.0%} more FLOPs for the first block's depthwise and pointwise parts."


@exercise("02", 6, "How many times more weights does a dense 3x3 conv 64 -> 128 have than conv_dw(64, 128)'s two "
          "convs (depthwise 3x3 + pointwise 1x1)? Answer a float (within 1%).")
def _02_6(answer):
    block = R.conv_dw(64, 128, 1)
    dw_pw = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Conv2d))
    dense = nn.Conv2d(64, 128, 3, padding=1, bias=False).weight.numel()
    _near(answer, dense / dw_pw, "dense / depthwise-separable weights")
    return f"{dense / dw_pw:.2f}x, and at stride 1 the same ratio of FLOPs."


# ---- lesson 03: squeeze-excite ----

@exercise("03", 2, "layer4's 3x3 conv at batch 1 (1 x 512 x 8 x 8 -> 512): how many programs (output tiles, "
          "before any split) does the GPU plan launch, and into how many splits of the reduction must each "
          f"program's work be cut to reach one program per SM on a {H100_SMS}-SM H100? Answer (programs, splits).")
def _03_2(answer):
    plan = conv_kernels.conv2d_plan(1, 512, 8, 8, 512, 3, 1, 1, interpreter=False)
    programs = math.prod(plan.grid[:2])  # the output tiles; a split-K plan adds a third grid axis
    expected = (programs, math.ceil(H100_SMS / programs))
    _equal(answer, expected, "(programs, splits)", ("programs", "splits"))
    return (f"{expected[0]} x {expected[1]} = {expected[0] * expected[1]} programs. conv2d_plan now splits this "
            f"launch itself: SPLIT_K = {plan.blocks.get('SPLIT_K', 1)} (split-K, fused/kernels/conv2d.py).")


@exercise("03", 5, "If TARGET_PROGRAMS were 512 instead of 1024, how many splits would the GPU squeeze plan use for "
          "a batch of 64 at the first stage (64 x 64 x 64 x 64), and for one face (1 x 64 x 64 x 64)? "
          "Answer (splits_batch_64, splits_one_face).")
def _03_5(answer):
    with mock.patch.object(se_kernels, "TARGET_PROGRAMS", 512):
        expected = tuple(se_kernels.se_squeeze_plan(n, 64, 64, 64, interpreter=False).splits for n in (64, 1))
    _equal(answer, expected, "(splits for batch 64, splits for one face) with TARGET_PROGRAMS = 512",
           ("splits for batch 64", "splits for one face"))
    return "Half the target, half the splits, until the map runs out of tiles: one face is capped at 64."


@exercise("03", 6, "Section 3's rule, on the two ArcFace stages its table leaves out: the GPU squeeze plan's splits "
          "for one face at layer2 (1 x 128 x 32 x 32) and at layer3 (1 x 256 x 16 x 16). Answer (splits, splits).")
def _03_6(answer):
    shapes = [(1, 128, 32, 32), (1, 256, 16, 16)]
    expected = tuple(se_kernels.se_squeeze_plan(*s, interpreter=False).splits for s in shapes)
    _equal(answer, expected, "splits of layer2 and layer3", ("splits at layer2", "splits at layer3"))
    return "Each stage has 4x fewer positions and 2x more channels than the one before: fewer tiles to split."


# ---- lesson 04: RetinaFace ----

@exercise("04", 5, "A 1080 x 1920 frame: how many rows do the three pyramid levels have, and how many priors? "
          "Answer ((rows8, rows16, rows32), P).")
def _04_5(answer):
    body = R.retinaface("mobile0.25").body.eval()
    with torch.no_grad():
        levels = body(torch.zeros(1, 3, 1080, 8))
    expected = (tuple(t.shape[2] for t in levels), R.num_priors(1080, 1920))
    _equal(answer, expected, "((rows at stride 8, 16, 32), P)", ("rows", "P"))
    return "135 is not 2 x 68: the FPN must upsample to an explicit size."


@exercise("04", 7, "Nearest upsampling from `rows_in` to `rows_out` rows: write source_row(d, rows_in, rows_out) "
          "giving the input row that output row d reads, as F.interpolate(mode='nearest') does. Answer the function.")
def _04_7(source_row):
    assert callable(source_row), f"expected a function source_row(d, rows_in, rows_out), got {source_row!r}"
    # The last two are sizes where the exact d * rows_in // rows_out differs from float32 arithmetic.
    for rows_in, rows_out in [(68, 135), (34, 68), (5, 7), (3, 10), (7, 5), (48, 95), (3, 123), (2, 82)]:
        src = F.interpolate(torch.arange(float(rows_in)).view(1, 1, rows_in, 1), size=(rows_out, 1), mode="nearest")
        expected = src.flatten().long().tolist()
        got = [int(source_row(d, rows_in, rows_out)) for d in range(rows_out)]
        bad = [d for d in range(rows_out) if got[d] != expected[d]]
        assert not bad, (f"{rows_in} -> {rows_out} rows: output row {bad[0]} reads {got[bad[0]]}, PyTorch reads "
                         f"{expected[bad[0]]} (PyTorch computes the scale in float32)")
    return "Matches F.interpolate on every size tried."


# ---- lesson 05: ArcFace ----

@exercise("05", 1, "A 3x3 conv with padding 1: what fraction of the output pixels has a tap in the padding, at "
          "64 x 64 and at 8 x 8? Answer (fraction_64, fraction_8), each within 0.1%.")
def _05_1(answer):
    expected = []
    for side in (64, 8):
        taps = F.conv2d(torch.ones(1, 1, side, side), torch.ones(1, 1, 3, 3), padding=1)
        expected.append((taps < 9).float().mean().item())
    _equal(answer, tuple(expected), "(fraction at 64 x 64, fraction at 8 x 8)", ("fraction at 64 x 64", "fraction at 8 x 8"),
           rel=1e-3)
    return f"{expected[0]:.1%} at 64 x 64, {expected[1]:.1%} at 8 x 8: the correction matters most in layer4."


@exercise("05", 2, "layer4's 3x3 conv at ArcFace's batch of 64 (64 x 512 x 8 x 8 -> 512): how many programs (output "
          "tiles) does its GPU plan launch, and into how many splits (SPLIT_K) does it cut the reduction? "
          "Answer (programs, SPLIT_K).")
def _05_2(answer):
    plan = conv_kernels.conv2d_plan(64, 512, 8, 8, 512, 3, 1, 1, interpreter=False)
    expected = (math.prod(plan.grid[:2]), plan.blocks.get("SPLIT_K", 1))
    _equal(answer, expected, "(programs, SPLIT_K) at batch 64", ("programs", "SPLIT_K"))
    one = conv_kernels.conv2d_plan(1, 512, 8, 8, 512, 3, 1, 1, interpreter=False)
    return (f"{expected[0]} programs fill {H100_SMS} SMs, so nothing is split; at batch 1 the same conv has "
            f"{math.prod(one.grid[:2])} output tiles and SPLIT_K = {one.blocks.get('SPLIT_K', 1)}.")


@exercise("05", 3, "Max-pool before the PReLU gives the same result as after it exactly when the PReLU is "
          "monotonic. Write ok(slope) -> bool: may the max come first for this slope? Answer the function.")
def _05_3(ok):
    assert callable(ok), f"expected a function ok(slope), got {ok!r}"
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for slope in (-1.0, -0.25, 0.0, 0.25, 1.0, 2.0):
        w = torch.tensor([slope], dtype=torch.float64)
        same = torch.equal(F.prelu(F.max_pool2d(x, 2), w), F.max_pool2d(F.prelu(x, w), 2))
        assert bool(ok(slope)) == same, f"slope {slope}: you said {bool(ok(slope))}, but pooling first is " + (
            "exact" if same else "wrong")
    return "Any slope >= 0 keeps the order of the values, so the max commutes with the PReLU."


# ---- lesson 06: profiling ----

@exercise("06", 7, "Write attainable(intensity, peak_flops, bytes_per_s): the FLOP/s the roofline allows. "
          "Answer the function (each value within 1%).")
def _06_7(attainable):
    assert callable(attainable), f"expected a function attainable(intensity, peak_flops, bytes_per_s), got {attainable!r}"
    from .measure.ceilings import Ceilings
    for peak, gbps in ((H100_FP16_FLOPS, H100_BYTES_PER_S / 1e9), (2e11, 20.0)):
        ceil = Ceilings("x", "x", "x", gbps, peak, "float16", 1, 1, "spec", "spec")
        for intensity in (0.1, 1.0, 10.0, 100.0, 1000.0):
            _near(attainable(intensity, peak, gbps * 1e9), ceil.attainable(intensity),
                  f"roof at {intensity} FLOP/B, peak {peak:.3g} FLOP/s, {gbps * 1e9:.3g} B/s")
    return "min(peak, intensity x bandwidth), as fused.measure.ceilings.Ceilings.attainable."


#: 06/8's tolerance: lesson 00 rounds the H100's ridge (295 FLOP/byte) to "about 300", so that passes.
RIDGE_TOLERANCE = 0.02


@exercise("06", 8, "An H100's spec sheet says 989 TFLOP/s (dense fp16) and 3.35 TB/s. At what arithmetic intensity "
          f"(FLOP/byte) does a kernel stop being memory-bound? Answer a float (within {RIDGE_TOLERANCE:.0%}).")
def _06_8(answer):
    from .measure.ceilings import Ceilings
    ridge = Ceilings("cuda", "H100", "x", H100_BYTES_PER_S / 1e9, H100_FP16_FLOPS, "float16", 1, 1, "spec", "spec").ridge
    _near(answer, ridge, "the H100's ridge point", rel=RIDGE_TOLERANCE)
    return (f"{ridge:.1f} FLOP/byte (lesson 00's 'about 300'): below it, fewer bytes is the way to a faster "
            "kernel.")


# ---- lesson 07: the compiler's view ----

@exercise("07", 1, "A variant with 34 registers per thread, 4 warps and 8704 bytes of shared memory per program "
          "(ssh's 64/16/16 convolutions when lesson 07 was written): how many programs fit on one H100 (sm_90a) "
          "SM, and which resource limits them? Answer (programs, 'registers' | 'shared' | 'threads' | 'blocks').")
def _07_1(answer):
    from .measure.inspect import ARCHS, occupancy
    programs, limiter, limits = occupancy(ARCHS["sm_90a"], num_warps=4, registers=34, shared=8704)
    _equal(answer, (programs, limiter), "(programs per SM, limiter)", ("programs per SM", "limiter"))
    return f"Every limit: {limits}. Registers are allocated per warp in units of 256."


@exercise("07", 2, "fpn.merge1 in channels_last (conv2d_plan(1, 64, 80, 80, 64, 3, 1, 1, channels_last=True), fp16) "
          "with BLOCK_C = 32 instead of its plan's: how many 16-byte cp.async per thread does one step of the "
          "main loop issue, input and weight tiles together? Answer an int.")
def _07_2(answer):
    plan = conv_kernels.conv2d_plan(1, 64, 80, 80, 64, 3, 1, 1, channels_last=True, interpreter=False)
    block_m, block_n, block_c, threads = plan.blocks["BLOCK_M"], plan.blocks["BLOCK_N"], 32, plan.num_warps * 32
    copies = (block_m * block_c + block_c * block_n) * 2 // 16 // threads  # fp16: 2 bytes an element
    _equal(answer, copies, "16-byte copies per thread per step")
    return f"{block_m} x {block_c} input and {block_c} x {block_n} weight elements, 8 fp16 per copy, {threads} threads."


_DRY_RUNS: dict = {}


def launches_at(model: str, size: tuple[int, int], batch: int, dtype: str = "float16") -> list[dict]:
    """The launches ``facefuse inspect``'s dry run records for a model (nothing compiled; cached):
    each launch with its plan, the configuration a GPU autotunes from."""
    from .measure.inspect import Config, record_launches
    config = Config(model, size, batch, dtype)
    if config not in _DRY_RUNS:
        _DRY_RUNS[config] = record_launches([config])[config.name]
    return _DRY_RUNS[config]


@exercise("07", 3, "RetinaFace mobile0.25 at 640 x 640, batch 16, float16: how many of its launches have fewer "
          f"programs than an H100 has SMs ({H100_SMS})? Answer an int.")
def _07_3(answer):
    launches = launches_at("retinaface", (640, 640), 16)
    below = [launch for launch in launches if math.prod(launch["grid"]) < H100_SMS]
    _equal(answer, len(below), "launches with fewer programs than SMs at batch 16")
    return f"{len(below)} of {len(launches)}: " + ", ".join(sorted({launch['block'] for launch in below}))
