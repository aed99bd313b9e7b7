"""Shared hypothesis strategies and settings for the kernel and fused-module tests.

The hypothesis profiles themselves (``ci``, ``thorough``) are registered in ``tests/conftest.py``;
strategies only one test module draws from live in that module.
"""

import math

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fused import runtime

#: The channel counts that matter: 1 (ArcFace stem), 3 (RGB), 8 (mobile0.25's first layer),
#: non-powers of two, and the widths of the real layers.
CHANNELS = st.sampled_from([1, 2, 3, 5, 8, 13, 16, 24, 32, 37, 64])
#: Spatial sizes from 1x1 up, odd ones included.
SPATIAL = st.integers(min_value=1, max_value=13)
#: Batch sizes including the empty batch.
BATCH = st.sampled_from([0, 1, 2, 3])
STRIDE = st.sampled_from([1, 2])
#: LeakyReLU slopes: 0 is a ReLU; 0.1 is RetinaFace's; others keep the epilogue honest.
SLOPE = st.sampled_from([0.0, 0.1, 0.25, 1.0, -0.5])
#: The epilogue activations of the conv and depthwise kernels.
ACTIVATIONS = st.sampled_from(["identity", "relu", "leaky_relu", "prelu"])
MEMORY_FORMAT = st.sampled_from([torch.contiguous_format, torch.channels_last])
#: Non-finite values to plant in an input with :func:`plant`: often none, else a NaN, an Inf of
#: either sign, or all three. The float64 reference says where they must come out.
NONFINITE = st.sampled_from([(), (), (math.nan,), (math.inf,), (-math.inf,), (math.nan, math.inf, -math.inf)])

#: The loaded profile (see ``tests/conftest.py``), also allowing the ``device`` fixture inside
#: ``@given`` tests: it only names a device, so reusing it across examples is safe.
FIXTURE_OK = settings(suppress_health_check=[*settings.default.suppress_health_check,
                                             HealthCheck.function_scoped_fixture])


def kernel_dtypes():
    """float32 and float16 everywhere; bfloat16 only on a GPU (the interpreter has no real bf16)."""
    dtypes = [torch.float32, torch.float16]
    if not runtime.INTERPRETED:
        dtypes.append(torch.bfloat16)
    return st.sampled_from(dtypes)


def layout(x: torch.Tensor, memory_format, non_contiguous: bool = False) -> torch.Tensor:
    """Return ``x`` in the requested memory format, optionally as a strided (non-contiguous) view."""
    if non_contiguous:
        n, c, h, w = x.shape
        wide = torch.zeros(n, c, h, 2 * w, dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert not x.is_contiguous() or x.numel() <= 1
        return x
    return x.contiguous(memory_format=memory_format)


def plant(x: torch.Tensor, values, seed: int = 0) -> torch.Tensor:
    """Write each of ``values`` into ``x`` (in place, any layout) at a position drawn from ``seed``; return ``x``."""
    if x.numel() == 0:
        return x
    gen = torch.Generator().manual_seed(seed)
    for value in values:
        index = tuple(int(torch.randint(size, (1,), generator=gen)) for size in x.shape)
        x[index] = value
    return x
