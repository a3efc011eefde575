#!/bin/bash
# Submit the flow pipeline to SLURM: train, then sample once training succeeded
# (--dependency=afterok:<train job id>). Run it from the repository root:
#
#   jobs/submit_pipeline.sh configs/tutorial_flow.yaml [--set output.dir=runs/x ...]
#
# Extra arguments go to both 'lattice-flows' commands (so both stages see the same config).
# Extra sbatch options: SBATCH_ARGS="--account=abc --partition=gpu" jobs/submit_pipeline.sh ...
# (sbatch also reads SBATCH_ACCOUNT, SBATCH_PARTITION, ... from the environment).
# With WITH_HMC=1 an HMC job for the same config is submitted as well (independent of the two).
#
# The job id is read with 'sbatch --parsable', which prints "<id>" or "<id>;<cluster>".
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then CONFIG="$1"; shift; fi
CONFIG="${CONFIG:-configs/tutorial_flow.yaml}"
if [[ ! -f "$CONFIG" ]]; then echo "config file '$CONFIG' not found (in $PWD)" >&2; exit 2; fi
JOBS_DIR="${JOBS_DIR:-jobs}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"

mkdir -p logs  # the #SBATCH --output folder must exist when the job starts

submit() {  # submit ARGS...; prints the job id
  local out
  out=$(sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} "$@")  # (bash 4.2-safe)
  out="${out%%;*}"
  if [[ ! "$out" =~ ^[0-9]+$ ]]; then
    echo "submit_pipeline: could not read a job id from sbatch output: '$out'" >&2
    return 1
  fi
  echo "$out"
}

train_id=$(submit "$JOBS_DIR/train.sbatch" "$CONFIG" "$@")
echo "train:  job $train_id"
sample_id=$(submit --dependency="afterok:$train_id" "$JOBS_DIR/sample.sbatch" "$CONFIG" "$@")
echo "sample: job $sample_id (runs after $train_id succeeded)"
if [[ "${WITH_HMC:-0}" == 1 ]]; then
  hmc_id=$(submit "$JOBS_DIR/hmc.sbatch" "$CONFIG" "$@")
  echo "hmc:    job $hmc_id"
fi
echo "then:   lattice-flows analyze <output.dir>   (squeue -u \$USER to follow)"
