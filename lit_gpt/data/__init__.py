"""Corpus preparation: sources (local, http, Hugging Face) and the tokenizing pipeline into packed chunks."""
