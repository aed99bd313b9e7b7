"""The per-architecture limits occupancy is worked out from, in one table, with their sources.

Occupancy is how many programs (CUDA blocks) of a kernel one SM holds at once. Each resident
program takes its threads (``num_warps * 32``), its registers (allocated per warp, in units of
:attr:`Arch.register_unit`) and its shared memory (what Triton asked for plus the 1 KB the CUDA
driver reserves per block); the scarcest of these sets the number, and names the *limiter*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    gpu: str
    sms: int
    registers_per_sm: int
    shared_per_sm: int  # bytes usable by blocks (the per-SM carve-out maximum)
    max_threads_per_sm: int
    max_blocks_per_sm: int
    register_unit: int = 256  # registers are allocated per warp in units of this many
    reserved_shared_per_block: int = 1024
    max_registers_per_thread: int = 255
    source: str = ""


_GUIDE = ("CUDA C++ Programming Guide, 'Compute Capabilities' (technical specifications per compute "
          "capability: 64K 32-bit registers, max 2048 threads and 32 blocks per SM; max shared memory per SM "
          "and 1 KB reserved per block); ")
#: Limits of the one GPU of each target that the reports assume.
ARCHS = {
    "sm_80": Arch("sm_80", "A100 SXM4", 108, 65536, 164 * 1024, 2048, 32,
                  source=_GUIDE + "cc 8.0: 164 KB shared per SM; SM count: NVIDIA A100 Tensor Core GPU "
                                  "Architecture whitepaper (108 SMs)"),
    "sm_90a": Arch("sm_90a", "H100 SXM5", 132, 65536, 228 * 1024, 2048, 32,
                   source=_GUIDE + "cc 9.0: 228 KB shared per SM; SM count: NVIDIA H100 Tensor Core GPU "
                                   "Architecture whitepaper (132 SMs, SXM5)"),
    "sm_100a": Arch("sm_100a", "B200", 148, 65536, 228 * 1024, 2048, 32,
                    source=_GUIDE + "cc 10.0: 228 KB shared per SM; SM count: NVIDIA Blackwell datasheet "
                                    "(B200, 148 SMs)"),
}


def occupancy(arch: Arch, *, num_warps: int, registers: int, shared: int) -> tuple[int, str, dict]:
    """``(resident programs per SM, limiter, every limit)`` for a kernel with ``num_warps`` warps,
    ``registers`` per thread and ``shared`` bytes of shared memory per program."""
    threads = num_warps * 32
    per_warp = math.ceil(max(registers, 1) * 32 / arch.register_unit) * arch.register_unit
    limits = {
        "threads": arch.max_threads_per_sm // threads,
        "registers": (arch.registers_per_sm // per_warp) // num_warps,
        "shared": arch.shared_per_sm // (shared + arch.reserved_shared_per_block),
        "blocks": arch.max_blocks_per_sm,
    }
    limiter = min(limits, key=lambda k: (limits[k], list(limits).index(k)))
    return limits[limiter], limiter, limits
