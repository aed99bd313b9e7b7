"""Triton kernels, one family per file; launchers check their inputs and pick block sizes."""
