"""What a launch compiles to: the JIT specialisation Triton derives from a launch's arguments.

``kernel[grid](*args)`` does not compile the kernel for "any arguments": ``JITFunction.run`` looks
at each argument and bakes some of what it sees into the compiled code. This module derives the
same specialisation from a recorded launch, so that :mod:`.compile` compiles exactly the code a
GPU would run:

* ``tl.constexpr`` parameters are compiled in (``BLOCK_M=128``, ``ACTIVATION=2``);
* a tensor becomes a typed pointer (``*fp16``), marked 16-byte aligned (``tt.divisibility=16``)
  when its first element is: on a GPU allocations are aligned, so this depends on the storage
  offset (a channel slice of a concatenation buffer may not be aligned);
* an integer equal to 1 becomes a compile-time constant (a stride of 1 makes the compiler know
  that the axis is contiguous, which is what lets it vectorise loads along it);
* another integer becomes ``i32`` (or ``i64`` when it does not fit), marked divisible by 16 when
  it is: a width of 40 is not, a width of 160 is, and the compiler vectorises accordingly;
* a float becomes ``fp32`` and is never specialised.

A launch is recorded as plain JSON (:func:`describe_arguments`), so it can cross process
boundaries, be deduplicated and keyed for the disk cache.
"""

from __future__ import annotations

import torch

#: Triton's names of the tensor dtypes the kernels take.
POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                 torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
#: The alignment and divisibility Triton specialises on.
DIVISIBILITY = 16


def kernel_path(kernel) -> str:
    """``"module:name"`` of a ``@triton.jit`` kernel (compiled or interpreted), to find it again."""
    fn = getattr(kernel, "fn", kernel)
    return f"{fn.__module__}:{fn.__name__}"


def parameter_names(kernel) -> list[str]:
    """The kernel's parameter names, in order."""
    import inspect

    return list(inspect.signature(getattr(kernel, "fn", kernel)).parameters)


def constexpr_names(kernel) -> set[str]:
    """The kernel's ``tl.constexpr`` parameters."""
    import inspect

    import triton.language as tl

    out = set()
    for name, p in inspect.signature(getattr(kernel, "fn", kernel)).parameters.items():
        annotation = p.annotation
        if annotation is tl.constexpr or (isinstance(annotation, str) and annotation.split(".")[-1] == "constexpr"):
            out.add(name)
    return out


def describe_argument(value):
    """A launch argument as JSON: tensors by dtype, shape, strides and whether they are aligned."""
    if isinstance(value, torch.Tensor):
        offset_bytes = value.storage_offset() * value.element_size()
        return {"tensor": POINTER_TYPES.get(value.dtype, str(value.dtype)), "shape": list(value.shape),
                "stride": list(value.stride()), "aligned": offset_bytes % DIVISIBILITY == 0}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot describe a launch argument of type {type(value).__name__}")


def describe_arguments(kernel, args, kwargs) -> dict:
    """``{parameter: described value}`` of a launch, and its launch options (``num_warps``, ...)."""
    names = parameter_names(kernel)
    if len(args) > len(names):
        raise TypeError(f"{kernel_path(kernel)}: {len(args)} positional arguments for {len(names)} parameters")
    bound = dict(zip(names, args))
    options = {}
    for key, value in kwargs.items():
        if key in names:
            bound[key] = value
        else:
            options[key] = value
    missing = [n for n in names if n not in bound]
    if missing:
        raise TypeError(f"{kernel_path(kernel)}: missing arguments {missing}")
    return {"args": {n: describe_argument(bound[n]) for n in names}, "options": options}


def specialise(kernel, described: dict) -> dict:
    """The specialisation ``JITFunction.run`` derives for these described arguments, as JSON:
    ``signature`` {parameter: type}, ``constexprs`` {parameter: value} (the constexpr parameters
    and the integers equal to 1), ``ones`` (those integers) and ``divisible`` (the parameters marked
    ``tt.divisibility=16``)."""
    constexpr = constexpr_names(kernel)
    signature, constexprs, ones, divisible = {}, {}, [], []
    for name, value in described.items():
        if name in constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, dict):  # a tensor: a typed pointer
            signature[name] = "*" + value["tensor"]
            if value["aligned"]:
                divisible.append(name)
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name] = "constexpr"
                constexprs[name] = 1
                ones.append(name)
                continue
            if -2**31 <= value <= 2**31 - 1:
                signature[name] = "i32"
            elif 2**63 <= value <= 2**64 - 1:
                signature[name] = "u64"
            else:
                signature[name] = "i64"
            if value % DIVISIBILITY == 0:
                divisible.append(name)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel_path(kernel)}: cannot specialise {name}={value!r}")
    return {"signature": signature, "constexprs": constexprs, "ones": ones, "divisible": divisible}


def short_specialisation(spec: dict) -> str:
    """A one-line summary: the integer parameters fixed to 1 and those known divisible by 16."""
    ones = spec["ones"]
    div = [n for n in spec["divisible"] if not spec["signature"][n].startswith("*")]
    return f"=1: {','.join(ones) or '-'}; %16: {','.join(div) or '-'}"
