"""Reading the compiler's products: registers, spills, how each ``tl.dot`` lowered, how loads were made.

All functions here take text (TTIR, PTX, SASS, ``ptxas -v`` log, ``cuobjdump
--dump-resource-usage``) and return plain JSON, so they run anywhere and are tested on snippets.

SASS words used below (NVIDIA's instruction names, listed in the CUDA binary utilities manual):
``HGMMA`` is Hopper's warpgroup MMA (PTX ``wgmma.mma_async``), ``HMMA`` the warp-level MMA
(``mma.sync``), ``FFMA`` a scalar fp32 fused multiply-add; ``LDG`` a load from global memory into
registers (``LDG.E.U16``: one 16-bit value per thread; ``LDG.E.128``: 16 bytes), ``LDGSTS`` an
asynchronous copy from global to shared memory (PTX ``cp.async``), ``UTMALDG`` a TMA bulk load;
``STL``/``LDL`` stores and loads of thread-local memory (where spilled registers go);
``WARPGROUP.DEPBAR.LE gsb0, N`` waits until at most ``N`` warpgroup MMAs are in flight (PTX
``wgmma.wait_group N``).
"""

from __future__ import annotations

import re
from collections import Counter

#: SASS opcodes that are tensor-core matrix multiplies.
MMA_OPCODES = ("HGMMA", "HMMA", "UTCHMMA", "UTCQMMA", "UTCMMA", "UMMA", "IMMA", "DMMA", "QGMMA")

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")


def parse_sass(sass: str) -> list[tuple[int, str, str]]:
    """``(address, opcode with modifiers, operands)`` of every SASS instruction."""
    out = []
    for m in _SASS_LINE.finditer(sass):
        out.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


def opcode_mix(instructions) -> Counter:
    """Instructions counted by base opcode (``LDG.E.U16`` counts as ``LDG``)."""
    return Counter(op.split(".")[0] for _, op, _ in instructions)


def loops(instructions) -> list[tuple[int, int]]:
    """``(first, last)`` address of every loop: a branch back to an earlier address."""
    found = []
    for address, op, operands in instructions:
        if op.split(".")[0] == "BRA":
            target = _BRANCH_TARGET.search(operands)
            if target and int(target.group(1), 16) < address:
                found.append((int(target.group(1), 16), address))
    return found


def main_loop(instructions) -> tuple[int, int] | None:
    """The loop where the kernel does its work: the innermost loop holding a tensor-core
    instruction, else the innermost loop with the most FMAs; None for straight-line code."""
    spans = loops(instructions)
    if not spans:
        return None

    def count(span, opcodes):
        return sum(1 for a, op, _ in instructions if span[0] <= a <= span[1] and op.split(".")[0] in opcodes)

    with_mma = [s for s in spans if count(s, MMA_OPCODES)]
    if with_mma:
        return min(with_mma, key=lambda s: s[1] - s[0])
    fma = ("FFMA", "HFMA2", "FADD", "FMUL")
    best = max(spans, key=lambda s: (count(s, fma), -(s[1] - s[0])))
    return best if count(best, fma) else max(spans, key=lambda s: s[1] - s[0])


def load_width(op: str) -> int:
    """Bits one thread loads with an ``LDG`` (``LDG.E.U16`` 16, ``LDG.E`` 32, ``LDG.E.64`` 64, ...)."""
    parts = op.split(".")
    for p in parts[1:]:
        if p in ("128", "64", "32"):
            return int(p)
        if p in ("U16", "S16"):
            return 16
        if p in ("U8", "S8"):
            return 8
    return 32


def global_loads(instructions, span=None) -> dict:
    """How global memory is read (within ``span`` when given): counts of ``LDG`` by width in bits,
    ``LDGSTS`` (cp.async) and ``UTMALDG`` (TMA)."""
    widths, asynchronous, tma = Counter(), 0, 0
    for address, op, _ in instructions:
        if span is not None and not span[0] <= address <= span[1]:
            continue
        base = op.split(".")[0]
        if base == "LDG":
            widths[load_width(op)] += 1
        elif base == "LDGSTS":
            asynchronous += 1
        elif base in ("UTMALDG", "UBLKCP"):
            tma += 1
    return {"ldg_bits": {str(k): v for k, v in sorted(widths.items())}, "ldgsts": asynchronous, "tma": tma}


def classify_loads(loads: dict, element_bits: int) -> str:
    """How a loop reads global memory: ``TMA``, ``cp.async`` (asynchronous copies to shared
    memory), ``vector`` (LDGs wider than one element) and ``scalar`` (one element per LDG), joined
    with ``+`` when several occur (``cp.async+scalar``: one operand asynchronous, the other not);
    ``none`` without global loads."""
    parts = []
    if loads["tma"]:
        parts.append("TMA")
    if loads["ldgsts"]:
        parts.append("cp.async")
    widths = {int(k): v for k, v in loads["ldg_bits"].items()}
    if widths:
        scalar = sum(v for w, v in widths.items() if w <= element_bits)
        parts.append("scalar" if scalar * 2 >= sum(widths.values()) else "vector")
    return "+".join(parts) or "none"


_MMA_WAIT = re.compile(r"gsb0\s*,\s*(0x[0-9a-f]+|\d+)")


def mma_wait(instructions, span) -> str:
    """How the main loop (``span``) waits for its warpgroup MMAs (``wgmma``): ``waits`` when it
    waits for all of them to finish (``WARPGROUP.DEPBAR.LE gsb0, 0x0``, PTX ``wgmma.wait_group
    0``) in every step, so the next step's MMA cannot overlap this one's; ``overlapped`` when it
    keeps one or more in flight; ``-`` without a ``wgmma`` in the loop (``mma.sync``, FMA, no loop)."""
    if span is None:
        return "-"
    inside = [(op, operands) for a, op, operands in instructions if span[0] <= a <= span[1]]
    if not any(op.split(".")[0] == "HGMMA" for op, _ in inside):
        return "-"
    waits = [int(m.group(1), 0) for op, operands in inside if op.startswith("WARPGROUP.DEPBAR")
             for m in [_MMA_WAIT.search(operands)] if m]
    return "waits" if waits and min(waits) == 0 else "overlapped"


def dot_lowering(ttir: str, ptx: str, sass_mix: Counter) -> dict:
    """How the kernel's ``tl.dot`` calls lowered: ``dots`` (in the TTIR), ``lowering``
    (``wgmma``, ``mma.sync``, ``tcgen05`` or ``FMA``; ``-`` without a dot) and ``operands``
    (the MMA's input type from the PTX: ``f16``, ``bf16``, ``tf32``; ``fp32 exact`` for FMA)."""
    dots = len(re.findall(r"\btt\.dot\b", ttir))
    if not dots:
        return {"dots": 0, "lowering": "-", "operands": "-"}
    wgmma = re.search(r"wgmma\.mma_async\.[\w.]*?\.(f16|bf16|tf32|e4m3|e5m2)\.", ptx)
    mma = re.search(r"mma\.sync\.aligned\.[\w.]*?\.(f16|bf16|tf32)\.", ptx)
    tcgen = re.search(r"tcgen05\.mma[\w.:]*?kind::(\w+)", ptx)  # kind::f16 covers f16 and bf16
    if wgmma or sass_mix.get("HGMMA"):
        return {"dots": dots, "lowering": "wgmma", "operands": wgmma.group(1) if wgmma else "?"}
    if tcgen or any(sass_mix.get(op) for op in ("UTCHMMA", "UTCQMMA", "UTCMMA")):
        return {"dots": dots, "lowering": "tcgen05", "operands": tcgen.group(1) if tcgen else "?"}
    if mma or sass_mix.get("HMMA"):
        return {"dots": dots, "lowering": "mma.sync", "operands": mma.group(1) if mma else "?"}
    return {"dots": dots, "lowering": "FMA", "operands": "fp32 exact"}


def parse_ptxas_log(log: str) -> dict:
    """Registers, spill stores/loads and stack frame bytes from ``ptxas -v``'s log (None if absent)."""
    def number(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return {"ptxas_registers": number(r"Used (\d+) registers"), "stack_frame": number(r"(\d+) bytes stack frame"),
            "spill_stores": number(r"(\d+) bytes spill stores"), "spill_loads": number(r"(\d+) bytes spill loads")}


def parse_resource_usage(text: str) -> dict:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of the (single) function in a cuobjdump resource dump."""
    out = {}
    for field in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{field}:(\d+)", text)
        out[field.lower() if field != "REG" else "registers"] = int(m.group(1)) if m else None
    return out


def analyse(products: dict, resource_usage: str) -> dict:
    """Everything :mod:`fused.measure.inspect` reports about one compiled variant, as JSON."""
    instructions = parse_sass(products["sass"])
    mix = opcode_mix(instructions)
    loop = main_loop(instructions)
    out = parse_resource_usage(resource_usage)
    out.update(parse_ptxas_log(products.get("ptxas_log", "")))
    out.update(dot_lowering(products.get("ttir", ""), products["ptx"], mix))
    out["sass_instructions"] = len(instructions)
    out["opcode_mix"] = dict(mix.most_common())
    out["loads"] = global_loads(instructions)
    out["main_loop"] = list(loop) if loop else None
    out["main_loop_loads"] = global_loads(instructions, loop) if loop else None
    out["local_memory_ops"] = {"STL": mix.get("STL", 0), "LDL": mix.get("LDL", 0)}
    out["mma_wait"] = mma_wait(instructions, loop)
    return out
