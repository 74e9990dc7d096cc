"""Data: the packed chunk format and loader (packed.py), corpus sources (sources.py: local, http, Hugging Face) and
the tokenizing pipeline that turns a corpus into packed chunks (prepare.py)."""
