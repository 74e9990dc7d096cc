#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in stages that each finish inside ~9 minutes (so a machine lent for short
# calls can run one stage per call). Logs, Markdown tables and JSON go to $OUT (default out/gpu).
#
#   bash benchmarks/run_gpu.sh tests       # CUDA kernel tests (float64 references, bf16 model shapes), trainer on GPU
#   bash benchmarks/run_gpu.sh kernels     # per-kernel fwd+bwd time and memory vs eager / compiled / Liger
#   bash benchmarks/run_gpu.sh micro       # MicroLlama-300M training step, every lit_gpt variant at micro batch 16
#   bash benchmarks/run_gpu.sh sweep       # the two fastest lit_gpt variants at micro batch 8 and 32
#   bash benchmarks/run_gpu.sh peers       # the same for HF (eager, compiled, Liger) and litgpt, micro batch 8/16
#   bash benchmarks/run_gpu.sh tinyllama   # TinyLlama-1.1B shape, best lit_gpt variant vs the best peers
#   bash benchmarks/run_gpu.sh autotune    # the compiled lit_gpt rows again with --compile-mode max-autotune-no-cudagraphs
#   bash benchmarks/run_gpu.sh all         # all of the above in one go (~60 minutes)
#   bash benchmarks/run_gpu.sh tests kernels   # several stages, in this order
#
# Wheels in .whl/ (benchmarks/fetch_wheels.sh) are installed into /tmp/site first, for machines with no internet.
set -uo pipefail
cd "$(dirname "$0")/.."
ALL=(tests kernels micro sweep peers tinyllama autotune)
stages=("$@")
[ "${1:-}" = all ] && stages=("${ALL[@]}")
[ ${#stages[@]} -gt 0 ] || stages=(none)
for s in "${stages[@]}"; do
  case " ${ALL[*]} " in *" $s "*) ;; *)
    echo "usage: bash benchmarks/run_gpu.sh all | STAGE... (stages: ${ALL[*]})" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
out=${OUT:-out/gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: could not install the wheels in .whl/" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null \
  || { echo "error: benchmarks/run_gpu.sh needs torch with a CUDA GPU ($PY sees none)" >&2; exit 1; }

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
  "$PY" -c "import torch, triton; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN',
    torch.backends.cudnn.version(), f'triton {triton.__version__},', torch.cuda.get_device_name())"
  date -u +"%Y-%m-%d %H:%M UTC"
}

BUDGET=${BUDGET:-510}  # seconds per stage (benchmark stages print their table even when it runs out)
BEST=("lit_gpt kernels+compile" "lit_gpt kernels+compile fsdp")
OURS=("${BEST[@]}" "lit_gpt compile" "lit_gpt kernels" "lit_gpt eager")  # most important first

run_stage() {
  case "$1" in
    tests)
      timeout "$BUDGET" "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_trainer_cuda.py \
        tests/test_model.py 2>&1 | tee "$out/tests.log" ;;
    kernels)
      timeout "$BUDGET" "$PY" benchmarks/kernels.py 2> "$out/kernels.err" | tee "$out/kernels.md" ;;
    micro)
      "$PY" benchmarks/train_throughput.py --variants "${OURS[@]}" --micro-batches 16 --budget "$BUDGET" \
        --json "$out/micro.json" 2> "$out/micro.err" | tee "$out/micro.md" ;;
    sweep)
      "$PY" benchmarks/train_throughput.py --variants "${BEST[@]}" --micro-batches 8 32 --no-breakdown \
        --budget "$BUDGET" --json "$out/sweep.json" 2> "$out/sweep.err" | tee "$out/sweep.md" ;;
    peers)
      "$PY" benchmarks/train_throughput.py --variants "litgpt compile" "hf liger" "hf compile" "litgpt eager" \
        "hf eager" --micro-batches 8 16 --no-breakdown --budget "$BUDGET" --json "$out/peers.json" \
        2> "$out/peers.err" | tee "$out/peers.md" ;;
    tinyllama)
      "$PY" benchmarks/train_throughput.py --model TinyLlama-1.1B --micro-batches 4 8 --variants \
        "lit_gpt kernels+compile" "litgpt compile" "hf liger" --no-breakdown --budget "$BUDGET" \
        --json "$out/tinyllama.json" 2> "$out/tinyllama.err" | tee "$out/tinyllama.md" ;;
    autotune)
      "$PY" benchmarks/train_throughput.py --variants "lit_gpt kernels+compile" "lit_gpt compile" --micro-batches 16 \
        --compile-mode max-autotune-no-cudagraphs --no-breakdown --budget "$BUDGET" --json "$out/autotune.json" \
        2> "$out/autotune.err" | tee "$out/autotune.md" ;;
  esac
}

environment | tee "$out/environment.txt"
status=0
for s in "${stages[@]}"; do
  echo "== $s" >&2
  run_stage "$s" || status=1
done
exit $status
