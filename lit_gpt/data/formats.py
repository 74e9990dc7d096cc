"""Corpus file formats: how a file becomes batches of rows, and which rows become documents.

A file is cut into batches in the main process (cheaply: text lines at line ends, a parquet file by row group from
its footer alone) and each batch is read in a tokenizer process, so JSON parsing and parquet decoding run in
parallel and only token ids come back. A parquet batch is one row group read from the file on disk, with only the
columns the options need: memory stays bounded whatever the file size.

Formats: .jsonl, .jsonl.zst (.zstd), .jsonl.gz, .json.gz (one JSON object a line), .parquet.
"""

from __future__ import annotations

import gzip
import json
import operator
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import zstandard

from lit_gpt.utils import first_line

TEXT_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.zstd", ".jsonl.gz", ".json.gz")
SUFFIXES = TEXT_SUFFIXES + (".parquet",)
BATCH_BYTES = 1 << 20


class DataError(Exception):
    """A problem with the input that ends the run with a one-line message."""


def is_parquet(name: str) -> bool:
    return name.endswith(".parquet")


# ----------------------------------------------------------------------------------------------------------------
# Filters: `field op value`, parsed, never evaluated as code


_OPS: dict[str, Callable[[Any, Any], bool]] = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge,
                                               "<=": operator.le, ">": operator.gt, "<": operator.lt}
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Filter:
    """Keeps a row whose `field` (dotted for nested objects: meta.source) compares true with `value`. A number
    compares with numbers only, a string with strings only (== and != only); a row without the field, or with a
    value of the other kind, is filtered out."""

    field: str
    op: str
    value: Any

    @classmethod
    def parse(cls, expression: str) -> "Filter":
        match = _FILTER.match(expression)
        if not match or not match[3]:
            raise DataError(f"filter {expression!r}: expected `field op value` with op one of {' '.join(_OPS)}")
        field, op, text = match.groups()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            value: Any = text[1:-1]  # quoted: always a string
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        if isinstance(value, str) and op not in ("==", "!="):
            raise DataError(f"filter {expression!r}: {op} needs a number; strings compare with == or != only")
        return cls(field, op, value)

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"

    def keeps(self, row: dict) -> bool:
        value = lookup(row, self.field)
        if isinstance(self.value, str):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and _OPS[self.op](value, self.value)


def lookup(row: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


# ----------------------------------------------------------------------------------------------------------------
# Rows -> documents


@dataclass(frozen=True)
class RowReader:
    """Which rows become documents and under which set name they are counted.

    text_field: the column/key holding the text (The Stack: content). filters: rows failing one are counted per
    filter and left out. set_field: a dotted field naming the row's subset (SlimPajama: meta.redpajama_set_name;
    "unknown" when absent), else every document counts under "all". skip_sets: set names to leave out."""

    text_field: str = "text"
    filters: tuple = ()  # of Filter
    set_field: Optional[str] = None
    skip_sets: tuple = ()

    def options(self) -> dict:
        """What the manifest binds a resumed run to."""
        return {"text_field": self.text_field, "filters": [str(f) for f in self.filters],
                "set_field": self.set_field, "skip_sets": sorted(self.skip_sets)}

    def columns(self) -> list[str]:
        """The top-level columns a parquet reader needs."""
        fields = [self.text_field, *(f.field for f in self.filters)] + ([self.set_field] if self.set_field else [])
        return list(dict.fromkeys(f.split(".")[0] for f in fields))

    def take(self, row: Any, where: str, stats, texts: list, sets: list) -> None:
        """Appends the row's text and set to `texts` and `sets`, or counts why it is left out."""
        text = lookup(row, self.text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            stats.add_bad("no text field", where)
            return
        for f in self.filters:
            if not f.keeps(row):
                stats.filtered[str(f)] += 1
                return
        set_name = "all"
        if self.set_field:
            value = lookup(row, self.set_field)
            set_name = "unknown" if value is None else str(value)
        if set_name in self.skip_sets:
            stats.skipped[set_name] += 1
            return
        texts.append(text)
        sets.append(set_name)


def read_batch(batch: tuple, reader: RowReader, stats) -> tuple[list, list]:
    """Texts and set names of one batch's usable rows; bad rows are counted in `stats` with where they were."""
    texts: list = []
    sets: list = []
    if batch[0] == "lines":
        _, name, first_line_no, blob = batch
        for i, line in enumerate(blob.split(b"\n")):
            if not line.strip():
                continue
            where = f"{name}:{first_line_no + i}"
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                stats.add_bad("invalid UTF-8", where)
                continue
            except ValueError:
                stats.add_bad("malformed JSON", where)
                continue
            reader.take(row, where, stats, texts, sets)
    else:
        _, name, path, group, first_row = batch
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path).read_row_group(group, columns=reader.columns())
        except Exception as e:  # a damaged page: this row group is lost, the others are kept
            stats.damaged_files[name] = f"row group {group} unreadable ({first_line(e)})"
            return texts, sets
        columns = {c: table.column(c).to_pylist() for c in table.column_names}
        for i in range(table.num_rows):
            reader.take({c: values[i] for c, values in columns.items()}, f"{name}:row {first_row + i}", stats, texts, sets)
    return texts, sets


# ----------------------------------------------------------------------------------------------------------------
# Files -> batches (main process)


def split_lines(name: str, data: bytes, size: int = BATCH_BYTES) -> list[tuple]:
    """("lines", name, first line number, bytes) pieces of about `size` bytes, cut at line ends."""
    batches, start, line = [], 0, 1
    while start < len(data):
        end = data.find(b"\n", min(start + size, len(data)) - 1)
        end = len(data) if end < 0 else end + 1
        batches.append(("lines", name, line, data[start:end]))
        line += data.count(b"\n", start, end)
        start = end
    return batches


def parquet_batches(name: str, path: str, reader: RowReader) -> tuple[list[tuple], Optional[str]]:
    """One ("parquet", name, path, row group, first row) batch per row group, and what is wrong with the file (its
    batches are then none: a file without its footer or the text column yields nothing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except Exception as e:
        return [], f"unreadable parquet ({first_line(e)})"
    column = reader.text_field.split(".")[0]
    if column not in schema.names:
        return [], f"no column {column!r} (columns: {', '.join(schema.names)}); name the text's with --text_field"
    kind = schema.field(column).type
    if "." not in reader.text_field and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return [], f"column {column!r} holds {kind}, not strings"
    batches, first_row = [], 0
    for group in range(meta.num_row_groups):
        batches.append(("parquet", name, path, group, first_row))
        first_row += meta.row_group(group).num_rows
    return batches, None


def fetch_file(source, name: str, folder: Path, reader: RowReader, log) -> tuple[int, list, Optional[str], Optional[Path]]:
    """(file size, batches, what is wrong with the file or None, the downloaded file to delete once its batches are
    read, or None). Only the readable part of a damaged file is batched: a text file's complete lines before the
    damage, none of a parquet file without its footer or text column."""
    for attempt in (1, 2):
        path = source.local_copy(name, folder)
        size = path.stat().st_size
        if is_parquet(name):
            batches, damage = parquet_batches(name, str(path), reader)
        else:
            data, damage = decompress(name, path.read_bytes())
            if source.remote:
                path.unlink()
            batches = split_lines(name, data[: data.rfind(b"\n") + 1] if damage else data)
        if not (damage and source.remote and attempt == 1):
            break
        log(f"warning: {name}: {damage}; downloading it again")  # a transfer error looks like a damaged file
    temporary = path if source.remote and is_parquet(name) else None
    return size, batches, damage, temporary


def iter_texts(source, names: Sequence[str], reader: RowReader, folder: Path, stats, log=lambda *a: None) -> Iterator[str]:
    """The text of each document the files `names` of `source` hold, in order, read in this process."""
    for name in names:
        _, batches, damage, temporary = fetch_file(source, name, folder, reader, log)
        if damage:
            stats.damaged_files[name] = damage
        try:
            for batch in batches:
                yield from read_batch(batch, reader, stats)[0]
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)


def decompress(name: str, raw: bytes) -> tuple[bytes, Optional[str]]:
    """The text bytes of a file, and what is wrong with it (None when it is whole). A file cut short keeps what
    decodes before the cut; a corrupt zstd frame or gzip member keeps nothing from it on (its data is only known
    good once it ends and its checksum, when it has one, matches)."""
    if name.endswith((".zst", ".zstd")):
        kind, new, errors = "zstd frame", lambda: zstandard.ZstdDecompressor().decompressobj(), zstandard.ZstdError
    elif name.endswith(".gz"):
        kind, new, errors = "gzip member", lambda: zlib.decompressobj(wbits=31), zlib.error
    else:
        return raw, None
    out: list = []
    offset = 0
    while offset < len(raw):  # a file may hold several frames/members
        obj = new()
        try:
            data = obj.decompress(raw[offset:])
        except errors as e:
            return b"".join(out), (f"corrupt: {len(raw) - offset:,} of {len(raw):,} compressed bytes unreadable "
                                   f"({first_line(e)})")
        out.append(data)
        if not obj.eof:
            return b"".join(out), f"truncated: ends inside a {kind} after {len(raw):,} bytes, the rest is missing"
        offset = len(raw) - len(obj.unused_data)
    return b"".join(out), None


def write_rows(path: Path, rows: Sequence[dict], row_group_size: int = 1000) -> None:
    """`rows` as one file of the format the suffix of `path` names (for tests, benchmarks and conversions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_parquet(path.name):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path, row_group_size=row_group_size)
        return
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    if path.name.endswith((".zst", ".zstd")):
        data = zstandard.ZstdCompressor().compress(data)
    elif path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def parse_filters(expressions: Sequence[str]) -> tuple:
    return tuple(Filter.parse(e) for e in expressions)
