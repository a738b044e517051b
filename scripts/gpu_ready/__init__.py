"""`make gpu-ready`: build, import and inspect the CUDA build of vos_kernels on a machine without a GPU.

Modules, one job each:
  toolchain   nvcc, CUDA_HOME, cuobjdump and their CUDA versions
  venv        the cached venv with a CUDA build of torch (create or reuse)
  build       the CUDA build of the extension into build/gpu-ready/ (never the clone's own _C)
  probe       run inside the venv: import, _compiled_with_cuda(), dispatcher registrations, routes
  resources   cuobjdump resource usage and launch bounds of every kernel in the .so
  occupancy   sm_80 / sm_90 per-SM limits and the occupancy estimate
  rules       the pass/fail rules over the collected facts
  report      report.json, report.md and the table in docs/gpu.md
  main        the command line (scripts/gpu_ready/main.py)
"""
