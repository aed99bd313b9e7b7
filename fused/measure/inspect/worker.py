"""The process that records and compiles: ``python -m fused.measure.inspect.worker REQUEST.json RESULT.json``.

Started by :func:`fused.measure.inspect.run_worker` with ``TRITON_INTERPRET=0``, because a process
that imported ``fused`` in interpreter mode (any CPU process that used the kernels) holds
interpreted kernels and Triton's library rebuilt for the interpreter: it cannot compile. Here the
dry runs (:mod:`.dryrun`) record every launch, identical variants are merged, and the variants not
in the disk cache are compiled by a pool of processes (one per CPU by default). Progress goes to
stderr; the result (launches per configuration, one analysis per variant) to ``RESULT.json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
import time


def _compile(args):
    from .compile import compile_variant

    variant, target, cache = args
    return compile_variant(variant, target, cache=cache)


def run(request: dict, say=None) -> dict:
    """Do what ``request`` asks (``configs`` to dry-run and ``variants`` given as such, ``target``,
    ``cache``, ``jobs``; ``compile`` False for the dry runs only); the result as JSON."""
    from . import dryrun
    from .compile import compile_variant, ptxas_for, tool_version, TARGETS, triton_version

    say = say or (lambda line: None)
    target = request.get("target", "sm_90a")
    cache = request.get("cache")
    configs, variants = [], {}
    for i, variant in enumerate(request.get("variants", ())):  # variants given as such (compile_variants)
        variants[f"given{i}"] = variant
    for raw in request.get("configs", ()):
        config = dryrun.Config.from_json(raw)
        started = time.perf_counter()
        launches = dryrun.dry_run(config)
        for launch in launches:
            vid = dryrun.variant_id(launch["variant"])
            variants.setdefault(vid, launch["variant"])
            launch["variant_id"] = vid
        configs.append({"config": config.to_json(), "name": config.name, "launches": launches})
        say(f"dry run {config.name}: {len(launches)} launches ({time.perf_counter() - started:.1f} s)")
    ids = list(variants)
    if request.get("compile") is False:
        return {"target": target, "configs": configs,
                "variants": {vid: {"variant": variants[vid], "analysis": None} for vid in ids}}
    say(f"{len(ids)} distinct variants for {target}")
    results: dict[str, dict] = {}
    todo = []
    for vid in ids:  # cached ones first, without starting a pool
        from .compile import cache_dir, variant_key
        from pathlib import Path

        folder = (Path(cache) if cache else cache_dir()) / variant_key(variants[vid], target)
        if (folder / "meta.json").exists():
            results[vid] = compile_variant(variants[vid], target, cache=cache)
        else:
            todo.append(vid)
    if results:
        say(f"{len(results)} variants read from the cache")
    jobs = max(1, min(int(request.get("jobs") or os.cpu_count() or 1), len(todo) or 1))
    started = time.perf_counter()
    if todo and jobs == 1:
        for i, vid in enumerate(todo, 1):
            results[vid] = compile_variant(variants[vid], target, cache=cache)
            say(f"compiled {i}/{len(todo)} {variants[vid]['kernel'].split(':')[1]} ({time.perf_counter() - started:.0f} s)")
    elif todo:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(_compile, (variants[vid], target, cache)): vid for vid in todo}
            for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                vid = futures[future]
                results[vid] = future.result()
                say(f"compiled {i}/{len(todo)} {variants[vid]['kernel'].split(':')[1]} "
                    f"({time.perf_counter() - started:.0f} s, {jobs} processes)")
    capability = TARGETS[target]
    return {
        "target": target, "configs": configs,
        "variants": {vid: {"variant": variants[vid], "analysis": results[vid]} for vid in ids},
        "versions": {"triton": triton_version(), "ptxas": tool_version(ptxas_for(capability)),
                     "ptxas_path": ptxas_for(capability)},
        "compiled": len(todo), "compile_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m fused.measure.inspect.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        request = json.load(f)
    quiet = request.get("quiet", False)
    say = None if quiet else (lambda line: print(f"facefuse inspect: {line}", file=sys.stderr, flush=True))
    result = run(request, say)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
