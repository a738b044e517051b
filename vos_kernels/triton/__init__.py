"""Triton kernels and their launchers (one module per op). Imported lazily: triton is optional."""
