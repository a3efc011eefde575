#!/usr/bin/env bash
# The device check: every GPU figure and check of the package in one call, <= 5 minutes on one GPU.
#
#   bash benchmarks/device_check.sh            # from the repository root (or anywhere)
#   OUT=/some/folder bash benchmarks/device_check.sh
#
# Steps (each under its own `timeout`, so one hang cannot eat the budget; each step's status is
# in summary.txt, its output in its own file):
#   1. nvidia-smi and the hardware line (benchmarks/_hardware.py)                  (15 s)
#   2. pytest tests/cuda: flow invariants, exact free-field HMC, train->sample->resume (140 s)
#   3. benchmarks/nccl_check.py --device cuda: lattice_flows.distributed's NCCL path (init,
#      broadcast, all-reduce), one rank per GPU: a single-rank NCCL group on a one-GPU machine,
#      mpiexec -n <GPUs> where there are several GPUs and an mpiexec                 (60 s)
#   4. benchmarks/throughput.py --device cuda at L = 32 and 64: proposals/s, training steps/s,
#      HMC trajectories/s (wall-s between CUDA syncs)                                (100 s)
# Output folder: $OUT when set, else benchmarks/results/device_check/ (7 files: summary.txt,
# nvidia-smi.txt, pytest_cuda.txt, nccl_check.json, nccl_check.log, throughput.json,
# throughput.log). Exit status: 0 iff every step passed.
#
# Without CUDA the script says so, runs the CPU-able parts in quick mode (hardware line, a
# single-rank gloo group of nccl_check.py, throughput.py --quick; tests/cuda's CPU twins run in
# the ordinary test suite) and exits 0 if they pass (tests/unit/test_device_check.py).
# DEVICE_CHECK_CPU=1 asks for that quick CPU mode on a GPU machine too.
#
# The package needs its dependencies on the GPU machine (torch, numpy, h5py, mpi4py, pyyaml,
# scipy for the tests, and pydantic, which GPU images often lack): a folder .whl/ of wheels in
# the repository root is installed into a private --target first (no index, no network), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform \
#     manylinux_2_17_x86_64 -d .whl pydantic==2.13.4 pydantic_core==2.46.4 \
#     annotated-types==0.7.0 typing-inspection==0.4.2
# (the versions this was written with; match the GPU machine's Python). Step 0 names any module
# still missing.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
OUT="${OUT:-$REPO/benchmarks/results/device_check}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
unset LATTICE_FLOWS_NO_MPI
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }
# step NAME SECONDS LOGFILE CMD...: run CMD under a timeout, output to LOGFILE, status to summary
step() {
  local name="$1" limit="$2" log="$3"; shift 3
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local verdict=PASS
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then verdict="TIMEOUT after ${limit}s"; elif [[ $rc -ne 0 ]]; then verdict="FAIL (rc $rc)"; fi
  [[ $verdict == PASS ]] || FAILED=1
  say "[$verdict] $name ($((SECONDS - t0)) s; log $(basename "$log"))"
  if [[ $verdict != PASS ]]; then tail -n 15 "$log" | sed 's/^/    /' | tee -a "$SUMMARY"; fi
}

say "# device check, $(date -u '+%Y-%m-%d %H:%M UTC'), repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"

# 0. dependencies (wheels carried in .whl/, see above)
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/lf_site "$REPO"/.whl/*.whl >"$OUT/pip.log" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/lf_site" && rm -f "$OUT/pip.log"
fi
# one interpreter start: the imports, the hardware line, CUDA or not (rc 0 CUDA, 3 none, else
# the package does not import)
"$PY" - >"$OUT/hardware.txt" 2>&1 <<'PYEOF'
import sys
sys.path.insert(0, "benchmarks")
import h5py, mpi4py, torch  # noqa: F401
import lattice_flows.cli, lattice_flows.distributed  # noqa: F401
from _hardware import hardware_line
print(hardware_line())
sys.exit(0 if torch.cuda.is_available() else 3)
PYEOF
HW_RC=$?
if [[ $HW_RC -ne 0 && $HW_RC -ne 3 ]]; then
  say "[FAIL] the package does not import here: $(tail -n 1 "$OUT/hardware.txt")"
  say "       carry the missing wheels in .whl/ (see the header of this script)"
  exit 1
fi

# 1. hardware
say "hardware: $(cat "$OUT/hardware.txt")"
rm -f "$OUT/hardware.txt"
if [[ $HW_RC -eq 3 || ${DEVICE_CHECK_CPU:-0} == 1 ]]; then
  [[ $HW_RC -eq 3 ]] || say "DEVICE_CHECK_CPU=1: CUDA is here, but the CPU-able quick mode was asked for"
  say "no CUDA on this machine: the GPU steps (pytest tests/cuda, the NCCL check, throughput at"
  say "L = 32 and 64) are skipped; running the CPU-able parts in quick mode"
  step "distributed: single-rank gloo group (init, broadcast, all-reduce)" 60 "$OUT/nccl_check.log" \
    "$PY" benchmarks/nccl_check.py --device cpu --out "$OUT/nccl_check.json"
  step "throughput --quick on the CPU" 60 "$OUT/throughput.log" \
    "$PY" benchmarks/throughput.py --device cpu --quick --out "$OUT/throughput.json"
  say "# done without CUDA: $([[ $FAILED == 0 ]] && echo 'CPU-able parts passed' || echo 'a CPU-able part FAILED')"
  exit $FAILED
fi
step "nvidia-smi" 15 "$OUT/nvidia-smi.txt" nvidia-smi
cat "$OUT/nvidia-smi.txt"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
say "GPUs visible to torch: $NGPU"

# 2. the CUDA tests
step "pytest tests/cuda" 140 "$OUT/pytest_cuda.txt" \
  "$PY" -m pytest tests/cuda -q -p no:cacheprovider -ra -n 0  # one process: the tests share one GPU
grep -E "passed|failed|error" "$OUT/pytest_cuda.txt" | tail -n 1 | sed 's/^/    /' | tee -a "$SUMMARY"

# 3. the NCCL path: one rank per GPU
if [[ $NGPU -gt 1 ]] && command -v mpiexec >/dev/null; then
  step "distributed: NCCL group of $NGPU ranks (init, broadcast, all-reduce)" 60 "$OUT/nccl_check.log" \
    mpiexec -n "$NGPU" "$PY" benchmarks/nccl_check.py --device cuda --out "$OUT/nccl_check.json"
else
  step "distributed: single-rank NCCL group (init, broadcast, all-reduce)" 60 "$OUT/nccl_check.log" \
    "$PY" benchmarks/nccl_check.py --device cuda --out "$OUT/nccl_check.json"
fi

# 4. throughput at L = 32 and 64
step "throughput L = 32, 64 on cuda" 100 "$OUT/throughput.log" \
  "$PY" benchmarks/throughput.py --device cuda --sizes 32,64 --warmup 3 --blocks 3 --block-s 1.5 \
  --out "$OUT/throughput.json"
grep "^L = " "$OUT/throughput.log" | sed 's/^/    /' | tee -a "$SUMMARY"

say "# done: $([[ $FAILED == 0 ]] && echo 'every step passed' || echo 'a step FAILED (see above)')"
exit $FAILED
