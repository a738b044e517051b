"""Named tolerances of the tests that compare floats across code paths, each with its reason.

Rule: a float result that passes through a library code path which the library vectorises per
CPU (ATen's per-ISA kernels, oneDNN, MKL, OpenBLAS: convolutions, matmuls, reductions, pooling,
elementwise math) is compared with a tolerance from here, never at atol=0: the same call
rounds differently on an Intel (AVX-512 FP16, AMX) and an AMD (Zen) CPU. Exact equality stays
only for our own deterministic paths against themselves (the same kernel at other thread
counts, a checkpoint round trip or bit-exact resume in one process) and for values that are
exact by construction (masks copied through, integers, dyadic fractions).

The kernels' own per-dtype tolerances (each op against its eager reference) are
`kernel_utils.tolerance(dtype)`.
"""
from __future__ import annotations

# float32 values of magnitude <= 2 from ATen elementwise/pooling kernels (div by a scalar is a
# multiply by its reciprocal on some paths, vector and scalar tails differ): a few units in the
# last place, 1 ulp at 1.0 being 1.19e-7 (the difference seen on a Sapphire Rapids Xeon).
F32_LIBRARY_ULPS = {"atol": 1e-6, "rtol": 1e-6}
