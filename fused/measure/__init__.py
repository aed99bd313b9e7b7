"""Measuring the kernels: profiling, benchmarks, machine ceilings, recorded results, the GPU check."""
