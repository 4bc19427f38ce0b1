#!/usr/bin/env bash
# Multi-node pfm-train with torchrun, for clusters without SLURM. Run the same command on every node, with
# that node's NODE_RANK; all nodes must see the run folder (a shared file system):
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0.example GPUS_PER_NODE=8 launch/torchrun/train.sh \
#       experiment=tadpole_pretrain model=tadpole_b strategy=deepspeed_zero3 hydra.run.dir=/shared/runs/tadpole_b
#   (then NODE_RANK=1, 2, 3 on the other three nodes)
#
# Lightning reads ranks and world size from torchrun's variables (TorchElasticEnvironment); strategy.devices,
# strategy.num_nodes and strategy.accelerator follow from GPUS_PER_NODE and NNODES. GPUS_PER_NODE=0 with
# NPROC_PER_NODE=N runs N CPU processes per node (gloo). resume=auto is the default: run the same command
# again after a failure and it continues from the newest checkpoint. DRY_RUN=1 prints the command only.
set -euo pipefail

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' )}"
PYTHON="${PYTHON:-python}"

if [ "$GPUS_PER_NODE" -gt 0 ]; then
    NPROC_PER_NODE="${NPROC_PER_NODE:-$GPUS_PER_NODE}"
    ACCELERATOR=gpu
    if [ "$NPROC_PER_NODE" -ne "$GPUS_PER_NODE" ]; then
        echo "train.sh: NPROC_PER_NODE=$NPROC_PER_NODE disagrees with GPUS_PER_NODE=$GPUS_PER_NODE:" \
             "one process per GPU; unset NPROC_PER_NODE (it is for GPUS_PER_NODE=0, CPU processes)." >&2
        exit 2
    fi
else
    NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
    ACCELERATOR=cpu
fi
if [ "$NODE_RANK" -ge "$NNODES" ] || [ "$NODE_RANK" -lt 0 ]; then
    echo "train.sh: NODE_RANK=$NODE_RANK must be in 0..$((NNODES - 1)) for NNODES=$NNODES." >&2
    exit 2
fi
resume=resume=auto
for arg in "$@"; do
    case "$arg" in
        strategy.devices=*|strategy.num_nodes=*|strategy.accelerator=*)
            echo "train.sh: $arg is set from GPUS_PER_NODE/NPROC_PER_NODE and NNODES; drop it." >&2; exit 2 ;;
        resume=*) resume="" ;;
    esac
done
if [ "$NNODES" -gt 1 ] && ! printf '%s\n' "$@" | grep -q '^hydra.run.dir='; then
    echo "train.sh: with NNODES=$NNODES every node must write to the same run folder; pass" \
         "hydra.run.dir=<a folder on a shared file system> (the default holds each node's own clock)." >&2
    exit 2
fi

cmd=("$PYTHON" -m torch.distributed.run
     --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC_PER_NODE"
     --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT"
     -m pfm.train "$@"
     "strategy.devices=$NPROC_PER_NODE" "strategy.num_nodes=$NNODES" "strategy.accelerator=$ACCELERATOR")
[ -n "$resume" ] && cmd+=("$resume")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
