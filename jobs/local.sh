#!/bin/bash
# The train -> sample -> analyze pipeline on a workstation with mpiexec (e.g. the mpich wheel:
# pip install mpi4py mpich). Run from the repository root:
#
#   jobs/local.sh [CONFIG] [NP] [--set key=value ...]
#   jobs/local.sh configs/tutorial_flow.yaml 2
#
# CONFIG defaults to configs/tutorial_flow.yaml, NP (MPI ranks) to $NP or 2. Extra arguments go
# to 'lattice-flows train' and 'lattice-flows sample'. OMP_NUM_THREADS defaults to
# (number of cores) / NP. MPIEXEC overrides the launcher (e.g. MPIEXEC="mpirun --oversubscribe").
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then CONFIG="$1"; shift; fi
CONFIG="${CONFIG:-configs/tutorial_flow.yaml}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then NP="$1"; shift; fi
NP="${NP:-2}"
if [[ ! -f "$CONFIG" ]]; then echo "config file '$CONFIG' not found (in $PWD)" >&2; exit 2; fi
read -r -a mpiexec <<< "${MPIEXEC:-mpiexec}"

cores=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / NP > 0 ? cores / NP : 1 ))}"
export PYTHONUNBUFFERED=1
echo "local pipeline: $CONFIG on $NP rank(s), OMP_NUM_THREADS=$OMP_NUM_THREADS"

"${mpiexec[@]}" -n "$NP" lattice-flows train "$CONFIG" --no-progress "$@"
# 'sample' prints the path of its (merged) sample file on stdout, last line
samples=$("${mpiexec[@]}" -n "$NP" lattice-flows sample "$CONFIG" --no-progress "$@" | tail -n 1)
echo "samples: $samples"
lattice-flows analyze "$samples"
