#!/usr/bin/env bash
# One-script smoke of a bf16 DDP `train` job: a real embedded platform (API + train worker) runs the job
# under torchrun and the script prints its tokens/s and dispatch latency (bench/train_service.py, service
# mode). On a GPU machine it uses every GPU (NCCL, one rank per GPU, bf16 autocast, DiT `small`); without a
# GPU it runs a tiny CPU mode (2 gloo ranks, cpu-nano, bf16 autocast) that only proves the path works.
#
#   bash bench/gpu_ddp_smoke.sh                 # auto: GPU if nvidia-smi sees one, else the tiny CPU mode
#   STEPS=300 SIZE=tiny bash bench/gpu_ddp_smoke.sh
# On a GPU machine: install the project with a CUDA torch build of the same version (torch==2.13.0 from
# the CUDA index), `make install`, then run this script; results go to bench/results/gpu_ddp_smoke.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if command -v nvidia-smi >/dev/null 2>&1 && GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "${GPUS:-0}" -gt 0 ] \
   && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "GPU mode: ${GPUS} GPU(s), NCCL, bf16"
  exec "$PY" bench/train_service.py --mode service --device cuda --precision bf16 --nproc "${NPROC:-$GPUS}" \
    --size "${SIZE:-small}" --steps "${STEPS:-200}" --batch-size "${BATCH:-32}" --seq-len "${SEQ_LEN:-512}" \
    --out bench/results/gpu_ddp_smoke.json
fi
echo "no usable GPU: tiny CPU mode (2 gloo ranks, cpu-nano, bf16 autocast) to prove the path works"
exec "$PY" bench/train_service.py --mode service --device cpu --precision bf16 --nproc 2 \
  --size cpu-nano --steps "${STEPS:-20}" --batch-size 4 --seq-len 32 --out bench/results/gpu_ddp_smoke.json
