"""What every kernel family shares: the activation epilogue, the launch checks, tile choice and
launch plans, output allocation, index width.

Kernel conventions (every family follows them, so one kernel reads like the next):

* arguments: pointers ``<tensor>_ptr``; extents ``N, C, H, W`` (input), ``K`` (output channels),
  ``OH, OW``; strides ``<tensor>_stride_<axis>`` (``x_stride_n, x_stride_c, ...``,
  ``w_stride_k``, ``out_stride_n``);
* compile-time switches (``tl.constexpr``): ``ACTIVATION`` (one of the codes below, compared by
  name: ``if ACTIVATION == PRELU``), ``INPUT_PRECISION`` (``tl.dot``'s), ``USE_INT64`` (64-bit
  offsets), ``HAS_<OPTIONAL_INPUT>``, and tiles ``BLOCK_M`` (output pixels, the GEMM rows),
  ``BLOCK_N`` (output channels), ``BLOCK_C`` (input channels), ``BLOCK_HW`` (positions);
* launchers check their inputs with :func:`check_launch` and take their grid and tiles from a
  public ``<family>_plan`` function, which tells what a launch uses on a GPU (``interpreter=False``)
  or in Triton's interpreter, from any machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .. import runtime

#: Activation codes, one per name of the activation table (``reference.block_types.ACTIVATIONS``:
#: the ``torch.nn.functional`` names) plus ``"identity"``. They are ``tl.constexpr`` values, so
#: kernels compare a ``tl.constexpr`` ``ACTIVATION`` with them by name (``if ACTIVATION ==
#: PRELU:``) and the branch is resolved at compile time; launchers pass ``ACTIVATIONS[name]``, the
#: plain integer. :func:`activate` is the one place that applies them.
IDENTITY: tl.constexpr = tl.constexpr(0)
RELU: tl.constexpr = tl.constexpr(1)
LEAKY_RELU: tl.constexpr = tl.constexpr(2)
PRELU: tl.constexpr = tl.constexpr(3)
RELU6: tl.constexpr = tl.constexpr(4)
ACTIVATIONS = {"identity": IDENTITY.value, "relu": RELU.value, "leaky_relu": LEAKY_RELU.value, "prelu": PRELU.value,
               "relu6": RELU6.value}
#: The activations whose parameter is one scalar (or none): what kernels without a per-channel
#: slope vector (``conv_dw_fused``) take.
SCALAR_ACTIVATIONS = tuple(name for name in ACTIVATIONS if name != "prelu")

#: A documented test switch: True makes every launcher use 64-bit offsets (``USE_INT64``) even
#: for small tensors, so the tests exercise that path on the CPU. Off in normal use.
FORCE_INT64 = False

INT32_MAX = 2**31 - 1


@triton.jit
def activate(y, slope, ACTIVATION: tl.constexpr):
    """Apply the activation to an fp32 tile, with PyTorch's NaN and Inf semantics.

    ``slope`` is a scalar (LeakyReLU) or a tile broadcastable to ``y`` (PReLU, one slope per
    output channel or one shared); it is ignored for identity and ReLU.

    The formulas are PyTorch's own: ReLU is ``y < 0 ? 0 : y`` (NaN stays NaN, -inf gives 0),
    ReLU6 is ``y < 0 ? 0 : (y > 6 ? 6 : y)`` (PyTorch's hardtanh clamp: NaN stays NaN, ±inf give
    0 and 6) and LeakyReLU/PReLU are ``y > 0 ? y : y * slope`` (so a slope of 0 turns -inf into
    NaN, and a NaN slope turns 0 into NaN, as in PyTorch). Why this is NaN-exact on the GPU as in the
    interpreter: it uses only ordered comparisons, ``tl.where`` and an IEEE multiply, which
    behave the same in numpy and in PTX (a comparison with NaN is false in both). It avoids
    ``tl.maximum``, whose default is maxnum (PTX ``max.f32``): it returns the non-NaN operand, so
    ``tl.maximum(NaN, 0.0)`` is 0 on the GPU; the interpreter differs by release (numpy ``fmax``,
    also 0, from Triton 3.7; ``np.maximum``, NaN, in 3.6).
    """
    if ACTIVATION == RELU:
        y = tl.where(y < 0, 0.0, y)
    elif ACTIVATION == RELU6:
        y = tl.where(y < 0, 0.0, tl.where(y > 6.0, 6.0, y))
    elif ACTIVATION == LEAKY_RELU or ACTIVATION == PRELU:
        y = tl.where(y > 0, y, y * slope)
    return y


@triton.jit
def pointwise_gemm(x_row, x_stride_c, weight_ptr, w_stride_k, w_stride_c, cols, row_ok, col_ok, C,
                   INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The main loop of a 1x1 convolution: ``x[rows, :] @ w[:, cols]`` as an fp32 tile.

    ``x_row`` points at channel 0 of each row's pixel; the weight is read as ``[K, C]`` by strides.
    """
    chans = tl.arange(0, BLOCK_C)
    if USE_INT64:
        chans = chans.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + chans
        c_ok = c < C
        a = tl.load(x_row[:, None] + c[None, :] * x_stride_c, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(weight_ptr + cols[None, :] * w_stride_k + c[:, None] * w_stride_c,
                    mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=INPUT_PRECISION)
    return acc


_DUMMIES: dict = {}


def _dummy(device) -> torch.Tensor:
    """A one-element fp32 tensor per device, made once: kernels get it for absent slope vectors."""
    device = torch.device(device)
    if device not in _DUMMIES:
        _DUMMIES[device] = torch.zeros(1, device=device, dtype=torch.float32)
    return _DUMMIES[device]


def resolve_activation(activation: str, slope, channels: int, device) -> tuple[int, float, torch.Tensor]:
    """Check an activation request and return ``(code, leaky_slope, prelu_slopes)``.

    ``prelu_slopes`` is always an fp32 tensor of length ``channels`` (a shared PReLU slope is
    broadcast), so kernels load it the same way whether the PReLU is shared or per channel; it is
    a dummy of length 1 for the other activations (None while ``torch.compile`` or
    ``torch.export`` traces the launcher, which then launches nothing). Slopes that are already a
    contiguous fp32 vector of length ``channels`` on ``device`` pass through without a copy
    (fused modules prepare them once when they fold).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    code = ACTIVATIONS[activation]
    if activation == "prelu":
        if not isinstance(slope, torch.Tensor):
            slope = torch.tensor([float(slope)])
        slope = slope.detach().reshape(-1).to(device=device, dtype=torch.float32)
        if slope.numel() == 1:
            slope = slope.expand(channels)
        if slope.numel() != channels:
            raise ValueError(f"PReLU has {slope.numel()} slopes, expected 1 or {channels}")
        return code, 0.0, slope.contiguous()
    # While torch.compile / torch.export trace a launcher (runtime.tracing()) the op needs no
    # dummy; an op's body makes its own: a first cached one made while tracing would be fake.
    if runtime.tracing():
        dummy = None
    elif torch.compiler.is_compiling() or runtime.in_op_body():
        dummy = torch.zeros(1, device=device)
    else:
        dummy = _dummy(device)
    if activation == "leaky_relu":
        if isinstance(slope, torch.Tensor):
            if slope.numel() != 1:
                raise ValueError("leaky_relu takes one scalar slope; use activation='prelu' for a vector")
            slope = float(slope)
        return code, float(slope), dummy
    return code, 0.0, dummy


def packed_slope(activation: str, leaky_slope: float, prelu_slopes: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """A resolved activation slope (:func:`resolve_activation`) as the ``facefuse`` custom ops take
    it: ``(leaky slope, PReLU slopes or None)``."""
    return float(leaky_slope), (prelu_slopes if activation == "prelu" else None)


def new_output(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """Allocate an output of ``shape`` in ``like``'s memory format (channels_last stays channels_last)."""
    channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def check_launch(name: str, x: torch.Tensor, *tensors: torch.Tensor | None, precision: str | None = None) -> None:
    """The checks every launcher shares: dtype and device (:func:`fused.runtime.check_inputs`,
    ``x`` first) and, for launchers with a ``tl.dot``, the precision: ``"ieee"`` (exact fp32
    products) or ``"tf32"`` (TF32 tensor cores), which applies to float32 inputs only. A wrong
    precision is an error, never silently replaced (fused modules pass
    :meth:`fused.FusedModule.dot_precision`, which is ``"ieee"`` for other dtypes)."""
    runtime.check_inputs(name, x, *tensors)
    if precision is None:
        return
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"{name}: precision must be 'ieee' or 'tf32', got {precision!r}")
    if precision == "tf32" and x.dtype != torch.float32:
        raise ValueError(f"{name}: precision='tf32' applies to float32 inputs only, x is {x.dtype}; "
                         f"pass precision='ieee'")


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """What one kernel launch uses: its ``grid``, its ``BLOCK_*`` sizes, warps per program and
    software-pipeline stages (how many loads of the main loop are in flight ahead of the MMA)."""

    grid: tuple[int, ...]
    blocks: dict[str, int]
    num_warps: int = 4
    num_stages: int = 3

    @property
    def programs(self) -> int:
        """How many programs the launch runs."""
        return math.prod(self.grid)


def interpreting(interpreter: bool | None) -> bool:
    """Whether a plan is for Triton's interpreter: ``interpreter``, or this machine's when None."""
    return runtime.INTERPRETED if interpreter is None else bool(interpreter)


#: Extents above this get wider tiles in the interpreter (see :func:`interpreter_tile`).
INTERPRETER_BIG_PROBLEM = 512


def interpreter_tile(gpu_tile: int, extent: int, *, interpreter: bool, big: int = INTERPRETER_BIG_PROBLEM,
                     max_tile: int = 1024) -> int:
    """The tile size to launch with along an axis of ``extent``: ``gpu_tile``, or wider in the interpreter.

    Triton's interpreter runs each program (and each loop iteration) as Python, so its cost is per
    program, not per element. For big extents (whole models in tests and lessons) it gets tiles of
    up to ``max_tile``, which makes a forward pass several times faster; extents up to ``big``
    keep the GPU tile, so the property tests still exercise indexing across several tiles.
    """
    if interpreter and extent > big:
        return max(gpu_tile, min(max_tile, triton.next_power_of_2(extent)))
    return gpu_tile


#: Streaming multiprocessors of the GPU the plans are made for (H100 SXM: 132). A launch with
#: fewer programs leaves SMs idle, so the GPU plans shrink tiles until a launch has this many.
SM_COUNT = 132


def gemm_tiles(rows: int, K: int, C: int, *, interpreter: bool, fma: bool = False, tf32: bool = False,
               scalar_loads: bool = False) -> dict[str, int]:
    """``BLOCK_M, BLOCK_N, BLOCK_C`` for a GEMM of ``rows`` output pixels x ``K`` output channels
    over ``C`` input channels (the convolutions and the FPN lateral).

    Powers of two, each >= 16 because ``tl.dot`` needs that (masks cover the excess). The
    interpreter's tiles: 128 pixels, 64 when the tile is 128 channels wide, 64 input channels at a
    time (wider for big extents, see :func:`interpreter_tile`). On a GPU the tiles depend on the
    shape class, so that no variant spills registers (checked on the compiler's output for sm_90a):

    * ``fma``: float32 with exact (``"ieee"``) products runs the dot on FMA units, which hold
      whole rows and columns of both operands in registers: 64 x 64 tiles, 16 channels at a time,
      and eight warps (:func:`gemm_warps`);
    * ``tf32``: float32 operands on TF32 tensor cores take twice the registers and shared memory
      of half ones: 32 channels at a time;
    * ``scalar_loads``: the input tile is not contiguous along channels (NCHW input, or fewer than
      8 channels), so each element is its own load with its own 64-bit address, and so is each
      element of an NCHW residual and output: 64 x 64 tiles, 32 channels at a time;
    * fewer than :data:`SM_COUNT` programs: halve ``BLOCK_M`` down to 64 (the smallest ``wgmma``
      tile for four warps), then ``BLOCK_N`` down to 32, so that small maps (batch 1, the 20x20
      and 8x8 levels) spread over more SMs.
    """
    block_n = min(max(triton.next_power_of_2(K), 16), 128)
    block_c = min(max(triton.next_power_of_2(C), 16), 64)
    block_m = min(64 if block_n == 128 else 128, max(triton.next_power_of_2(rows), 16))
    if interpreter:
        return {
            "BLOCK_M": interpreter_tile(block_m, rows, interpreter=True),
            "BLOCK_N": interpreter_tile(block_n, K, interpreter=True, big=128, max_tile=512),
            "BLOCK_C": interpreter_tile(block_c, C, interpreter=True, big=64, max_tile=512),
        }
    if fma:
        block_m, block_n, block_c = min(block_m, 64), min(block_n, 64), 16
    elif scalar_loads:
        block_m, block_n, block_c = min(block_m, 64), min(block_n, 64), min(block_c, 32)
    elif tf32:
        block_c = min(block_c, 32)
    while triton.cdiv(rows, block_m) * triton.cdiv(K, block_n) < SM_COUNT:
        if block_m > 64:
            block_m //= 2
        elif block_n > 32:
            block_n //= 2
        else:
            break
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_C": block_c}


def gemm_warps(*, fma: bool) -> int:
    """Warps per program for :func:`gemm_tiles`' tiles: 8 for FMA dots (exact float32), which
    spread a thread's share of both operands over twice the threads (4 warps spill some shapes),
    else 4 (one warpgroup, the ``wgmma`` unit)."""
    return 8 if fma else 4


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """True when some element offset of these tensors may not fit in int32 (or :data:`FORCE_INT64`)."""
    if FORCE_INT64:
        return True
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        if span > INT32_MAX // 2:
            return True
    return False


# -- autotuning (compiled for a GPU only) --------------------------------------------------------

#: Whether GEMM launches on a GPU autotune (``FACEFUSE_AUTOTUNE=0`` in the environment turns it
#: off: every launch then uses its plan). Never in the interpreter, whose launches are the plans.
AUTOTUNE = os.environ.get("FACEFUSE_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")

#: The tile configurations an autotuned kernel is made with; each launch tries the few that its
#: family's ``<family>_configs`` function lists for its shape (its plan first), including any
#: plan outside this space (such as a 16-pixel tile for a map of 16 pixels or fewer).
TILE_SPACE = tuple(itertools.product((32, 64, 128), (16, 32, 64, 128, 256), (16, 32, 64), (4, 8), (2, 3, 4)))


#: A ``do_bench`` for ``triton.autotune`` to time with instead of Triton's own (which needs a
#: GPU): tests set it to exercise the autotuned launch path in the interpreter. None in normal use.
AUTOTUNE_TIMER = None


def autotuning(kernel=None) -> bool:
    """True when launches of ``kernel`` autotune here: compiled for a GPU, :data:`AUTOTUNE` on, and
    ``kernel`` (the module's kernel object at launch time) the real ``@triton.jit`` function, not a
    stand-in such as :func:`fused.teaching.watch_launches`'s, which then sees the plan's launch."""
    return AUTOTUNE and not runtime.INTERPRETED and (kernel is None or isinstance(kernel, JITFunction))


def config_key(plan: LaunchPlan) -> tuple[int, int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_C, num_warps, num_stages)`` of a plan: one point of :data:`TILE_SPACE`."""
    b = plan.blocks
    return b["BLOCK_M"], b["BLOCK_N"], b["BLOCK_C"], plan.num_warps, plan.num_stages


def tuned_variants(plan: LaunchPlan) -> list[LaunchPlan]:
    """``plan`` first, then its tiles with 2 and 4 pipeline stages and with the other warp count
    (8, or 4 when the plan has 8): what a GPU
    launch autotunes over (a small set, so the first launch of each shape times four configs)."""
    return [plan, dataclasses.replace(plan, num_stages=2), dataclasses.replace(plan, num_stages=4),
            dataclasses.replace(plan, num_warps=4 if plan.num_warps == 8 else 8)]


def launch_plan(kernel, plan: LaunchPlan, extents: tuple[int, ...], args: tuple, switches: dict, *, tuned) -> None:
    """Launch ``kernel(*args, **switches)`` as ``plan`` says, or, where launches autotune
    (:func:`autotuning`), ``tuned()`` (the kernel under ``triton.autotune``, see :func:`autotuned`)
    on the grid its chosen config gives: ``extents`` are the sizes tiled by ``BLOCK_M`` (and
    ``BLOCK_N``). The GEMM-shaped launchers' one launch path."""
    if autotuning(kernel=kernel):
        tiles = ("BLOCK_M", "BLOCK_N")[:len(extents)]
        grid = lambda meta: tuple(triton.cdiv(e, meta[t]) for e, t in zip(extents, tiles))  # noqa: E731
        runtime.launch(tuned(), grid, *args, **switches)
    else:
        runtime.launch(kernel, plan.grid, *args, **switches,
                       num_warps=plan.num_warps, num_stages=plan.num_stages, **plan.blocks)


_AUTOTUNED: dict = {}


def autotuned(kernel, key: list[str], candidates, **options):
    """``kernel`` under ``triton.autotune``: for each new value of the ``key`` arguments the first
    launch times the configurations that ``candidates(named_args, constexprs)`` returns (a list of
    :class:`LaunchPlan`, the deterministic plan first) and keeps the fastest.

    Made on first use and kept, one per kernel, with the configs it has chosen (see
    :func:`chosen_configs`; :func:`reset_autotuning` forgets them). The config list is all of
    :data:`TILE_SPACE`; ``early_config_prune`` keeps the candidates. ``options`` go to
    ``triton.autotune`` (``restore_value``: outputs a timing run must not leave changed). Only
    called when :func:`autotuning` (``triton.autotune`` needs a GPU to time on).
    """
    if kernel in _AUTOTUNED:
        return _AUTOTUNED[kernel]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c}, num_warps=w, num_stages=st)
               for m, n, c, w, st in TILE_SPACE]

    def prune(configs, named_args, **kwargs):
        wanted = [config_key(plan) for plan in candidates(named_args, kwargs)]
        by_key = {(cf.kwargs["BLOCK_M"], cf.kwargs["BLOCK_N"], cf.kwargs["BLOCK_C"], cf.num_warps, cf.num_stages): cf
                  for cf in configs}
        # A candidate outside TILE_SPACE (a plan's 16-pixel tile for a tiny map) is timed all the same.
        return [by_key.get(k) or triton.Config({"BLOCK_M": k[0], "BLOCK_N": k[1], "BLOCK_C": k[2]}, num_warps=k[3],
                                               num_stages=k[4])
                for k in dict.fromkeys(wanted)]

    if AUTOTUNE_TIMER is not None:
        options["do_bench"] = AUTOTUNE_TIMER
    tuned = triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, **options)(kernel)
    _AUTOTUNED[kernel] = tuned
    return tuned


def chosen_configs(kernel) -> dict:
    """The ``triton.Config`` that autotuning chose for ``kernel`` so far, by key (the values of its
    ``key`` arguments); empty when it has not autotuned here."""
    tuned = _AUTOTUNED.get(kernel)
    return dict(tuned.cache) if tuned is not None else {}


def reset_autotuning() -> None:
    """Forget every autotuned kernel and the configs it chose: the next launch of each shape
    times its candidates again (after changing :data:`AUTOTUNE_TIMER`, or to re-tune under a
    different load)."""
    _AUTOTUNED.clear()
