"""Teaching kernels: a ladder of one-screen Triton kernels, one idea each, climbed before the
production kernels in lessons 01 to 05.

Each module holds one or two ``@triton.jit`` kernels of about 40 lines and a tiny launcher. They
take NCHW contiguous tensors, use 32-bit offsets and one fixed tile size, and compute in fp32
(``tl.dot`` with ``input_precision="ieee"``), so every line is about the idea. The lessons check
each rung against float64 with :func:`fused.assert_close`, then show what the production kernel
in ``fused/kernels/`` adds (any strides and channels_last, one flat pipelined loop, int64
offsets, split-K, autotuned tiles). Nothing outside the lessons and tests imports this package.

=====================  ======  =====================================================
module                 lesson  idea
=====================  ======  =====================================================
``gemm1x1``            01      a 1x1 conv as a GEMM; bias and LeakyReLU in the epilogue
``conv3x3``            01      a 3x3 conv: nine shifted GEMMs, zero padding from masks
``depthwise``          02      depthwise 3x3: nine FMAs per output, no ``tl.dot``
``squeeze``            03      a mean over H*W split across programs, then a sum
``upsample_add``       04      FPN's nearest upsample-and-add in a 1x1 conv's epilogue
``stem_pool``          05      ArcFace's stem: conv + PReLU + 2x2 max-pool in one kernel
=====================  ======  =====================================================
"""

from .conv3x3 import conv3x3_bias_leaky, conv3x3_bias_leaky_kernel
from .depthwise import depthwise3x3_bias_leaky, depthwise3x3_bias_leaky_kernel
from .gemm1x1 import conv1x1_bias_leaky, conv1x1_bias_leaky_kernel
from .squeeze import squeeze_finish_kernel, squeeze_mean, squeeze_partial_kernel
from .stem_pool import stem_conv_prelu_pool, stem_conv_prelu_pool_kernel
from .upsample_add import lateral_upsample_add, lateral_upsample_add_kernel

__all__ = [
    "conv1x1_bias_leaky", "conv1x1_bias_leaky_kernel", "conv3x3_bias_leaky", "conv3x3_bias_leaky_kernel",
    "depthwise3x3_bias_leaky", "depthwise3x3_bias_leaky_kernel", "squeeze_mean", "squeeze_partial_kernel",
    "squeeze_finish_kernel", "lateral_upsample_add", "lateral_upsample_add_kernel", "stem_conv_prelu_pool",
    "stem_conv_prelu_pool_kernel",
]
