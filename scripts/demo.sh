#!/usr/bin/env bash
# `make demo`: the whole pipeline on the bundled sample corpus, on CPU, in a few minutes on 2 cores:
#   tokenize (train + validation) -> pretrain the "debug" model with 2 processes under FSDP (`fabric run`)
#   -> loss curve PNG -> export to a Hugging Face folder -> generate a sample -> print where everything went.
# Everything lands in out/demo/ (`make clean` removes it). VENV picks the virtual environment (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; FABRIC="$VENV/bin/fabric"; else PY=python3; FABRIC=fabric; fi
OUT=out/demo
START=$(date +%s)
step() { printf '\n==== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "1/5 tokenizing the sample corpus (data/sample_slimpajama) with data/tokenizer"
for split in train validation; do
  "$PY" scripts/prepare_slimpajama.py --source_path data/sample_slimpajama --split "$split" \
    --tokenizer_dir data/tokenizer --destination "$OUT/data/$split" --chunk_size 65536 --num_workers 2
done

step "2/5 pretraining the debug model: 2 CPU processes, FSDP (fabric run)"
rm -rf "$OUT/train"  # a fresh run each time; `--resume auto` would continue instead
"$FABRIC" run --accelerator cpu --devices 2 pretrain/debug.py --config configs/debug.yaml \
  --train_data_dir "$OUT/data/train" --val_data_dir "$OUT/data/validation" --out_dir "$OUT/train"
"$PY" scripts/plot_metrics.py "$OUT/train"

step "3/5 exporting the last checkpoint to a Hugging Face Llama folder"
"$PY" scripts/convert_lit_to_hf.py "$OUT/train" "$OUT/hf" --overwrite

step "4/5 generating a sample from the exported model"
"$PY" scripts/generate.py --checkpoint "$OUT/hf" --prompt "The history of the" --max_new_tokens 48 \
  --temperature 0.8 --top_k 40 --seed 1234

step "5/5 summary"
"$PY" - "$OUT/train/metrics.csv" <<'EOF'
import sys
from lit_gpt.training.metrics import read_metrics
rows = read_metrics(sys.argv[1])
train = [r for r in rows if r["loss"] is not None]
val = [r for r in rows if r["val_loss"] is not None]
last = train[-5:]  # single logged steps are noisy: average the last few
print(f"train loss: step {train[0]['step']:.0f} {train[0]['loss']:.3f} -> steps {last[0]['step']:.0f}-"
      f"{last[-1]['step']:.0f} {sum(r['loss'] for r in last) / len(last):.3f} (mean of {len(last)} logs)")
if val:
    print("validation loss: " + " -> ".join(f"{r['val_loss']:.3f}" for r in val))
print(f"throughput (last log): {train[-1]['tokens_per_s']:.0f} tokens/s over 2 processes")
EOF
cat <<EOF
data (packed chunks):   $OUT/data/{train,validation}/
training run:           $OUT/train/  (metrics.csv, tensorboard/, checkpoints/step-*/state/ = sharded FSDP)
loss curve:             $OUT/train/metrics.png
Hugging Face export:    $OUT/hf/  (transformers.AutoModelForCausalLM.from_pretrained("$OUT/hf"))
total time:             $(( $(date +%s) - START ))s
next: tensorboard --logdir $OUT/train/tensorboard ; python pretrain/microllama.py --help ; docs/training.md
EOF
