"""Lesson 04, the detector: worked answers (checked by fused.exercises.check("04", N, answer))."""

import reference as R


def exercise_5():
    rows = [1080]
    for _ in range(5):
        rows.append(-(-rows[-1] // 2))  # a stride-2 3x3 conv with padding 1: ceil(rows / 2)
    return tuple(rows[3:]), R.num_priors(1080, 1920)


def exercise_7():
    def source_row(d, rows_in, rows_out):
        # PyTorch's nearest: floor(d * scale) with scale = rows_in / rows_out computed in float32.
        import numpy as np

        scale = np.float32(rows_in) / np.float32(rows_out)
        return min(int(np.floor(np.float32(d) * scale)), rows_in - 1)

    return source_row


# ---- kernel exercise "upsample_add": fused.exercises.check_kernel("upsample_add", upsample_add_kernel) ----

import triton  # noqa: E402  (the kernel exercises' imports stay with their kernels)
import triton.language as tl  # noqa: E402


@triton.jit
def upsample_add_kernel(lateral_ptr, coarse_ptr, out_ptr, total, C, H, W, CH, CW, scale_h, scale_w, slope,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # output elements (n, c, h, w), flattened
    ok = offs < total
    w, h, plane = offs % W, (offs // W) % H, offs // (W * H)  # plane = n * C + c
    y = tl.load(lateral_ptr + offs, mask=ok, other=0.0)
    y = tl.where(y > 0, y, y * slope)  # the lateral's LeakyReLU comes before the add
    # PyTorch's nearest source pixel: floor(h * scale) in float32, clamped to the coarse map
    src_h = tl.minimum(tl.floor(h.to(tl.float32) * scale_h).to(tl.int32), CH - 1)
    src_w = tl.minimum(tl.floor(w.to(tl.float32) * scale_w).to(tl.int32), CW - 1)
    y += tl.load(coarse_ptr + (plane * CH + src_h) * CW + src_w, mask=ok, other=0.0)
    tl.store(out_ptr + offs, y, mask=ok)
