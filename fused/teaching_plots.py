"""Pictures for the lessons, drawn from the real launch plans, so that they change when the code does.

    from fused import teaching_plots
    figure, drawn = teaching_plots.implicit_gemm(1, 64, 20, 20, 32, 3, padding=1)
    drawn["BLOCK_M"], drawn["programs"]            # the numbers the picture shows (64, 7 on a GPU)
    figure                                         # the last expression of a notebook cell shows it

Each function takes a convolution's shape (``N, C, H, W -> K`` channels, an ``R x R`` kernel), asks
:func:`fused.kernels.conv2d.conv2d_plan` (the GPU's plan unless ``interpreter=True``) what a launch
does, and returns ``(figure, drawn)``: a matplotlib ``Figure`` (built without ``pyplot``, as
:mod:`fused.measure.charts` does) and a dict of every number it drew, which the lessons print and
assert. Nothing in the kernels or the fused modules imports this module.
"""

from __future__ import annotations

import math
from unittest import mock

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .kernels import conv2d as conv_kernels

#: One colour per program, split or launch, cycled.
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def _output_size(H: int, W: int, R: int, stride: int, padding: int) -> tuple[int, int]:
    return (H + 2 * padding - R) // stride + 1, (W + 2 * padding - R) // stride + 1


def _plan(N, C, H, W, K, R, stride, padding, interpreter):
    return conv_kernels.conv2d_plan(N, C, H, W, K, R, stride, padding, interpreter=interpreter)


def implicit_gemm(N: int, C: int, H: int, W: int, K: int, R: int, stride: int = 1, padding: int = 0, *,
                  interpreter: bool = False) -> tuple[Figure, dict]:
    """The convolution as the GEMM the conv kernel runs: the im2col matrix (one row per output pixel
    ``(n, oh, ow)``, one column per reduction element ``(tap, channel)``) times the weights (one
    column per output channel), cut into the plan's ``BLOCK_M x BLOCK_N`` output tiles and
    ``BLOCK_C``-wide reduction steps (``R*R*ceil(C/BLOCK_C)`` of them, tap by tap)."""
    plan = _plan(N, C, H, W, K, R, stride, padding, interpreter)
    OH, OW = _output_size(H, W, R, stride, padding)
    bm, bn, bc = plan.blocks["BLOCK_M"], plan.blocks["BLOCK_N"], plan.blocks["BLOCK_C"]
    rows, reduction, c_blocks = N * OH * OW, R * R * C, math.ceil(C / bc)
    drawn = {"rows": rows, "columns": K, "reduction": reduction, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_C": bc,
             "row_tiles": math.ceil(rows / bm), "column_tiles": math.ceil(K / bn), "steps": R * R * c_blocks,
             "programs": math.ceil(rows / bm) * math.ceil(K / bn), "SPLIT_K": plan.blocks.get("SPLIT_K", 1)}

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    a, w, o = fig.subplots(1, 3, width_ratios=[3, 1, 1.4])
    # The im2col matrix: rows x (taps x channels), with its reduction steps.
    a.add_patch(Rectangle((0, 0), reduction, rows, fc="#eeeeee", ec="black"))
    for step in range(drawn["steps"]):
        tap, cb = divmod(step, c_blocks)
        x0 = tap * C + cb * bc
        a.add_patch(Rectangle((x0, 0), min(bc, C - cb * bc), rows, fc=COLOURS[tap % len(COLOURS)], alpha=0.35,
                              ec="grey", lw=0.5))
    a.add_patch(Rectangle((0, 0), reduction, min(bm, rows), fill=False, ec="black", lw=2))  # program (0, 0)'s rows
    a.set(xlim=(0, reduction), ylim=(rows, 0), title=f"im2col (never stored): {rows} x {reduction}\n"
          f"bold: the {min(bm, rows)} rows of program (0, 0)",
          xlabel=f"reduction: {R}x{R} taps x {C} channels,\n{drawn['steps']} steps of BLOCK_C = {bc} (a colour per tap)",
          ylabel=f"output pixels (n, oh, ow): {rows} rows")
    # The weights: reduction x K.
    w.add_patch(Rectangle((0, 0), K, reduction, fc="#eeeeee", ec="black"))
    w.add_patch(Rectangle((0, 0), min(bn, K), reduction, fill=False, ec="black", lw=2))
    w.set(xlim=(0, K), ylim=(reduction, 0), title=f"weights\n{reduction} x {K}", xlabel="output channels k")
    # The output: rows x K in BLOCK_M x BLOCK_N tiles, one program each.
    for i in range(drawn["row_tiles"]):
        for j in range(drawn["column_tiles"]):
            h, wd = min(bm, rows - i * bm), min(bn, K - j * bn)
            o.add_patch(Rectangle((j * bn, i * bm), wd, h, fc=COLOURS[(i + j) % len(COLOURS)], alpha=0.5, ec="black"))
            if drawn["programs"] <= 40:
                o.text(j * bn + wd / 2, i * bm + h / 2, f"({i},{j})", ha="center", va="center", fontsize=8)
    o.set(xlim=(0, K), ylim=(rows, 0), xlabel="output channels k",
          title=f"output: {drawn['row_tiles']} x {drawn['column_tiles']} = {drawn['programs']} programs\n"
                f"BLOCK_M x BLOCK_N = {bm} x {bn}")
    split = f", each tile's reduction cut into SPLIT_K = {drawn['SPLIT_K']} shares" if drawn["SPLIT_K"] > 1 else ""
    fig.suptitle(f"conv {N}x{C}x{H}x{W} -> {K}, {R}x{R}, stride {stride}: the implicit GEMM "
                 f"({'interpreter' if interpreter else 'GPU'} plan{split})")
    return fig, drawn


def program_tile(N: int, C: int, H: int, W: int, K: int, R: int, stride: int = 1, padding: int = 0, *,
                 program: int = 0, tap: tuple[int, int] = (0, 0), interpreter: bool = False) -> tuple[Figure, dict]:
    """The ``BLOCK_M`` output pixels of row tile ``program`` (negative: from the last) on the output map (sample 0 drawn), and
    its lanes at kernel tap ``(r, s)``: which read a real input pixel, which fall in the zero padding
    (``pixel_ok`` false: the masked load returns 0), and which are past the last row (``row_ok``
    false). Lanes are decoded with the kernel's own ``%`` and ``//``."""
    plan = _plan(N, C, H, W, K, R, stride, padding, interpreter)
    OH, OW = _output_size(H, W, R, stride, padding)
    bm = plan.blocks["BLOCK_M"]
    if not -plan.grid[0] <= program < plan.grid[0]:
        raise IndexError(f"program_tile: program {program} is not a row tile of the plan ({plan.grid[0]} row tiles)")
    program %= plan.grid[0]  # -1: the last row tile
    rows = torch.arange(program * bm, (program + 1) * bm)
    row_ok = rows < N * OH * OW
    ow, oh, n = rows % OW, (rows // OW) % OH, rows // (OW * OH)
    ih, iw = oh * stride - padding + tap[0], ow * stride - padding + tap[1]
    pixel_ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    drawn = {"program": program, "tap": tuple(tap), "BLOCK_M": bm, "row_tiles": plan.grid[0], "lanes": bm,
             "reads": int((row_ok & pixel_ok).sum()), "in_padding": int((row_ok & ~pixel_ok).sum()),
             "past_the_end": int((~row_ok).sum()), "samples": sorted(set(n[row_ok].tolist()))}

    fig = Figure(figsize=(6.5, 5.5 * OH / max(OW, 1) + 1.0), layout="constrained")
    ax = fig.subplots()
    for p in range(plan.grid[0]):  # every row tile of sample 0, lightly
        for lane in range(p * bm, min((p + 1) * bm, OH * OW)):
            ax.add_patch(Rectangle((lane % OW, lane // OW), 1, 1, fc=COLOURS[p % len(COLOURS)], alpha=0.15, ec="none"))
    for lane in range(bm):
        if row_ok[lane] and n[lane] == 0:
            masked = not pixel_ok[lane]
            ax.add_patch(Rectangle((ow[lane], oh[lane]), 1, 1, fc="#e15759" if masked else "#4e79a7", alpha=0.8,
                                   ec="white", hatch="xx" if masked else None))
    ax.set(xlim=(0, OW), ylim=(OH, 0), aspect="equal", xlabel="ow", ylabel="oh",
           title=f"row tile {program} of {plan.grid[0]} (BLOCK_M = {bm} lanes) at tap {tuple(tap)}:\n"
                 f"{drawn['reads']} lanes read x (blue), {drawn['in_padding']} in the padding (red, masked),\n"
                 f"{drawn['past_the_end']} past the last row (masked, not on the map)")
    return fig, drawn


def split_k(N: int, C: int, H: int, W: int, K: int, R: int, stride: int = 1, padding: int = 0, *,
            interpreter: bool = False) -> tuple[Figure, dict]:
    """Split-K as the plan does it: the ``R*R*ceil(C/BLOCK_C)`` reduction steps cut into ``SPLIT_K``
    contiguous shares (one program per output tile and share), each storing an fp32 partial tile,
    and the reduce launch summing them in split order before the epilogue."""
    plan = _plan(N, C, H, W, K, R, stride, padding, interpreter)
    OH, OW = _output_size(H, W, R, stride, padding)
    split, bc = plan.blocks.get("SPLIT_K", 1), plan.blocks["BLOCK_C"]
    steps = R * R * math.ceil(C / bc)
    per_split = math.ceil(steps / split)  # as the kernel: tl.cdiv(steps, SPLIT_K) each, the last one shorter
    shares = [(s * per_split, min((s + 1) * per_split, steps)) for s in range(split)]
    pixels = N * OH * OW
    drawn = {"SPLIT_K": split, "BLOCK_C": bc, "steps": steps, "shares": shares, "output_tiles": plan.grid[0] * plan.grid[1],
             "programs": math.prod(plan.grid), "partial_bytes": split * pixels * K * 4 if split > 1 else 0,
             "reduce_programs": math.prod(conv_kernels.conv2d_reduce_plan(pixels, K, interpreter=interpreter).grid)
             if split > 1 else 0}

    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax = fig.subplots()
    for s, (first, last) in enumerate(shares):
        ax.add_patch(Rectangle((first, 2), last - first, 1, fc=COLOURS[s % len(COLOURS)], ec="black"))
        ax.text((first + last) / 2, 2.5, f"split {s}\nsteps {first}..{last - 1}", ha="center", va="center", fontsize=7)
        ax.annotate("", xy=(s * steps / split + steps / split / 2, 1.1), xytext=((first + last) / 2, 2),
                    arrowprops={"arrowstyle": "->", "color": "grey"})
        ax.add_patch(Rectangle((s * steps / split + 0.1, 0.6), steps / split - 0.2, 0.5, fc=COLOURS[s % len(COLOURS)],
                               alpha=0.5, ec="black"))
    ax.text(steps / 2, 0.85, f"{split} fp32 partial tiles per output tile ({drawn['partial_bytes'] / 2**20:.2f} MiB "
            f"in all)", ha="center", va="center", fontsize=8)
    ax.add_patch(Rectangle((0, -0.4), steps, 0.5, fc="#dddddd", ec="black"))
    ax.text(steps / 2, -0.15, f"reduce launch ({drawn['reduce_programs']} programs): partial 0 + 1 + ... + "
            f"{split - 1} in that order, then bias, residual, activation, one store", ha="center", va="center", fontsize=8)
    ax.set(xlim=(0, steps), ylim=(-0.6, 3.2), yticks=[], xlabel=f"reduction steps ({R}x{R} taps x "
           f"{math.ceil(C / bc)} blocks of BLOCK_C = {bc} channels)",
           title=f"split-K for {N}x{C}x{H}x{W} -> {K}: {drawn['output_tiles']} output tiles x SPLIT_K = {split} "
                 f"= {drawn['programs']} programs ({'interpreter' if interpreter else 'GPU'} plan)")
    return fig, drawn


def ssh_buffer(ssh: torch.nn.Module, x: torch.Tensor) -> tuple[Figure, dict]:
    """Run the fused SSH ``ssh`` on ``x`` (NCHW) and draw where each of its conv launches writes in
    the one storage buffer, plane by plane (one plane = one channel of one sample), in launch order.
    ``drawn``: ``{"launches": [(name, [plane, ...]), ...], "output_offset_planes": ...,
    "planes": ..., "contiguous": ...}``, recorded from the real launches' ``out`` views."""
    from . import ssh as ssh_module

    folded = ssh.folded(x.dtype, x.device)  # the cached folds the launches take their weights from
    label = {"shared": "conv5X5_1 | conv3X3"}
    writes: list[tuple[str, torch.Tensor]] = []
    real = ssh_module.conv2d_bias_act

    def record(inp, weight, *args, **kwargs):
        result = real(inp, weight, *args, **kwargs)
        name = next((k for k, v in folded.items() if v[0].shape == weight.shape and torch.equal(v[0], weight)), "?")
        writes.append((label.get(name, name), result))
        return result

    with mock.patch.object(ssh_module, "conv2d_bias_act", record), torch.inference_mode():
        out = ssh(x)
    hw = x.shape[2] * x.shape[3]
    storage = out.untyped_storage()

    def planes(t: torch.Tensor) -> list[int]:
        if t.untyped_storage().data_ptr() != storage.data_ptr():
            return []
        base = t.storage_offset()
        return sorted({(base + n * t.stride(0) + c * t.stride(1)) // hw for n in range(t.shape[0]) for c in range(t.shape[1])})

    launches = [(name if planes(t) else f"{name} (its own tensor)", planes(t)) for name, t in writes]
    total = storage.nbytes() // out.element_size() // hw
    drawn = {"launches": launches, "output_offset_planes": out.storage_offset() // hw, "planes": total,
             "contiguous": out.is_contiguous(), "batch": x.shape[0], "channels": out.shape[1]}

    fig = Figure(figsize=(11, 1.2 + 0.45 * len(launches)), layout="constrained")
    ax = fig.subplots()
    for i, (name, ps) in enumerate(launches):
        y = len(launches) - i
        for p in ps:
            ax.add_patch(Rectangle((p, y), 1, 0.8, fc=COLOURS[i % len(COLOURS)], ec="white", lw=0.3))
        ax.text(-1, y + 0.4, f"{i + 1}. {name}", ha="right", va="center", fontsize=8)
    ax.add_patch(Rectangle((drawn["output_offset_planes"], 0.1), out.shape[0] * out.shape[1], 0.7, fc="#dddddd", ec="black"))
    ax.text(-1, 0.45, "the SSH's output", ha="right", va="center", fontsize=8)
    for n in range(out.shape[0] + 1):
        ax.axvline(drawn["output_offset_planes"] + n * out.shape[1], color="black", lw=0.8, ls=":")
    ax.set(xlim=(-22, total), ylim=(0, len(launches) + 1), yticks=[], xlabel="channel planes of the one storage buffer",
           title=f"fused SSH, batch {x.shape[0]}: {total} planes, the output starts {drawn['output_offset_planes']} "
                 f"planes in (contiguous: {drawn['contiguous']}); dotted lines: samples")
    return fig, drawn
