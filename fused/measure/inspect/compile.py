"""Compile one kernel variant for an NVIDIA GPU on a machine without one, and cache what came out.

A *variant* is a kernel with one specialisation (:mod:`.specialize`) and one set of launch options
(``num_warps``, ``num_stages``). :func:`compile_variant` compiles it with ``triton.compile`` for a
target (``sm_90a`` by default), exactly as ``JITFunction.run`` would (same ``ASTSource``
signature, constants and attributes, same options), then reads the compiler's products:
``ptxas -v``'s log (registers, spills, stack), ``cuobjdump --dump-resource-usage`` and the SASS
(``cuobjdump -sass``), and analyses them (:mod:`.analyse`).

The ``ptxas -v`` log is the one Triton's own ptxas run prints (:func:`ptxas_for`: the ptxas
Triton uses for the target; Triton 3.9 uses ``ptxas-blackwell``, CUDA 13, from sm_90 on). Each
compile runs in a private, empty Triton cache (:func:`fresh_triton_cache`), so Triton always runs
ptxas: with a warm ``~/.triton/cache`` it would skip it, print no log, and the spill figures would
depend on what ran before.

It must run in a process where Triton compiles (``TRITON_INTERPRET`` off): the
``facefuse inspect`` worker (:mod:`.worker`). Results are cached on disk, one folder per variant
under :func:`cache_dir`, keyed by the kernel's source hash (Triton's ``cache_key``, which covers
the ``@triton.jit`` functions it calls), the specialisation, the target, the options and the
Triton and ptxas versions: a change to any of them compiles again.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from . import analyse

#: Targets by name: Triton's compute capability (``GPUTarget("cuda", capability, 32)``); Triton
#: turns 90 into ``sm_90a`` and 100 into ``sm_100a`` (their architecture-specific features).
TARGETS = {"sm_80": 80, "sm_90a": 90, "sm_100a": 100}
DEFAULT_TARGET = "sm_90a"
#: Bumped when what a cache entry holds changes.
CACHE_FORMAT = 3
#: The compiler products kept per variant (gzip-compressed text, the cubin as bytes).
ARTIFACTS = ("ttir", "ttgir", "ptx", "sass", "ptxas_log")


def cache_dir() -> Path:
    """``$FACEFUSE_INSPECT_CACHE``, or ``$FACEFUSE_CACHE/inspect`` (default ``~/.cache/facefuse/inspect``)."""
    explicit = os.environ.get("FACEFUSE_INSPECT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("FACEFUSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "facefuse")
    return Path(base) / "inspect"


def load_kernel(path: str):
    """The ``@triton.jit`` function named ``"module:name"``."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def triton_version() -> str:
    import triton

    return triton.__version__


def _nvidia_tool(name: str) -> str:
    """Path of a tool Triton ships (``ptxas``, ``cuobjdump``, ...), through its knobs when it has them."""
    import triton

    knobs = getattr(triton, "knobs", None)
    nvidia = getattr(knobs, "nvidia", None)
    tool = getattr(nvidia, name.replace("-", "_"), None) if nvidia is not None else None
    path = getattr(tool, "path", None)
    if path:
        return path
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_for(capability: int) -> str:
    """The ptxas Triton itself runs for this capability: its ``get_ptxas`` (Triton 3.9 uses
    ``ptxas-blackwell`` from sm_90 on, Triton 3.6 from sm_100 on), else the bundled ``ptxas``."""
    try:
        from triton.backends.nvidia import compiler as nvidia
    except ImportError:  # pragma: no cover - a Triton without the NVIDIA backend
        nvidia = None
    get = getattr(nvidia, "get_ptxas", None)
    if get is not None:
        try:
            tool = get(capability)
        except TypeError:  # older Tritons: get_ptxas() without an architecture
            tool = get()
        path = getattr(tool, "path", None) or (tool[0] if isinstance(tool, tuple) else tool)
        if isinstance(path, str) and path:
            return path
    if capability >= 100:
        blackwell = _nvidia_tool("ptxas-blackwell")
        if os.path.exists(blackwell):
            return blackwell
    return _nvidia_tool("ptxas")


@contextlib.contextmanager
def fresh_triton_cache():
    """Point Triton's kernel cache (``TRITON_CACHE_DIR``) at a new empty folder while compiling,
    so that ``triton.compile`` runs every stage, ptxas included, and prints its log."""
    old = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="facefuse-triton-") as tmp:
        os.environ["TRITON_CACHE_DIR"] = tmp
        try:
            yield tmp
        finally:
            if old is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = old


@functools.lru_cache(maxsize=None)
def tool_version(path: str) -> str:
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return "missing"
    found = re.search(r"release (\S+?),? V?(\S+)", text)
    return found.group(2) if found else text.strip().splitlines()[-1] if text.strip() else "unknown"


def source_args(kernel, spec: dict):
    """``(signature, constexprs, attrs)`` for ``ASTSource`` from a :func:`~.specialize.specialise`
    result, in the form ``JITFunction.run`` builds them (Triton 3.3 and later): constants and
    attributes keyed by ``(parameter index,)``. The attribute lists enter the kernel's hash, and
    which parameters get one differs by release (Triton 3.9 gives every constexpr an empty list,
    3.6 none unless its value is a string), so they come from the installed Triton's own
    ``JITFunction._pack_args`` (:func:`jit_attrs`)."""
    names = list(spec["signature"])
    index = {n: (i,) for i, n in enumerate(names)}
    constexprs = {index[n]: v for n, v in spec["constexprs"].items()}
    return dict(spec["signature"]), constexprs, jit_attrs(spec)


def jit_specialization(spec: dict) -> list[tuple]:
    """The ``(type, attribute)`` pairs ``JITFunction.run`` derives for each parameter, from a
    :func:`~.specialize.specialise` result (what Triton's ``specialize_impl`` returns)."""
    found = []
    for name, kind in spec["signature"].items():
        if kind == "constexpr":
            found.append(("constexpr", spec["constexprs"][name]))
        elif kind.startswith("*") or kind in ("i32", "i64", "u64"):
            found.append((kind, "D" if name in spec["divisible"] else ""))
        else:  # fp32, i1: never specialised
            found.append((kind, None))
    return found


def jit_attrs(spec: dict) -> dict:
    """``attrs`` as the installed Triton's ``JITFunction._pack_args`` builds them for ``spec``;
    where that method is missing or changed, the Triton 3.9 rule (every parameter but floats and
    bools gets a list, empty unless divisible by 16)."""
    import types

    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction

    names = list(spec["signature"])
    backend = types.SimpleNamespace(parse_options=lambda kwargs: types.SimpleNamespace(),
                                    parse_attr=BaseBackend.parse_attr)
    owner = types.SimpleNamespace(params=[types.SimpleNamespace(name=n) for n in names])
    bound = {n: spec["constexprs"].get(n) for n in names}
    try:
        return JITFunction._pack_args(owner, backend, {}, bound, jit_specialization(spec), None)[3]
    except (AttributeError, TypeError, ValueError, KeyError):
        divisible, plain = BaseBackend.parse_attr("D"), BaseBackend.parse_attr("")
        return {(i,): (divisible if n in spec["divisible"] else plain)
                for i, (n, t) in enumerate(spec["signature"].items()) if t not in ("fp32", "i1")}


def variant_key(variant: dict, target: str) -> str:
    """The cache key of a variant compiled for ``target``."""
    kernel = load_kernel(variant["kernel"])
    capability = TARGETS[target]
    text = json.dumps({
        "format": CACHE_FORMAT, "source": kernel.cache_key, "kernel": variant["kernel"], "spec": variant["spec"],
        "options": variant["options"], "target": target, "triton": triton_version(),
        "ptxas": tool_version(ptxas_for(capability)),
    }, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _gpu_target(capability: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", capability, 32)


@contextlib.contextmanager
def _ptxas_log():
    """Capture the ``ptxas -v`` log Triton prints when its ``dump_ptxas_log`` knob is on (None if
    this Triton has no such knob: the log is then made by running ptxas again)."""
    import triton

    nvidia = getattr(getattr(triton, "knobs", None), "nvidia", None)
    if nvidia is None or not hasattr(nvidia, "dump_ptxas_log"):
        yield None
        return
    buffer = io.StringIO()
    old = nvidia.dump_ptxas_log
    nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        nvidia.dump_ptxas_log = old


def _run_ptxas(ptx: str, capability: int, arch_name: str) -> str:
    """``ptxas -v``'s log for ``ptx`` from Triton's own ptxas (for a Triton that prints none)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # the options Triton 3.9 passes; an older ptxas without --regAllocOptLevel gets the plain call
        for extra in (["--regAllocOptLevel=2"], []):
            done = subprocess.run([ptxas_for(capability), "-lineinfo", "-v", *extra, f"--gpu-name={arch_name}",
                                   str(src), "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                return done.stderr + done.stdout
        raise RuntimeError(f"ptxas -v failed on the kernel's PTX: {(done.stderr or done.stdout).strip()[-400:]}")


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([_nvidia_tool("cuobjdump"), *flags, str(path)], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"cuobjdump {' '.join(flags)} failed: {done.stderr.strip()[-400:]}")
        return done.stdout


def compile_source(variant: dict, target: str = DEFAULT_TARGET):
    """``triton.compile`` of a variant for ``target``: the ``CompiledKernel`` (``.asm["ptx"]``, ...)."""
    import triton
    from triton.compiler import ASTSource

    kernel = load_kernel(variant["kernel"])
    signature, constexprs, attrs = source_args(kernel, variant["spec"])
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=_gpu_target(TARGETS[target]), options=dict(variant["options"]))


def compile_variant(variant: dict, target: str = DEFAULT_TARGET, *, cache: Path | None = None) -> dict:
    """Compile (or read from the cache) one variant for ``target``; its analysis as JSON
    (:func:`~.analyse.analyse`), with ``key`` (the cache folder's name), ``hash`` (Triton's kernel
    hash), ``compiled`` (False when read from the cache) or ``error``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    cache = cache_dir() if cache is None else Path(cache)
    key = variant_key(variant, target)
    folder = cache / key
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            return {**_reanalysed(folder, json.loads(meta_path.read_text())), "compiled": False}
        except (OSError, ValueError, EOFError):
            pass  # a damaged entry: compile again
    capability = TARGETS[target]
    meta = {"key": key, "target": target, "kernel": variant["kernel"]}
    try:
        with fresh_triton_cache(), _ptxas_log() as log:
            compiled = compile_source(variant, target)
        asm = compiled.asm
        ptxas_log = log.getvalue() if log is not None else ""
        if "spill" not in ptxas_log:  # a Triton without the dump_ptxas_log knob
            ptxas_log = _run_ptxas(asm["ptx"], capability, _arch_name(asm["ptx"], target))
        meta["ptxas"] = tool_version(ptxas_for(capability))
        products = {"ttir": asm.get("ttir", ""), "ttgir": asm.get("ttgir", ""), "ptx": asm["ptx"],
                    "sass": _cuobjdump(asm["cubin"], "-sass"), "ptxas_log": ptxas_log}
        resources = _cuobjdump(asm["cubin"], "--dump-resource-usage")
        meta["resource_usage"] = resources
        meta.update(analyse.analyse(products, resources))
        meta["hash"] = getattr(compiled, "hash", None)
        meta["shared_triton"] = getattr(compiled.metadata, "shared", None)
    except Exception as exc:  # a variant that does not compile is a finding, not a crash
        meta["error"] = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
        return {**meta, "compiled": True}
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in products.items():
        _write_atomically(folder / f"{name}.gz", gzip.compress(text.encode()))
    _write_atomically(folder / "cubin", asm["cubin"])
    _write_atomically(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())  # last: the entry is complete
    return {**meta, "compiled": True}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a file of this process's own, renamed into place: two processes that
    compile the same variant at once (parallel test workers, two ``inspect`` runs) never leave or
    read a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _reanalysed(folder: Path, meta: dict) -> dict:
    """A cache entry's metadata with the analysis made again from its stored products, so a
    change to :mod:`.analyse` applies to cached variants without compiling them again."""
    if "error" in meta:
        return meta
    products = {name: gzip.decompress((folder / f"{name}.gz").read_bytes()).decode() for name in ARTIFACTS}
    fresh = analyse.analyse(products, meta.get("resource_usage", ""))
    meta.update({k: v for k, v in fresh.items() if v is not None or k not in meta})
    return meta


def _arch_name(ptx: str, target: str) -> str:
    found = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    return found.group(1) if found else target


def artifact(key: str, name: str, *, cache: Path | None = None) -> str:
    """One compiler product of a cached variant: ``ttir``, ``ttgir``, ``ptx``, ``sass`` or ``ptxas_log``."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown product {name!r}; choose from {', '.join(ARTIFACTS)}")
    path = (cache_dir() if cache is None else Path(cache)) / key / f"{name}.gz"
    return gzip.decompress(path.read_bytes()).decode()
