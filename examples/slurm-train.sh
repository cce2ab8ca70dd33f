#!/bin/bash
# Multi-node pre-training under Slurm: one torchrun per node, c10d rendezvous on the first node.
#   sbatch examples/slurm-train.sh            (edit the #SBATCH lines and the config first)
# The mesh: tp=4 inside each node (the 125m preset has 4 KV heads), pp=2 and data parallel (FSDP2)
# take the rest: 32 GPUs = tp 4 x pp 2 x dp 4. See docs/train.md.
#SBATCH --job-name=scratchllm-train
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=4

srun torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$SLURM_GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$head_node:29500" --rdzv-id="$SLURM_JOB_ID" \
    -m scratchllm train --config configs/train/gpu-125m.toml \
    train.tp=4 train.pp=2 train.pp_microbatches=8 train.parallel=fsdp \
    out_dir="runs/train/slurm-$SLURM_JOB_ID" "$@"
