#!/usr/bin/env bash
# The whole test suite from a fresh clone on the lent device machine (an Intel Xeon with an H200):
# `make test` at OMP_NUM_THREADS=1 and 2 (every CPU test on an Intel CPU, and the CUDA-only tests on a
# real GPU), plus the portable-versus-native CPU kernel comparison on that CPU. Two steps:
#
#   bash scripts/device_suite.sh pack           # here: a git bundle of HEAD and ../shared, packed
#                                               # into .devshared/ (git-ignored through .git/info/exclude)
#   bash scripts/device_suite.sh run OUT        # there (the device tool's command, carry .devshared):
#                                               # clones the bundle to /tmp/w/main with ../shared beside
#                                               # it, as CI does, and writes logs, JUnit XML and CSVs to OUT
#
# The device tool sends the working tree but not ../shared, and at most 64 MiB: ../shared's
# parity fixtures travel xz-compressed (50 -> 25 MB), the sample's JPEGs as they are.
# The two suites run at once, each in its own clone and build (OMP=1 with N1 pytest-xdist workers,
# OMP=2 with N2), on separate cores; compare_builds and then bench_winograd --layers run on two more
# cores of their own (each compares two versions timed back to back, so the load elsewhere slows
# both alike). Everything is cut
# at BOX seconds (default 500: run it with the device tool's timeout_s >= 540).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="$ROOT/.devshared"
SHARED_SRC="${VOS_SHARED_DIR:-$ROOT/../shared}"

pack() {
  mkdir -p "$PACK"
  grep -qx '/.devshared/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.devshared/' >>"$ROOT/.git/info/exclude"
  git -C "$ROOT" bundle create "$PACK/repo.bundle" HEAD "$(git -C "$ROOT" branch --show-current)" 2>/dev/null
  git -C "$ROOT" archive --format=tar -o "$PACK/repo.tar" HEAD
  (cd "$SHARED_SRC" && tar cf - --exclude=data . | xz -9 -T0 >"$PACK/shared.tar.xz")
  (cd "$SHARED_SRC" && tar cf "$PACK/data.tar" data)
  du -sh "$PACK"/*
}

run() {
  # Everything is written under /tmp/w/out and packed into OUT/device_suite.tgz at the end (the device
  # tool brings back at most 8 files); every job is cut at BOX seconds from the start, so that the
  # packing happens even when a suite runs long; OUT/summary.txt holds the tails of the logs.
  local dest="$1" n1="${N1:-6}" n2="${N2:-3}" w=/tmp/w box="${BOX:-500}"
  local out="$w/out" deadline=$((SECONDS + box))
  rm -rf "$w"; mkdir -p "$out" "$w/shared" "$dest"
  left() { echo $((deadline - SECONDS)); }
  {
    date -u; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|NUMA node\(s\)'
    grep -o -w -E 'avx2|avx512f|avx512_bf16|avx512_fp16|amx_tile|amx_bf16' /proc/cpuinfo | sort | uniq -c
    nvidia-smi -L 2>&1
    python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    python3 -c 'import triton; print("triton", triton.__version__)' 2>&1
    command -v nvcc && nvcc --version | tail -1
  } >"$out/machine.txt" 2>&1
  tar xJf "$PACK/shared.tar.xz" -C "$w/shared" && tar xf "$PACK/data.tar" -C "$w/shared" || { echo "unpack failed"; return 1; }
  for clone in main omp2 native; do
    if command -v git >/dev/null; then git clone -q "$PACK/repo.bundle" "$w/$clone"
    else mkdir -p "$w/$clone" && tar xf "$PACK/repo.tar" -C "$w/$clone"; echo "no git: $clone unpacked from git archive" >>"$out/machine.txt"; fi
  done
  git -C "$w/main" log --oneline -1 >>"$out/machine.txt" 2>&1
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" PIP_NO_INDEX=1 PYTHONUNBUFFERED=1
  # The lent image's CXX=/opt/gcc/bin/g++ links libstdc++ statically: setup.py's probe refuses that
  # extension (its C++ errors crashed the interpreter, scripts/build_probe.py); build with PATH's g++.
  if [ -n "${CXX:-}${CC:-}" ]; then echo "unset CXX=${CXX:-} CC=${CC:-}" >>"$out/machine.txt"; unset CXX CC; fi
  # failures as they happen (JUnit XML is written only at the end), and the slowest tests
  local plugin="-p no:cacheprovider -p gpu_check.failure_log --durations=30"
  # core lists through taskset where the sandbox honours it: the suites get (cores - 4) / 2 each,
  # the native build the last four, compare_builds the last two
  local cores hi lo half pin=""
  cores=$(nproc); hi=$((cores - 1)); lo=$((cores - 2)); half=$(((cores - 4) / 2))
  if [ "$cores" -ge 8 ] && taskset -c 0 true 2>/dev/null; then pin="taskset -c"; else half=$(((cores + 1) / 2)); fi
  local on_a="${pin:+$pin 0-$((half - 1))}" on_b="${pin:+$pin $half-$((2 * half - 1))}"
  local on_native="${pin:+$pin $((lo - 2))-$hi}" on_ab="${pin:+$pin $lo,$hi}"
  # compare_builds: the -march=native CPU build against the OMP=2 clone's build (the portable default:
  # its CPU flags are the same with CUDA on or off), on the last cores, once both are built (its
  # ratios compare the two builds timed back to back, so load elsewhere slows both alike)
  (
    cd "$w" || exit 1
    (cd native && VOS_KERNELS_CUDA=0 VOS_KERNELS_CPU_FLAGS=-march=native MAX_JOBS=4 timeout "$(left)" $on_native \
       python3 setup.py build_ext --inplace -q) >"$out/build_native.log" 2>&1
    while [ ! -f "$w/omp2.built" ] && [ "$(left)" -gt 0 ]; do sleep 2; done
    # run from the native clone: --record appends to its tracked CSV, and the suites' clones must
    # see no tracked file change
    cd native && timeout "$(left)" $on_ab python3 -m benchmarks.compare_builds --build portable="$w/omp2" \
      --build native="$w/native" --rounds "${ROUNDS:-5}" --budget "${BUDGET:-0.3}" --record >"$out/compare_builds.log" 2>&1
    cp benchmarks/results/compare_builds.csv "$out/compare_builds.csv"
    # Winograd against the direct convolution on this CPU (AMX: the preset leaves Winograd off
    # until this is measured), single layers at 480p sizes, bfloat16, 2 threads
    OMP_NUM_THREADS=2 timeout "$(left)" $on_ab python3 -m benchmarks.bench_winograd --layers --precision bfloat16 \
      --rounds 5 >"$out/winograd.log" 2>&1
    cp benchmarks/runs/winograd.md "$out/winograd.md" 2>/dev/null
  ) &
  local bench=$!
  # The two suites. OMP=1: `make test` as the README says (setup: pip's editable install, which
  # builds the extension; cuda-check; pytest), xdist through PYTEST_ADDOPTS. OMP=2: the second clone
  # built in place and pytest (cuda-check is the OMP=1 run's), without a second editable install (two at once would
  # race on site-packages; its console scripts resolve to the first clone, of the same commit).
  (cd "$w/main" && OMP_NUM_THREADS=1 MAX_JOBS=$half PYTHONPATH="$w/main/scripts" \
     PYTEST_ADDOPTS="-n $n1 --junitxml=$out/junit_omp1.xml $plugin --failure-log $out/failures_omp1.txt" \
     timeout "$(left)" $on_a make test >"$out/make_test_omp1.log" 2>&1; echo "rc=$?" >>"$out/make_test_omp1.log") &
  local s1=$!
  (cd "$w/omp2" && export OMP_NUM_THREADS=2 MAX_JOBS=$half PYTHONPATH="$w/omp2/scripts" &&
     { timeout "$(left)" $on_b python3 setup.py build_ext --inplace -q && touch "$w/omp2.built" &&
       timeout "$(left)" $on_b python3 -m pytest -q -n "$n2" --junitxml="$out/junit_omp2.xml" $plugin \
         --failure-log "$out/failures_omp2.txt"; } >"$out/make_test_omp2.log" 2>&1; echo "rc=$?" >>"$out/make_test_omp2.log") &
  local s2=$!
  wait "$s1" "$s2" "$bench"
  {
    cat "$out/machine.txt"; echo "pin: ${pin:-none}"
    for f in make_test_omp1.log make_test_omp2.log compare_builds.log winograd.log; do echo "=== $f"; tail -n 45 "$out/$f"; done
    for f in failures_omp1.txt failures_omp2.txt; do echo "=== $f: $(grep -c '^=== FAILED' "$out/$f" 2>/dev/null || echo 0) failed reports, $(wc -l <"$out/$f.done" 2>/dev/null || echo 0) tests done"; done
  } >"$dest/summary.txt" 2>&1
  tar czf "$dest/device_suite.tgz" -C "$w" out
  cat "$dest/summary.txt"
}

case "${1:-}" in
  pack) pack ;;
  run) run "${2:?usage: device_suite.sh run OUT}" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
