"""The machine's ceilings, measured on the machine that runs: copy bandwidth and matmul throughput.

A roofline needs two numbers: how many bytes per second the memory can move, and how many
FLOP per second the arithmetic units can do. Datasheet numbers are optimistic and depend on the
exact part, clocks and driver, so facefuse measures both where it runs and never types them in:

* **copy bandwidth**: ``dst.copy_(src)`` of a large buffer (512 MiB on a GPU, 64 MiB on a CPU),
  counted as bytes read + bytes written per second. This is what a memory-bound kernel can hope
  to reach.
* **matmul throughput**: ``torch.mm`` of two large square matrices (8192 on a GPU in the model's
  dtype, float16 by default; 1024 in float32 on a CPU), counted as ``2 n^3`` FLOP per second.
  This is what a well-tiled compute-bound kernel can hope to reach.

Both are timed with :func:`fused.measure.timing.time_callable` (CUDA events on a GPU, the wall clock on a
CPU; warm-up first) and the *fastest* run counts: a ceiling is the best the machine can do, and on a
shared machine the other runs measure the neighbours too. A CPU measurement takes about a second.

:func:`measure` caches its result in a JSON file, ``$FACEFUSE_CACHE/ceilings.json`` (default
``~/.cache/facefuse/ceilings.json``), keyed by the device's name, the torch version and, for the
matmul, the dtype (and on a CPU the number of torch threads). ``remeasure=True`` (``facefuse
profile --remeasure``) measures again; ``cache=False`` measures without reading or writing the
file (still memoised for the process).

A ceiling measured while other work shares the machine is too low, and every percentage of it too
high (a cached 5.6 GB/s once made blocks show 2063% of the roofline), so the cache defends itself:

* each measurement keeps the best of :data:`RUNS` runs, and the file keeps, per ceiling, the best
  of every measurement written to it (a busy rerun never lowers a good entry);
* a CPU measurement taken while the load average is above :data:`BUSY_LOAD` of the cores is used
  for the run but not written (:func:`machine_load`);
* a cached entry is checked by a quick copy probe (:func:`probe_bandwidth`, a few milliseconds on a
  CPU); a probe more than :data:`PROBE_MARGIN` times faster than the entry means the entry was
  measured under load, and the ceilings are measured again::

    from fused.measure import ceilings
    c = ceilings.measure("cpu")
    print(c)                 # copy 11.2 GB/s, matmul 198 GFLOP/s (float32), ridge 17.7 FLOP/B, ...
    c.attainable(2.0)        # FLOP/s the roofline allows at 2 FLOP per byte
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import timing
from .environment import cpu_name

#: Environment variable naming the cache folder (default ``~/.cache/facefuse``).
CACHE_ENV = "FACEFUSE_CACHE"
CACHE_FILE = "ceilings.json"

#: Buffer bytes of the copy measurement, and the matmul side, per device type.
COPY_BYTES = {"cuda": 512 * 2**20, "cpu": 64 * 2**20}
MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}
#: Measurements per :func:`measure` call; the best of them counts.
RUNS = 2
#: A quick probe this many times faster than the cached copy bandwidth sends it to be measured again.
PROBE_MARGIN = 1.2
#: On a CPU, a 1-minute load average above this fraction of the cores is a busy machine.
BUSY_LOAD = 0.5


@dataclass(frozen=True)
class Ceilings:
    """The two measured roofs of one device (``copy_gbps`` in GB/s, ``matmul_flops`` in FLOP/s)."""

    device: str  # "cpu" or "cuda"
    device_name: str
    torch: str
    copy_gbps: float
    matmul_flops: float
    matmul_dtype: str
    matmul_side: int
    copy_bytes: int
    method: str  # the timing method: "cuda-event" or "wall-clock"
    date: str
    source: str = "measured"  # "measured", or the cache file it was read from

    @property
    def bandwidth(self) -> float:
        """Copy bandwidth in bytes per second."""
        return self.copy_gbps * 1e9

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two roofs meet: below it a kernel is memory-bound."""
        return self.matmul_flops / self.bandwidth

    def attainable(self, intensity: float) -> float:
        """FLOP/s the roofline allows at ``intensity`` FLOP per byte: ``min(peak, intensity * bandwidth)``."""
        return min(self.matmul_flops, intensity * self.bandwidth)

    def bound(self, intensity: float | None) -> str:
        """``"memory"`` below the ridge point, ``"compute"`` at or above it."""
        return "memory" if intensity is None or intensity < self.ridge else "compute"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Ceilings":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def __str__(self) -> str:
        where = ("" if self.source == "measured" else f", {self.source}" if self.source.startswith("measured")
                 else f", cached in {self.source}")
        return (f"{self.device_name}: copy {self.copy_gbps:.4g} GB/s, matmul {self.matmul_flops / 1e9:.4g} GFLOP/s "
                f"({self.matmul_dtype}, {self.matmul_side}x{self.matmul_side}), ridge {self.ridge:.3g} FLOP/B "
                f"(measured {self.date} with torch {self.torch}{where})")


# --------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------

_BANDWIDTH: dict[str, float] = {}
_MATMUL: dict[str, float] = {}


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def copy_bandwidth(device, *, nbytes: int | None = None, repeats: int = 20, memo: bool = True) -> float:
    """Copy bandwidth of ``device`` in GB/s (bytes read + written per second / 1e9), memoised per process.

    ``dst.copy_(src)`` of a float32 buffer of ``nbytes`` (default :data:`COPY_BYTES`), fastest of
    ``repeats`` runs.
    """
    device = _device(device)
    key = f"{device}:{nbytes}"
    if memo and key in _BANDWIDTH:
        return _BANDWIDTH[key]
    if nbytes is None:
        nbytes = COPY_BYTES["cuda" if device.type == "cuda" else "cpu"]
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    # the thread count the cache key names (device_name), not timing's choice for a busy CPU
    t = timing.time_callable(lambda: dst.copy_(src), device, warmup=3, repeats=repeats, threads=torch.get_num_threads())
    gbps = 2 * n * 4 / (t.min_ms * 1e-3) / 1e9  # the best run: a ceiling
    if memo:
        _BANDWIDTH[key] = gbps
    return gbps


def matmul_throughput(device, dtype=None, *, side: int | None = None, repeats: int | None = None,
                      memo: bool = True) -> float:
    """FLOP/s of ``torch.mm`` of two ``side x side`` matrices in ``dtype`` on ``device``, memoised per process.

    Defaults: float16 and 8192 on a GPU, float32 and 1024 on a CPU (where half precision is not
    what the models run in). Counted as ``2 * side**3`` FLOP per product.
    """
    device = _device(device)
    dtype = default_matmul_dtype(device) if dtype is None else dtype
    side = side or MATMUL_SIDE["cuda" if device.type == "cuda" else "cpu"]
    repeats = repeats or (20 if device.type == "cuda" else 10)
    key = f"{device}:{dtype}:{side}"
    if memo and key in _MATMUL:
        return _MATMUL[key]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(side, side, device=device, dtype=dtype)
    with torch.no_grad():
        t = timing.time_callable(lambda: torch.mm(a, b, out=out), device, warmup=2, repeats=repeats,
                                 threads=torch.get_num_threads())
    flops = 2 * side**3 / (t.min_ms * 1e-3)  # the best run: a ceiling
    if memo:
        _MATMUL[key] = flops
    return flops


def default_matmul_dtype(device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def device_name(device) -> str:
    """The GPU's name, or the CPU's model name with the number of torch threads (they set its peak)."""
    device = _device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name() or 'CPU'} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$FACEFUSE_CACHE``, else ``~/.cache/facefuse``."""
    folder = os.environ.get(CACHE_ENV)
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "facefuse"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def cache_key(device, dtype=None) -> str:
    """``device name | torch version | matmul dtype``: a new GPU, torch or dtype measures afresh."""
    device = _device(device)
    dtype = default_matmul_dtype(device) if dtype is None else dtype
    return f"{device_name(device)} | torch {torch.__version__} | {str(dtype).replace('torch.', '')}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, value: dict) -> None:
    data = _read_cache(path)
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: two processes writing at once leave one whole file


def probe_bandwidth(device) -> float:
    """A quick copy bandwidth (GB/s): the same buffer as :func:`copy_bandwidth`, fastest of 5 runs, not memoised."""
    return copy_bandwidth(device, repeats=5, memo=False)


def machine_load(device) -> str | None:
    """Why a measurement on ``device`` now would be taken under load (a CPU whose 1-minute load
    average is above :data:`BUSY_LOAD` of its cores), or None. A GPU is not checked."""
    if torch.device(device).type == "cuda" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f"load average {load:.1f} on {cores} cores" if load > BUSY_LOAD * cores else None


def _best(a: Ceilings, b: Ceilings) -> Ceilings:
    """The higher of each ceiling (and the date of the one with the higher copy bandwidth)."""
    newer = a if a.copy_gbps >= b.copy_gbps else b
    return Ceilings(**{**newer.to_dict(), "copy_gbps": max(a.copy_gbps, b.copy_gbps),
                       "matmul_flops": max(a.matmul_flops, b.matmul_flops), "source": "measured"})


def measure(device="cpu", dtype=None, *, remeasure: bool = False, cache: bool = True) -> Ceilings:
    """The ceilings of ``device``: read from the cache file (checked by a quick probe), or measured
    (and cached unless the machine is busy). See the module docstring.

    ``dtype`` is the matmul's dtype (default float16 on a GPU, float32 on a CPU); on a CPU any
    dtype is measured as float32. ``remeasure=True`` ignores the cached entry (the file still keeps
    the best of the two); ``cache=False`` neither reads nor writes the file.
    """
    device = _device(device)
    if device.type != "cuda":
        dtype = torch.float32
    dtype = default_matmul_dtype(device) if dtype is None else dtype
    key = cache_key(device, dtype)
    path = cache_path()
    cached = None
    if cache:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict):
            try:
                cached = Ceilings.from_dict({**entry, "source": str(path)})
            except TypeError:
                cached = None  # an entry from an older layout: measure again
            if cached is not None and not (cached.copy_gbps > 0 and cached.matmul_flops > 0):
                cached = None
    if cached is not None and not remeasure and probe_bandwidth(device) <= PROBE_MARGIN * cached.copy_gbps:
        return cached
    busy = machine_load(device)
    ceilings = _measure_now(device, dtype, memo=not remeasure and cached is None)
    for _ in range(RUNS - 1):
        ceilings = _best(ceilings, _measure_now(device, dtype, memo=False))
    best = ceilings if cached is None else _best(ceilings, cached)
    if busy is not None:
        return Ceilings(**{**best.to_dict(), "source": f"measured on a busy machine ({busy}), not cached"})
    if cache:
        try:
            _write_cache(path, key, best.to_dict())
        except OSError:
            pass  # a read-only home: the numbers are still good for this run
    return best


def _measure_now(device, dtype, *, memo: bool) -> Ceilings:
    """One measurement of both ceilings (``memo=False``: not the process's remembered numbers)."""
    return Ceilings(
        device=device.type,
        device_name=device_name(device),
        torch=torch.__version__,
        copy_gbps=copy_bandwidth(device, memo=memo),
        matmul_flops=matmul_throughput(device, dtype, memo=memo),
        matmul_dtype=str(dtype).replace("torch.", ""),
        matmul_side=MATMUL_SIDE["cuda" if device.type == "cuda" else "cpu"],
        copy_bytes=COPY_BYTES["cuda" if device.type == "cuda" else "cpu"],
        method=timing.timing_method(device),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
