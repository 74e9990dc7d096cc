#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in stages of at most ~6 minutes each, most valuable first, so that one device
# call of 10 minutes runs `quick` (plus one follow-up if time is left). benchmarks/README.md has the time plan and
# the question each stage answers.
#
#   bash benchmarks/run_gpu.sh                 # = quick: environment, correctness, headline, 24 GiB check (6 min)
#   bash benchmarks/run_gpu.sh peers           # HF eager / compiled / Liger and litgpt eager, MicroLlama, micro batch 16
#   bash benchmarks/run_gpu.sh tinyllama       # TinyLlama-1.1B, micro batch 8: ours (also under FSDP2) vs litgpt
#   bash benchmarks/run_gpu.sh kernels         # per-kernel fwd+bwd time and memory vs eager / compiled / Liger
#   bash benchmarks/run_gpu.sh sweep           # our two best variants at micro batch 8 and 32
#   bash benchmarks/run_gpu.sh autotune        # our compiled rows with --compile-mode max-autotune-no-cudagraphs
#   bash benchmarks/run_gpu.sh micro           # our other variants at micro batch 16 and the step breakdown
#   bash benchmarks/run_gpu.sh accelerators    # kernels+compile with flash-attn 2 / 3, xformers attention or SwiGLU
#   bash benchmarks/run_gpu.sh tests           # the CUDA test files (float64 references, trainer on the GPU)
#   bash benchmarks/run_gpu.sh all             # every stage, in this order (~50 minutes)
#   bash benchmarks/run_gpu.sh --dry-run STAGE...   # CPU rehearsal, below
#
# Output in $OUT (default out/gpu): environment.txt, then per stage <stage>.md (the table), <stage>.json (the rows)
# and <stage>.log, each rewritten as rows come in; 7 files for two stages, within the 8 a device call returns.
# Copy them to benchmarks/results/<YYYY-MM-DD>-<device>/ (environment.txt names the folder).
#
# --dry-run: the same commands on the CPU with the tiny model in place of the real ones (kernels under
# TRITON_INTERPRET=1, compilation traced by dynamo with the aot_eager backend, the CUDA tests collected and skipped),
# then every module the stage's processes imported is checked against the device image's packages
# (benchmarks/device_image.txt) and the wheels benchmarks/fetch_wheels.sh carries: a missing one fails the rehearsal.
# Compilation caches: one folder for the whole call (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR; default under
# /tmp/lit_gpt_compile_cache, kept while the machine stays warm), so rows and a rerun share compiled graphs.
# Wheels in .whl/ (benchmarks/fetch_wheels.sh) are installed into /tmp/site first, for machines with no internet.
set -uo pipefail
cd "$(dirname "$0")/.."
ALL=(quick peers tinyllama kernels sweep autotune micro accelerators checkpoint tests data)
dry=0
[ "${1:-}" = --dry-run ] && { dry=1; shift; }
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(quick)
[ "${stages[*]}" = all ] && stages=("${ALL[@]}")
for s in "${stages[@]}"; do
  case " ${ALL[*]} " in *" $s "*) ;; *)
    echo "usage: bash benchmarks/run_gpu.sh [--dry-run] [all | STAGE...] (stages: ${ALL[*]}; default quick)" >&2
    exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-330}  # seconds per stage: rows not started by then are skipped, and each stage still writes its table
out=${OUT:-out/gpu$([ $dry = 1 ] && echo -dry-run)}
mkdir -p "$out"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/lit_gpt_compile_cache/inductor}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/lit_gpt_compile_cache/triton}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
tiny=() compile=() kernels=() tests=()
data_tok=(--vocab_size 32000) data_run=(--formats jsonl.zst parquet --repeat 8 --trials 2 --workers 1 2 4 8 15)
# ~170 s on 16 cores: 6 copies of the prose (~100 batches a format, so 15 workers get ~6 each)
prose_tok=() prose_run=(--formats parquet jsonl.zst --repeat 6 --trials 1 --workers 1 4 8 15)
if [ $dry = 1 ]; then
  tiny=(--tiny) compile=(--compile-backend aot_eager) kernels=(--no-compile) tests=(-m cuda)
  data_tok=(--vocab_size 1000 --sample_docs 100) data_run=(--formats parquet --repeat 1 --trials 1 --workers 1)
  prose_tok=(--vocab_size 1000) prose_run=(--formats parquet --repeat 1 --trials 1 --workers 1)
  imports=$(mktemp -d) && trap 'rm -rf "$imports"' EXIT
  export PYTHONPATH=$PWD/benchmarks/import_log:$PYTHONPATH  # its sitecustomize records each process's imports
else
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "error: could not install the wheels in .whl/" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
  "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null \
    || { echo "error: benchmarks/run_gpu.sh needs torch with a CUDA GPU ($PY sees none; --dry-run rehearses on the CPU)" >&2; exit 1; }
fi

BEST=("lit_gpt kernels+compile" "lit_gpt kernels+compile fsdp")
throughput() {  # STAGE ARGS...: benchmarks/train_throughput.py writing STAGE.json and STAGE.md after every row
  local stage=$1; shift
  "$PY" benchmarks/train_throughput.py "$@" "${tiny[@]}" "${compile[@]}" --budget "$BUDGET" \
    --json "$out/$stage.json" --md "$out/$stage.md" 2>&1 | tee "$out/$stage.log"
}

run_stage() {
  case "$1" in
    quick)
      "$PY" benchmarks/quick.py --out "$out" --budget "$BUDGET" "${tiny[@]}" "${compile[@]}" 2>&1 | tee "$out/quick.log" ;;
    peers)
      throughput peers --variants "hf liger" "hf compile" "hf eager" "litgpt eager" --micro-batches 16 --no-breakdown ;;
    tinyllama)
      throughput tinyllama --model TinyLlama-1.1B --micro-batches 8 --no-breakdown \
        --variants "lit_gpt kernels+compile fsdp" "lit_gpt kernels+compile" "litgpt compile" ;;
    kernels)
      timeout "$BUDGET" "$PY" benchmarks/kernels.py "${tiny[@]}" "${kernels[@]}" 2> "$out/kernels.log" | tee "$out/kernels.md" ;;
    sweep)
      throughput sweep --variants "${BEST[@]}" --micro-batches 8 32 --no-breakdown ;;
    autotune)
      throughput autotune --variants "lit_gpt kernels+compile" "lit_gpt compile" --micro-batches 16 \
        --compile-mode max-autotune-no-cudagraphs --no-breakdown ;;
    micro)
      throughput micro --variants "lit_gpt compile" "lit_gpt kernels" "lit_gpt eager" --micro-batches 16 ;;
    accelerators)  # rows whose package is missing or fails its start-up probe are skipped, saying why
      throughput accelerators --variants "lit_gpt kernels+compile" "lit_gpt kernels+compile xformers" \
        "lit_gpt kernels+compile xformers swiglu" "lit_gpt kernels+compile flash_attn3" \
        "lit_gpt kernels+compile flash_attn" --micro-batches 16 --no-breakdown ;;
    checkpoint)  # MicroLlama-300M's 3.6 GB state saved at once vs in the background, against no save
      timeout "$BUDGET" "$PY" benchmarks/checkpoint_cost.py --accelerator cuda --precision bf16-mixed \
        --model_name MicroLlama-300M --block_size 2048 --micro_batch_size 8 "${tiny[@]}" \
        2> "$out/checkpoint.log" | tee "$out/checkpoint.md" ;;
    data)  # the data pipeline's scaling over the machine's 16 cores (the test VM has 2). Real prose when the
           # Python docs' .deb is there (fetch_wheels.sh puts it in .whl/; PROSE_DEB names another, PROSE_DEB= none)
           # with its 32k byte-level BPE and Llama-2-style sentencepiece tokenizers (benchmarks/prose_corpus.py);
           # else the bundled sample with its 4096-piece sentencepiece model and a byte-level BPE trained here
      local tok deb status; tok=$(mktemp -d); deb=${PROSE_DEB-$(compgen -G ".whl/python3.11-doc_*.deb" | head -1)}
      if [ -n "$deb" ]; then
        timeout "$BUDGET" "$PY" benchmarks/prose_corpus.py "$deb" --out "$tok/prose" --tokenizers "$tok/tok" \
          "${prose_tok[@]}" > "$out/data.log" 2>&1 \
          && timeout "$BUDGET" "$PY" benchmarks/prepare_throughput.py --sample "$tok/prose" --tokenizer_dir "$tok"/tok/bpe*k \
            "$tok/tok/llama2-sp" "${prose_run[@]}" 2>> "$out/data.log" | tee "$out/data.md"
      else
        "$PY" scripts/train_tokenizer.py --source_path data/sample_slimpajama --include train --kind bytelevel \
          "${data_tok[@]}" --out_dir "$tok/bpe" > "$out/data.log" 2>&1 \
          && timeout "$BUDGET" "$PY" benchmarks/prepare_throughput.py --tokenizer_dir data/tokenizer "$tok/bpe" \
            "${data_run[@]}" 2>> "$out/data.log" | tee "$out/data.md"
      fi
      status=$?; rm -rf "$tok"; return "$status" ;;
    tests)
      timeout "$BUDGET" "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" tests/test_kernels.py \
        tests/test_trainer_cuda.py tests/test_model.py 2>&1 | tee "$out/tests.log" ;;
  esac
}

[ $dry = 1 ] && export LIT_GPT_IMPORT_LOG=$imports/environment
"$PY" benchmarks/gpu_check.py env "${tiny[@]}" 2>&1 | tee "$out/environment.txt"  # versions, results folder
status=0
for s in "${stages[@]}"; do
  echo "== $s (started $(date -u +%H:%M:%S))" >&2
  [ $dry = 1 ] && export LIT_GPT_IMPORT_LOG=$imports/$s
  SECONDS=0
  run_stage "$s" || { status=1; echo "error: stage $s failed" >&2; }
  echo "== $s took ${SECONDS}s" >&2
done
if [ $dry = 1 ]; then
  unset LIT_GPT_IMPORT_LOG
  "$PY" benchmarks/device_image.py "$imports" || status=1
fi
exit $status
