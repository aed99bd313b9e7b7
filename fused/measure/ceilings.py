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
profile --remeasure``) measures again and overwrites the entry; ``cache=False`` measures without
reading or writing the file (still memoised for the process)::

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
        where = "" if self.source == "measured" else f", cached in {self.source}"
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
    t = timing.time_callable(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
    _BANDWIDTH[key] = 2 * n * 4 / (t.min_ms * 1e-3) / 1e9  # the best run: a ceiling
    return _BANDWIDTH[key]


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
        t = timing.time_callable(lambda: torch.mm(a, b, out=out), device, warmup=2, repeats=repeats)
    _MATMUL[key] = 2 * side**3 / (t.min_ms * 1e-3)  # the best run: a ceiling
    return _MATMUL[key]


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


def measure(device="cpu", dtype=None, *, remeasure: bool = False, cache: bool = True) -> Ceilings:
    """The ceilings of ``device``: read from the cache file, or measured (and cached).

    ``dtype`` is the matmul's dtype (default float16 on a GPU, float32 on a CPU); on a CPU any
    dtype is measured as float32. ``remeasure=True`` ignores the cached entry and overwrites it;
    ``cache=False`` neither reads nor writes the file.
    """
    device = _device(device)
    if device.type != "cuda":
        dtype = torch.float32
    dtype = default_matmul_dtype(device) if dtype is None else dtype
    key = cache_key(device, dtype)
    path = cache_path()
    if cache and not remeasure:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict):
            try:
                found = Ceilings.from_dict({**entry, "source": str(path)})
                if found.copy_gbps > 0 and found.matmul_flops > 0:
                    return found
            except TypeError:
                pass  # an entry from an older layout: measure again
    fresh = not remeasure  # --remeasure bypasses the in-process memo too
    ceilings = Ceilings(
        device=device.type,
        device_name=device_name(device),
        torch=torch.__version__,
        copy_gbps=copy_bandwidth(device, memo=fresh),
        matmul_flops=matmul_throughput(device, dtype, memo=fresh),
        matmul_dtype=str(dtype).replace("torch.", ""),
        matmul_side=MATMUL_SIDE["cuda" if device.type == "cuda" else "cpu"],
        copy_bytes=COPY_BYTES["cuda" if device.type == "cuda" else "cpu"],
        method=timing.timing_method(device),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if cache:
        try:
            _write_cache(path, key, ceilings.to_dict())
        except OSError:
            pass  # a read-only home: the numbers are still good for this run
    return ceilings
