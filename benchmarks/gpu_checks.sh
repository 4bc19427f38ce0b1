#!/usr/bin/env bash
# Every GPU check the open issues name, in one run of about 8 minutes on one GPU (an H200 took 10 of its
# 15-minute budget with the start-up). Run from the repository root on a machine with CUDA, torch and pfm
# (`make setup CUDA=1`, or an image with torch plus `pip install --no-deps` of what it lacks):
#   bash benchmarks/gpu_checks.sh
# Prints each figure beside its reference. Each step has its own timeout, so one slow check does not eat the
# others' time.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false DS_BUILD_OPS=0
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
uptime
t0=$(date +%s)
stamp() { echo "== t=$(( $(date +%s) - t0 )) s: $*"; }

stamp "prefetch state on CUDA (tests/test_data_stream.py -k cuda)"
timeout 120 "$py" -m pytest -q -p no:cacheprovider tests/test_data_stream.py -k cuda 2>&1 | tail -3
stamp "pool steps through CUDA graphs: bitwise the plain frames, one capture per family across refreshes and a resume (tests/test_pool_graphs.py -k cuda)"; timeout 120 "$py" -m pytest -q -p no:cacheprovider tests/test_pool_graphs.py -k cuda 2>&1 | tail -3

stamp "fused ETDRK stages on CUDA (triton) vs the plain path: ETDRK4, real and complex weights (tests/test_fused.py -k cuda)"; timeout 90 "$py" -m pytest -q -p no:cacheprovider tests/test_fused.py -k cuda 2>&1 | tail -3
stamp "datagen: pfm plain, CUDA-graph, fused (torch.compile stages) and fused+graph steps vs exponax, max |diff| (issue 12: every family >= 1.0x)"
timeout 240 "$py" benchmarks/datagen.py --device cuda --n 64 128 --batch 4 --steps 20 --compare-only --fuse \
    --cases burgers kuramoto_sivashinsky diffusion 2>&1 | grep -v -i warn

stamp "data wait, tadpole_pretrain, prefetch off then on, pools advanced every 4 batches (issue 12: < 0.05;"
echo "   with every batch advancing, an H200 gave 0.71 off and 0.48 on, benchmarks/README.md)"
timeout 170 "$py" benchmarks/data_wait.py --device cuda --experiment tadpole_pretrain --steps 40 --skip 10 \
    -- logger=csv data.batches_per_advance=4 2>&1 | tail -8

stamp "GPhyT: S fp32 numerics on CUDA (folded tokenizer) vs the reference, then GPhyT-M bf16 throughput and MFU"
timeout 90 "$py" benchmarks/gphyt.py --device cuda --size M --bf16 --batch 32 --steps 20 2>&1 | grep -v -i warn | tail -15

stamp "PLaTITO-3M rollouts vs the official-style reference"
timeout 60 "$py" benchmarks/tito.py --device cuda 2>&1 | grep -v -i warn | tail -6

stamp "done"
