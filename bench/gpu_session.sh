#!/usr/bin/env bash
# Every check that needs a CUDA machine, in one go (about 6 to 9 minutes on one H100 or H200):
#   1. a 30-step smoke run of both precisions on the GPU (stops here if the code path is broken);
#   2. bench/gpu_check.py: the gpu preset, bf16 and fp16+GradScaler, eager and compiled, plus a larger
#      batch, and profiles of eager and compiled steps;
#   3. the CLI end to end on the GPU: train the tiny preset on Shakespeare with checkpoints, resume it,
#      then sample with live denoising from the shipped checkpoint;
#   4. the CPU of the same machine: bench/bench_train.py for the cpu preset (fp32 against bf16 autocast,
#      eager and compiled; the >= 1.6x target needs AMX), without the one-thread rows;
#   5. only with NOTEBOOKS=1 (several more minutes): every notebook with real settings on the GPU, timed,
#      for the GPU column of the README's course map (the committed notebooks are not touched).
# Usage: bash bench/gpu_session.sh [LOG_DIR]     (PYTHON=python3 by default; run from the repository root)
# Logs go to LOG_DIR (default $OUT, else /tmp/mdlm_gpu_session). Needs torch with CUDA and the
# packages of requirements.txt importable by $PYTHON; nothing is downloaded.
set -u -o pipefail
PY=${PYTHON:-python3}
LOG=${1:-${OUT:-/tmp/mdlm_gpu_session}}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start )) s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader || true
lscpu | grep -E "^Model name|^CPU\(s\)" || true
echo "CPU bf16 flags: $(grep -o -w -E 'amx_bf16|amx_tile|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

stamp "1. smoke run on the GPU"
timeout 120 $PY bench/gpu_check.py --smoke 2>&1 | tee "$LOG/smoke.txt" || { echo "smoke run failed: stopping"; exit 1; }

stamp "2. gpu_check"
timeout 360 $PY bench/gpu_check.py --also-batch 128 --profile "$LOG/profile.txt" 2>&1 | tee "$LOG/gpu_check.txt"
echo "gpu_check exit status: $?"

stamp "3. CLI on the GPU: train tiny, resume, demo"
run=$(mktemp -d)/tiny
timeout 90 $PY -m mdlm_course train --preset tiny --data data/shakespeare.txt --steps 100 --out "$run" 2>&1 \
    | tail -n 8 | tee "$LOG/cli.txt"
timeout 60 $PY -m mdlm_course train --preset tiny --data data/shakespeare.txt --steps 150 --out "$run" --resume \
    2>&1 | tail -n 4 | tee -a "$LOG/cli.txt"
ls "$run" | tee -a "$LOG/cli.txt"
timeout 60 $PY -m mdlm_course demo 2>&1 | tail -n 12 | tee -a "$LOG/cli.txt"

stamp "4. this machine's CPU: cpu preset, fp32 against bf16 autocast"
timeout 240 $PY bench/bench_train.py --presets cpu --device cpu --no-1thread 2>&1 | tee "$LOG/bench_cpu.txt"
if [ "${NOTEBOOKS:-0}" = 1 ]; then
    stamp "5. the notebooks with real settings on the GPU (timed; outputs not saved)"
    for nb in notebooks/0[0-8]_*.ipynb; do
        timeout 600 $PY notebooks/run.py "$nb" 2>&1 | tail -n 1 | tee -a "$LOG/notebooks_gpu.txt"
    done
fi
stamp "done"
