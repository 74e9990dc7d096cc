"""Where corpus files come from: a local folder, a plain http(s) server, or a Hugging Face dataset repo.

Every source lists the files that `include` / `exclude` globs select as names relative to its root
(`train/chunk1/example_train_0.jsonl.zst`), in the same natural order, and hands a file over only once it is whole
on disk: a local file as it is, a remote one downloaded to a temporary name and renamed when complete.

Globs: `*` and `?` stay within one folder, `**` spans folders, and a pattern that names a folder selects
everything below it (`train` = `train/**`).
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from lit_gpt.data.formats import SUFFIXES, DataError
from lit_gpt.utils import first_line

__all__ = ["DataError", "LocalSource", "HttpSource", "HuggingFaceSource", "natural_key", "select"]


def natural_key(name: str) -> list:
    """`chunk2` before `chunk10`, `example_train_9` before `example_train_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def _matches(regexes: list, name: str) -> bool:
    parts = name.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]  # the file and each folder above it
    return any(r.fullmatch(c) for r in regexes for c in candidates)


def select(names: Sequence[str], include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """The corpus files (by suffix) among `names` that an include pattern and no exclude pattern matches, sorted."""
    inc, exc = [_glob_regex(p.strip("/")) for p in include], [_glob_regex(p.strip("/")) for p in exclude]
    kept = {n for n in names if n.endswith(SUFFIXES) and _matches(inc, n) and not _matches(exc, n)}
    return sorted(kept, key=natural_key)


def folders(include: Sequence[str]) -> list[str]:
    """The folders worth listing: each pattern's leading components without glob characters ("" = the root)."""
    out = []
    for pattern in include:
        parts = pattern.strip("/").split("/")
        fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if re.search(r"[*?\[]", p)), len(parts))]]
        if fixed == parts and fixed and "." in fixed[-1]:  # a file name: list its folder
            fixed = fixed[:-1]
        out.append("/".join(fixed))
    return sorted(set(out))


class LocalSource:
    remote = False  # reading a damaged file again gives the same bytes

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def list_files(self, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
        names = []
        for folder in folders(include):
            top = self.root / folder
            if not top.is_dir():
                raise DataError(f"{top}: no such folder")
            names += [p.relative_to(self.root).as_posix() for p in top.rglob("*") if p.is_file()]
        return select(names, include, exclude)

    def local_copy(self, name: str, folder: Path) -> Path:
        path = self.root / name
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return path


class HttpSource:
    """Files under a base URL. The list comes from `file_list` (a URL or local path of a text file with one
    relative name per line) when given, else from crawling the HTML directory indexes that static servers generate
    (`python -m http.server`, nginx autoindex, Apache) from the folders the include patterns name down."""

    remote = True  # a file that arrives damaged is downloaded once more: a transfer error looks like a bad file

    def __init__(self, base_url: str, file_list: Optional[str] = None, headers: Optional[dict] = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.file_list = file_list
        self.headers = headers or {}
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.sha256: dict[str, str] = {}  # name -> the digest the server lists for it (the Hub's LFS files)

    def describe(self) -> str:
        return self.base_url

    def url(self, name: str) -> str:
        return urllib.parse.urljoin(self.base_url, urllib.parse.quote(name))

    def list_files(self, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
        if self.file_list:
            if re.match(r"https?://", self.file_list):
                text = self.get(self.file_list).decode("utf-8")
            else:
                text = Path(self.file_list).read_text()
            names = [line.strip().lstrip("./") for line in text.splitlines()]
        else:
            names = [n for folder in folders(include) for n in self._crawl(f"{folder}/" if folder else "")]
        names = select(names, include, exclude)
        if not names:
            raise DataError(f"{self.base_url}: no {', '.join(SUFFIXES)} files match {' '.join(include)}")
        return names

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

    def local_copy(self, name: str, folder: Path) -> Path:
        """Downloads `name` into `folder` under a temporary name, renamed once the whole body has arrived (and, where
        the server lists a sha256, matches it: a transfer that damaged bytes is downloaded again)."""
        path = folder / name.replace("/", "__")
        part = path.with_name(path.name + ".part")

        def save(response) -> None:
            digest = hashlib.sha256() if name in self.sha256 else None
            with open(part, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
                    if digest is not None:  # hashed as it arrives: no second pass over a 2 GB file
                        digest.update(block)
            expected = response.headers.get("Content-Length")
            if expected is not None and os.path.getsize(part) != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - os.path.getsize(part))
            if digest is not None and digest.hexdigest() != self.sha256[name]:
                raise http.client.HTTPException(f"sha256 {digest.hexdigest()[:12]}... differs from the listed "
                                                f"{self.sha256[name][:12]}... (damaged in transfer)")
            os.replace(part, path)

        self._request(self.url(name), save)
        return path

    def get(self, url: str) -> bytes:
        return self._request(url, lambda response: response.read())

    def _request(self, url: str, handle):
        """handle(response), retried with exponential backoff on network errors, short reads, HTTP 404/429/5xx."""
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
                    return handle(response)  # read() raises IncompleteRead when the body is short
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
    """A dataset repo on the Hugging Face Hub (or the mirror in HF_ENDPOINT), token from HF_TOKEN or the login.
    Files are listed with the Hub's tree API under the folders the include patterns name; `config` adds the
    patterns the repo's README gives that config (its `configs: - config_name: ... data_files:` card metadata)."""

    def __init__(self, repo_id: str, revision: str = "main", endpoint: Optional[str] = None,
                 config: Optional[str] = None, config_split: str = "train", **kwargs) -> None:
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        self.repo_id, self.revision, self.config, self.config_split = repo_id, revision, config, config_split
        self.endpoint = endpoint or constants.ENDPOINT  # HF_ENDPOINT when set
        base = hf_hub_url(repo_id, "x", repo_type="dataset", revision=revision, endpoint=self.endpoint)[:-1]
        super().__init__(base, headers=build_hf_headers(), **kwargs)

    def describe(self) -> str:
        return f"hf://datasets/{self.repo_id}@{self.revision} ({self.base_url})"

    def list_files(self, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
        from huggingface_hub import HfApi

        include = list(include) + (self.config_patterns() if self.config else [])
        names = []
        api = HfApi(endpoint=self.endpoint)
        for folder in folders(include):
            try:
                tree = api.list_repo_tree(self.repo_id, path_in_repo=folder or None, recursive=True,
                                          repo_type="dataset", revision=self.revision)
                files = [entry for entry in tree if hasattr(entry, "size")]  # files, not folders
            except Exception as e:
                raise DataError(f"{self.describe()}: cannot list {folder or 'the root'} ({first_line(e)})") from None
            names += [entry.path for entry in files]
            self.sha256.update({entry.path: entry.lfs.sha256 for entry in files if getattr(entry, "lfs", None)})
        names = select(names, include, exclude)
        if not names:
            raise DataError(f"{self.describe()}: no {', '.join(SUFFIXES)} files match {' '.join(include)}")
        return names

    def config_patterns(self) -> list[str]:
        import yaml

        card = self.get(self.url("README.md")).decode("utf-8")
        header = re.match(r"---\n(.*?)\n---", card, re.S)
        configs = (yaml.safe_load(header[1]) or {}).get("configs", []) if header else []
        found = [c for c in configs if c.get("config_name") == self.config]
        if not found:
            names = ", ".join(str(c.get("config_name")) for c in configs) or "none"
            raise DataError(f"{self.describe()}: no config {self.config!r} in README.md (configs: {names})")
        files = found[0].get("data_files", [])
        files = [files] if isinstance(files, (str, dict)) else files
        patterns = []
        for entry in files:
            if isinstance(entry, dict):
                if entry.get("split", "train") != self.config_split:
                    continue
                entry = entry.get("path", [])
            patterns += [entry] if isinstance(entry, str) else list(entry)
        if not patterns:
            raise DataError(f"{self.describe()}: config {self.config!r} has no {self.config_split!r} files")
        return patterns


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
