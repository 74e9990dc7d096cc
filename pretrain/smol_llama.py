"""Pretrain smol-llama-360M (32 layers, 960 wide, GQA 15/5, tied embeddings) on FineWeb-Edu with its own 49,152-piece
tokenizer: the recipe's defaults, then the shared loop. The data and tokenizer steps are in docs/data.md:

    python scripts/train_tokenizer.py --hf_repo HuggingFaceFW/fineweb-edu --include sample/10BT/001_00000.parquet \
        --vocab_size 49152 --model_name smol-llama-360M --out_dir data/fineweb_edu_tokenizer
    python scripts/prepare_data.py --hf_repo HuggingFaceFW/fineweb-edu --include 'sample/10BT/*.parquet' \
        --exclude sample/10BT/000_00000.parquet --tokenizer_dir data/fineweb_edu_tokenizer \
        --destination data/fineweb_edu --prefix train
    python scripts/prepare_data.py --hf_repo HuggingFaceFW/fineweb-edu --include sample/10BT/000_00000.parquet \
        --max_tokens 20000000 --tokenizer_dir data/fineweb_edu_tokenizer --destination data/fineweb_edu --prefix validation
    fabric run --devices 4 pretrain/smol_llama.py --config configs/smol_llama.yaml
"""

from pathlib import Path

from lit_gpt.training import TrainArgs, cli

# The shape is lit_gpt.config's smol-llama-360M; its vocab_size (49,152, a multiple of 64 already) and BOS/EOS ids
# come from the model_config.json that scripts/train_tokenizer.py --model_name writes beside the tokenizer.
# Optimizer, schedule and batch (48 x 2048 tokens) are TrainArgs' defaults; one pass over the ~10B-token sample.
DEFAULTS = TrainArgs(
    model_name="smol-llama-360M",
    model_config=Path("data/fineweb_edu_tokenizer/model_config.json"),
    tokenizer_dir=Path("data/fineweb_edu_tokenizer"),
    train_data_dir=Path("data/fineweb_edu"),
    train_prefixes=["train"],
    val_data_dir=Path("data/fineweb_edu"),
    val_prefix="validation",
    out_dir=Path("out/smol_llama"),
    max_tokens=10_000_000_000,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain smol-llama-360M on FineWeb-Edu under Lightning Fabric.")
