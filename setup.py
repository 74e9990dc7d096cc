from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="lit_gpt",
    version="0.1.0",
    description="Pretrain small Llama-style language models from scratch under Lightning Fabric",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lit_gpt", "lit_gpt.*"]),
    install_requires=[
        "torch>=2.5",  # CPU: `pip install torch==2.13.0` first; the GPU image ships 2.11
        "lightning>=2.4",
        "jsonargparse[signatures]>=4.30",
        "sentencepiece",
        "tokenizers>=0.19",
        "safetensors",
        "numpy",
        "zstandard",
        "xxhash",  # checkpoint checksums (lit_gpt/checkpoint.py)
        "huggingface_hub>=0.23",
        "tensorboard",
    ],
    extras_require={
        "data": ["datasets>=2.18", "pyarrow>=14"],  # parquet corpora (lit_gpt/data/formats.py)
        "hf": ["transformers>=4.44"],
        "eval": ["lm-eval>=0.4.2", "transformers>=4.44", "accelerate"],
        "plot": ["matplotlib"],
        "kernels": ["triton>=3.6"],  # 3.6 ships with torch 2.11; kernels AOT-compile for sm_80/89/90 with 3.6 and 3.9
        "flash": ["flash-attn>=2.5"],
        # xformers 0.0.35 is one wheel for CUDA 12.8 builds of torch >= 2.10 (pip keeps a torch that satisfies it):
        # on a CPU build it installs and imports, its compiled part does not load, and attention falls back (one
        # line at start-up). flash-attn 3 (LIT_GPT_ATTENTION=flash_attn3, Hopper) has no PyPI wheel: build it from
        # flash-attention's hopper/ folder (`cd hopper && python setup.py install`); it imports as flash_attn_interface.
        "xformers": ["xformers>=0.0.35", "torch>=2.10"],
        "test": [
            "pytest", "transformers>=4.44", "lm-eval>=0.4.2", "accelerate", "datasets>=2.18", "matplotlib",
            "triton>=3.7",  # the CPU interpreter the kernel tests use: 3.6's cannot loop over a scalar argument
        ],
    },
)
