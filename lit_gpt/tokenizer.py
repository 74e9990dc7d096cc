"""One `Tokenizer` over a sentencepiece `tokenizer.model` or a Hugging Face `tokenizer.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from lit_gpt.utils import first_line


class Tokenizer:
    """`path` is a tokenizer folder (holding `tokenizer.model` or `tokenizer.json`) or one of those files.

    The ids are the file's own: sentencepiece's, or the `tokenizers` pipeline tokenizer.json spells out (special
    tokens in a text included). tokenizer_config.json only names BOS and EOS; its `tokenizer_class`, `legacy` and
    `add_prefix_space`, with which transformers' Llama classes rebuild the pre-tokenizer, are not read. These are the
    ids the training data is prepared with, so they define the model's tokenization: the Hugging Face export pins
    AutoTokenizer to them (`lit_gpt.convert.write_hf_tokenizer`), not the other way round.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer not found")
        folder = path if path.is_dir() else path.parent
        if path.is_dir():
            spm, hf = path / "tokenizer.model", path / "tokenizer.json"
            if spm.is_file():
                path = spm
            elif hf.is_file():
                path = hf
            else:
                raise FileNotFoundError(f"{path}: no tokenizer.model or tokenizer.json in this folder")
        self.path = path
        self.folder = folder
        if path.suffix == ".json":
            self.backend = "huggingface"
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self.processor = HFTokenizer.from_file(str(path))
            except Exception as e:
                raise ValueError(f"{path}: unreadable tokenizer.json ({first_line(e)})") from None
            self.bos_id = self._special_id(folder, "bos_token")
            self.eos_id = self._special_id(folder, "eos_token")
            self.vocab_size = self.processor.get_vocab_size(with_added_tokens=True)
        else:
            self.backend = "sentencepiece"
            import sentencepiece as spm

            try:
                self.processor = spm.SentencePieceProcessor(model_file=str(path))
            except Exception as e:
                raise ValueError(f"{path}: unreadable sentencepiece model ({first_line(e)})") from None
            self.bos_id = _none_if_negative(self.processor.bos_id())
            self.eos_id = _none_if_negative(self.processor.eos_id())
            self.vocab_size = self.processor.vocab_size()

    def _special_id(self, folder: Path, key: str) -> Optional[int]:
        """bos/eos from tokenizer_config.json (a string, an AddedToken dict or null), else config.json's *_token_id."""
        cfg = folder / "tokenizer_config.json"
        if cfg.is_file():
            cfg = json.loads(cfg.read_text())
            if key in cfg:  # null says there is none, as transformers reads it
                token = cfg[key]
                token = token.get("content") if isinstance(token, dict) else token
                return None if token is None else self.processor.token_to_id(token)
        model_cfg = folder / "config.json"
        if model_cfg.is_file():
            value = json.loads(model_cfg.read_text()).get(f"{key}_id")
            return value[0] if isinstance(value, list) else value
        return None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if self.backend == "huggingface":
            ids = self.processor.encode(text, add_special_tokens=False).ids
        else:
            ids = self.processor.encode(text)
        if bos:
            if self.bos_id is None:
                raise ValueError(f"{self.path}: tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        if eos:
            if self.eos_id is None:
                raise ValueError(f"{self.path}: tokenizer has no EOS token")
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes many texts at once without special tokens (faster than a Python loop for both backends)."""
        if self.backend == "huggingface":
            return [e.ids for e in self.processor.encode_batch(texts, add_special_tokens=False)]
        return self.processor.encode(texts)

    def decode(self, ids: list[int]) -> str:
        if self.backend == "huggingface":
            return self.processor.decode(list(ids), skip_special_tokens=False)
        return self.processor.decode(list(ids))


def _none_if_negative(i: int) -> Optional[int]:
    return None if i < 0 else i
