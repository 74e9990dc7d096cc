"""Where corpus files come from: a local folder, a plain http(s) server, or a Hugging Face dataset repo.

Every source lists the files of one split as names relative to its root (`train/chunk1/example_train_0.jsonl.zst`)
in the same natural order, and fetches a file's bytes whole, in memory, so a half-downloaded file is never read.
"""

from __future__ import annotations

import html.parser
import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

import zstandard

from lit_gpt.utils import first_line

SUFFIXES = (".jsonl.zst", ".jsonl")


class DataError(Exception):
    """A problem with the input that ends the run with a one-line message."""


def natural_key(name: str) -> list:
    """`chunk2` before `chunk10`, `example_train_9` before `example_train_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class LocalSource:
    remote = False  # fetching a damaged file again gives the same bytes

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def list_split(self, split: str) -> list[str]:
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
        names = [p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)]
        return sorted(names, key=natural_key)

    def fetch(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as e:
            raise DataError(f"{self.root / name}: {e.strerror}") from None


class HttpSource:
    """Files under a base URL. The list of a split comes from `file_list` (a URL or local path of a text file with one
    relative name per line) when given, else from crawling the HTML directory indexes that static servers generate
    (`python -m http.server`, nginx autoindex, Apache) from `{base_url}/{split}/` down."""

    remote = True  # a file that arrives damaged is downloaded once more: a transfer error looks like a bad file

    def __init__(self, base_url: str, file_list: Optional[str] = None, headers: Optional[dict] = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.file_list = file_list
        self.headers = headers or {}
        self.retries, self.backoff, self.timeout = retries, backoff, timeout

    def describe(self) -> str:
        return self.base_url

    def url(self, name: str) -> str:
        return urllib.parse.urljoin(self.base_url, urllib.parse.quote(name))

    def list_split(self, split: str) -> list[str]:
        if self.file_list:
            if re.match(r"https?://", self.file_list):
                text = self.get(self.file_list).decode("utf-8")
            else:
                text = Path(self.file_list).read_text()
            names = [line.strip().lstrip("./") for line in text.splitlines()]
            names = [n for n in names if n.startswith(f"{split}/") and n.endswith(SUFFIXES)]
        else:
            names = self._crawl(f"{split}/")
        if not names:
            raise DataError(f"{self.url(split + '/')}: no .jsonl.zst or .jsonl files listed")
        return sorted(names, key=natural_key)

    def _crawl(self, folder: str) -> list[str]:
        page = self.get(self.url(folder)).decode("utf-8", errors="replace")
        names = []
        for href in _links(page):
            target = urllib.parse.unquote(urllib.parse.urlsplit(href).path)
            if href.startswith(("?", "#", "/", "..")) or "://" in href or not target:
                continue
            if target.endswith("/"):
                names += self._crawl(folder + target)
            elif target.endswith(SUFFIXES):
                names.append(folder + target)
        return names

    def fetch(self, name: str) -> bytes:
        return self.get(self.url(name))

    def get(self, url: str) -> bytes:
        """The whole body; retried with exponential backoff on network errors, short reads and HTTP 404/429/5xx."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(60.0, self.backoff * 2 ** (attempt - 1)))
            try:
                request = urllib.request.Request(url)
                for key, value in self.headers.items():  # the token goes to the Hub only, not to where it redirects
                    if key.lower() == "authorization":
                        request.add_unredirected_header(key, value)
                    else:
                        request.add_header(key, value)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()  # raises IncompleteRead when the body is shorter than Content-Length
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code in (401, 403):
                    raise DataError(f"{url}: {last} (set HF_TOKEN or check access)") from None
                if e.code not in (404, 408, 429) and e.code < 500:
                    break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise DataError(f"{url}: {last} after {attempt + 1} attempts")


class HuggingFaceSource(HttpSource):
    """A dataset repo on the Hugging Face Hub (or the mirror in HF_ENDPOINT), token from HF_TOKEN or the login."""

    def __init__(self, repo_id: str, revision: str = "main", endpoint: Optional[str] = None, **kwargs) -> None:
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        self.repo_id, self.revision = repo_id, revision
        self.endpoint = endpoint or constants.ENDPOINT  # HF_ENDPOINT when set
        base = hf_hub_url(repo_id, "x", repo_type="dataset", revision=revision, endpoint=self.endpoint)[:-1]
        super().__init__(base, headers=build_hf_headers(), **kwargs)

    def describe(self) -> str:
        return f"hf://datasets/{self.repo_id}@{self.revision} ({self.base_url})"

    def list_split(self, split: str) -> list[str]:
        from huggingface_hub import HfApi

        try:
            api = HfApi(endpoint=self.endpoint)
            files = api.list_repo_files(self.repo_id, repo_type="dataset", revision=self.revision)
        except Exception as e:
            raise DataError(f"{self.describe()}: cannot list files ({first_line(e)})") from None
        names = [n for n in files if n.startswith(f"{split}/") and n.endswith(SUFFIXES)]
        if not names:
            raise DataError(f"{self.describe()}: no .jsonl.zst or .jsonl files under {split}/")
        return sorted(names, key=natural_key)


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]


def _links(page: str) -> list[str]:
    parser = _LinkParser()
    parser.feed(page)
    return parser.links


def decompress(name: str, raw: bytes) -> tuple[bytes, Optional[str]]:
    """The text bytes of a file, and what is wrong with it (None when it is whole). A .zst cut short keeps what
    decodes before the cut; a corrupt frame keeps nothing from that frame on (its data is only known good once the
    frame ends and its checksum, when it has one, matches)."""
    if not name.endswith(".zst"):
        return raw, None
    out, offset = [], 0
    while offset < len(raw):  # a file may hold several zstd frames
        obj = zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(obj.decompress(raw[offset:]))
        except zstandard.ZstdError as e:
            return b"".join(out), (f"corrupt: {len(raw) - offset:,} of {len(raw):,} compressed bytes unreadable "
                                   f"({first_line(e)})")
        if not obj.eof:
            return b"".join(out), f"truncated: ends inside a zstd frame after {len(raw):,} bytes, the rest is missing"
        offset = len(raw) - len(obj.unused_data)
    return b"".join(out), None
