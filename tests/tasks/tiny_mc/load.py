"""Loads tiny_mc.jsonl from beside this file (lm-eval resolves `data_files` against the working directory)."""

from pathlib import Path


def tiny_mc(**kwargs):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).with_name("tiny_mc.jsonl"))})
