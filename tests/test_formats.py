import functools
import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_gpt.data.formats import DataError, Filter, RowReader, decompress, parse_filters, write_rows
from lit_gpt.data.prepare import Stats, prepare
from lit_gpt.data.sources import HttpSource, HuggingFaceSource, LocalSource, select
from lit_gpt.tokenizer import Tokenizer
from tests.test_prepare import KILL_AT, SAMPLE, TOKENIZER, hub_handler, output, read_rows
from tests.test_prepare import server  # noqa: F401 (a fixture: serves this module's corpus)
from tests.test_prepare import cli as prepare_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
FORMATS = ("jsonl.zst", "jsonl", "jsonl.gz", "json.gz", "parquet")


def write(path: Path, rows: list, row_group_size: int = 5) -> None:
    write_rows(path, rows, row_group_size)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same 48 documents, as 3 files (the 2nd split 10/2 naturally: part-2 before part-10), in each format;
    FineWeb-Edu-like columns: text, id, int_score, score, language."""
    root = tmp_path_factory.mktemp("formats")
    texts = [r["text"] for split in ("validation", "test") for f in sorted(SAMPLE.glob(f"{split}/chunk1/*.zst"))
             for r in read_rows(f)][:48]
    assert len(texts) == 48
    rows = [{"text": t, "id": f"doc{i}", "int_score": i % 6, "score": i % 6 + 0.5, "language": "en" if i % 4 else "fr"}
            for i, t in enumerate(texts)]
    for fmt in FORMATS:
        for part, (a, b) in zip((1, 2, 10), ((0, 16), (16, 38), (38, 48))):
            write(root / fmt / f"part-{part}.{fmt}", rows[a:b])
    return root, rows


def expected_tokens(rows) -> np.ndarray:
    tok = Tokenizer(TOKENIZER)
    return np.concatenate([np.array(tok.encode(r["text"], eos=True), dtype=np.int64) for r in rows])


def run(source, dest, include, **kw):
    kw = {"chunk_size": 997, "num_workers": 1, "log": lambda *a: None, "prefix": "train", **kw}
    return prepare(source, include, TOKENIZER, dest, **kw)


def test_every_format_gives_the_same_chunks(corpus, server, tmp_path):
    root, rows = corpus
    reference = None
    for fmt in FORMATS:
        stats = run(LocalSource(root), tmp_path / fmt, fmt)
        tokens, files = output(tmp_path / fmt, "train")
        assert np.array_equal(tokens, expected_tokens(rows)), fmt
        assert stats.docs == {"all": 48} and stats.files == 3 and not stats.malformed
        reference = reference or files
        assert files == reference, fmt  # byte-identical chunks, same order
    run(LocalSource(root), tmp_path / "two", "parquet", num_workers=2)
    assert output(tmp_path / "two", "train")[1] == reference
    run(HttpSource(server[2]), tmp_path / "http", ["parquet/*.parquet"], num_workers=2, download_workers=2)
    assert output(tmp_path / "http", "train")[1] == reference
    assert not list((tmp_path / "http").glob(".*"))  # downloaded files deleted once read


def test_filters_and_text_field(corpus, tmp_path):
    root, rows = corpus
    keep = [r for r in rows if r["int_score"] >= 3 and r["language"] == "en"]
    reader = RowReader(filters=parse_filters(["int_score >= 3", "language == 'en'"]))
    for fmt in ("parquet", "jsonl.gz"):
        stats = run(LocalSource(root), tmp_path / fmt, fmt, reader=reader)
        assert np.array_equal(output(tmp_path / fmt, "train")[0], expected_tokens(keep)), fmt
        assert sum(stats.filtered.values()) == 48 - len(keep) and stats.filtered["int_score >= 3"] == 24
    stats = run(LocalSource(root), tmp_path / "ids", "parquet/part-1.parquet", reader=RowReader(text_field="id"))
    assert np.array_equal(output(tmp_path / "ids", "train")[0], expected_tokens([{"text": r["id"]} for r in rows[:16]]))


def test_filter_parsing():
    assert Filter.parse("int_score>=3") == Filter("int_score", ">=", 3)
    assert Filter.parse("meta.lang == 'en'") == Filter("meta.lang", "==", "en")
    assert Filter.parse('score < 2.5').value == 2.5 and Filter.parse("id == '3'").value == "3"
    f = Filter.parse("int_score >= 3")
    assert f.keeps({"int_score": 3}) and not f.keeps({"int_score": "9"}) and not f.keeps({}) and not f.keeps({"int_score": True})
    assert Filter.parse("meta.lang == en").keeps({"meta": {"lang": "en"}})
    for bad in ("__import__('os') == 1", "int_score >= ", "language >= en", "a ~ b", "len(text) > 3"):
        with pytest.raises(DataError, match="filter"):
            Filter.parse(bad)


def test_globs():
    names = ["sample/10BT/000_00000.parquet", "sample/10BT/sub/x.parquet", "sample/100BT/000.parquet",
             "data/CC-MAIN-2024-10/000.parquet", "README.md", "data/a.jsonl.zst", "data/b.jsonl.gz"]
    assert select(names, ["sample/10BT/*.parquet"]) == ["sample/10BT/000_00000.parquet"]
    assert select(names, ["sample/10BT"]) == ["sample/10BT/000_00000.parquet", "sample/10BT/sub/x.parquet"]
    assert select(names, ["**"], ["sample", "**/*.gz"]) == ["data/CC-MAIN-2024-10/000.parquet", "data/a.jsonl.zst"]
    assert select(names, ["data/**/*.parquet"]) == ["data/CC-MAIN-2024-10/000.parquet"]


def test_decompress_gzip():
    members = [gzip.compress(b'{"text": "%d"}\n' % i) for i in range(3)]
    assert decompress("a.jsonl.gz", b"".join(members))[0].count(b"\n") == 3
    data, damage = decompress("a.json.gz", members[0] + members[1][:-6])
    assert data.startswith(b'{"text": "0"}\n') and damage.startswith("truncated: ends inside a gzip member")
    assert decompress("a.jsonl.gz", b"not gzip")[1].startswith("corrupt: 8 of 8 compressed bytes")


def cli(*args) -> str:
    return prepare_cli(*args, script=SCRIPT)


def test_bad_parquet_inputs_are_counted_and_named(corpus, tmp_path, capsys):
    root, rows = corpus
    src = tmp_path / "src"
    write(src / "a_good.parquet", rows[:8], row_group_size=3)
    raw = (root / "parquet/part-1.parquet").read_bytes()
    (src / "b_truncated.parquet").write_bytes(raw[: len(raw) // 2])
    write(src / "c_no_text.parquet", [{"content": r["text"]} for r in rows[8:10]])
    write(src / "d_wrong_type.parquet", [{"text": i} for i in range(3)])
    write(src / "e_null.parquet", [{"text": rows[10]["text"]}, {"text": None}, {"text": rows[11]["text"]}])
    table = pa.Table.from_pylist([{"text": r["text"]} for r in rows[12:16]])
    with pq.ParquetWriter(src / "f_empty_group.parquet", table.schema) as w:  # row groups of 2, 0, 2 rows
        w.write_table(table.slice(0, 2))
        w.write_table(table.slice(0, 0))
        w.write_table(table.slice(2))
    write(src / "g.jsonl", [{"text": rows[16]["text"]}, {"text": 5}, {"id": 1}])
    args = ("--source_path", src, "--destination", tmp_path / "out", "--tokenizer_dir", TOKENIZER, "--num_workers", 2)
    lost = "error: data lost from 3 damaged source files: b_truncated.parquet, c_no_text.parquet, d_wrong_type.parquet"
    assert cli(*args) == lost
    report = capsys.readouterr().out
    stats = Stats.from_json(json.loads((tmp_path / "out/train.manifest.json").read_text())["stats"])
    assert stats.files == 7 and stats.docs == {"all": 8 + 2 + 4 + 1}
    assert stats.malformed == {"no text field": 3}
    assert stats.examples["no text field"] == ["e_null.parquet:row 1", "g.jsonl:2", "g.jsonl:3"]
    assert stats.damaged_files["b_truncated.parquet"].startswith("unreadable parquet")
    assert "no column 'text' (columns: content); name the text's with --text_field" in stats.damaged_files["c_no_text.parquet"]
    assert stats.damaged_files["d_wrong_type.parquet"] == "column 'text' holds int64, not strings"
    assert np.array_equal(output(tmp_path / "out", "train")[0], expected_tokens(rows[:8] + rows[10:17]))
    assert "LOST data of c_no_text.parquet: no column 'text'" in report
    assert "malformed rows (no text field): 3, e.g. e_null.parquet:row 1" in report
    assert "filter 'len(text) > 3'" in cli(*args[:4], "--filter", "len(text) > 3")
    assert cli(*args[2:]) == "error: give one of --source_path, --base_url, --hf_repo"


def test_hub_repo_globs_and_config(corpus, server, tmp_path, monkeypatch):
    root, rows = corpus
    repo = tmp_path / "repo"
    for name in ("sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet", "sample/100BT/000_00000.parquet",
                 "data/CC-MAIN-2024-10/000_00000.parquet"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(root / "parquet/part-1.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n"
                                    "    path: sample/10BT/*\n- config_name: default\n  data_files: data/*/*\n---\n# card\n")
    seen = []
    server[0].RequestHandlerClass = hub_handler(server[1], repo, "HuggingFaceFW/fineweb-edu", seen)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = functools.partial(HuggingFaceSource, "HuggingFaceFW/fineweb-edu", endpoint=server[2])
    assert hub().list_files(["sample/10BT/*.parquet"]) == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert hub(config="sample-10BT").list_files([]) == hub().list_files(["sample/10BT/*.parquet"])
    assert hub(config="default").list_files([]) == ["data/CC-MAIN-2024-10/000_00000.parquet"]
    assert hub().list_files(["**"], ["sample/10BT"]) == ["sample/100BT/000_00000.parquet", "data/CC-MAIN-2024-10/000_00000.parquet"][::-1]
    with pytest.raises(DataError, match="no config 'nope' in README.md \\(configs: sample-10BT, default\\)"):
        hub(config="nope").list_files([])
    run(hub(config="sample-10BT"), tmp_path / "out", [], num_workers=2)
    assert np.array_equal(output(tmp_path / "out", "train")[0], expected_tokens(rows[:16] * 2))
    with pytest.raises(DataError, match="previous run used hf_config='sample-10BT', this one 'default'"):
        run(hub(config="default"), tmp_path / "out", [])  # the config picks the files: a rerun keeps it


def test_short_download_is_retried_and_never_read(corpus, server, tmp_path):
    root, rows = corpus
    httpd, handler, url = server
    calls = []

    class Short(handler):  # the first transfer of each file stops halfway
        def do_GET(self):
            calls.append(self.path)
            if calls.count(self.path) == 1:
                body = Path(self.directory, self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            super().do_GET()

    httpd.RequestHandlerClass = functools.partial(Short, directory=str(root))
    source = HttpSource(url, retries=2, backoff=0.01)
    path = source.local_copy("parquet/part-10.parquet", tmp_path)
    assert path.read_bytes() == (root / "parquet/part-10.parquet").read_bytes()
    assert calls == ["/parquet/part-10.parquet"] * 2 and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_hub_file_damaged_in_transfer_is_downloaded_again(corpus, server, tmp_path):
    """The Hub lists each LFS file's sha256: the first transfer of every file arrives whole in length but with one
    byte flipped mid-file (inside a row group, where the footer still reads); it is caught and downloaded again, and
    the output equals the local files'."""
    root, rows = corpus
    seen = []
    hub = hub_handler(server[1], root, "HuggingFaceFW/fineweb-edu", seen)

    class Flipping(hub.func):
        def copyfile(self, source, outputfile):
            body = bytearray(source.read())
            if sum("/resolve/" in p and p.endswith(self.path) for p, _ in seen) == 1:
                body[len(body) // 3] ^= 0x20
            outputfile.write(bytes(body))

    server[0].RequestHandlerClass = functools.partial(Flipping, *hub.args, **hub.keywords)
    source = HuggingFaceSource("HuggingFaceFW/fineweb-edu", endpoint=server[2], backoff=0.01)
    run(source, tmp_path / "out", ["parquet"])
    run(LocalSource(root), tmp_path / "reference", ["parquet"])
    assert output(tmp_path / "out", "train")[1] == output(tmp_path / "reference", "train")[1]
    downloads = [p for p, _ in seen if "/resolve/" in p]
    assert len(downloads) == 6 and len(set(downloads)) == 3


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_mid_parquet_file_then_rerun(corpus, server, tmp_path):
    """Streamed parquet, committing after every row group (--commit_every 0): kill -9 after the first chunk, and
    with a manifest written mid-file but not renamed; each rerun continues (from the last row group recorded, not
    the file's start) to the same bytes as an uninterrupted run."""
    root, rows = corpus
    run(LocalSource(root), tmp_path / "reference", "parquet")
    args = [str(SCRIPT), "--base_url", server[2], "--include", "parquet", "--destination", str(tmp_path / "out"),
            "--tokenizer_dir", str(TOKENIZER), "--chunk_size", "997", "--num_workers", "2", "--commit_every", "0"]
    manifest = tmp_path / "out" / "train.manifest.json"
    for suffix, n, when in [(".bin", 1, "after"), (".json", 8, "before")]:  # the 8th: part-2 after 2 row groups
        code = subprocess.call([sys.executable, "-c", KILL_AT, suffix, str(n), when, *args], timeout=300,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert code == -signal.SIGKILL
    recorded = json.loads(manifest.read_text())
    assert recorded["files"] == ["parquet/part-1.parquet"] and recorded["partial"]["name"] == "parquet/part-2.parquet"
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 done before" in result.stdout
    assert f"parquet/part-2.parquet: continuing after the {recorded['partial']['batches']} batches" in result.stdout
    assert output(tmp_path / "out", "train")[1] == output(tmp_path / "reference", "train")[1]
    assert not list((tmp_path / "out").glob(".*"))


def test_a_file_that_shrank_since_a_commit_inside_it_is_one_line(corpus, tmp_path):
    """A manifest says 99 row groups of part-1 were written, but the file now has 4: the rerun refuses in one line
    naming the file, instead of skipping or repeating documents."""
    root, rows = corpus
    dest = tmp_path / "out"
    run(LocalSource(root), dest, "parquet", commit_every=0)
    manifest = dest / "train.manifest.json"
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "files": [], "complete": False,
                                    "partial": {"name": "parquet/part-1.parquet", "batches": 99}}))
    with pytest.raises(DataError, match=r"parquet/part-1.parquet: has 4 batches now, 99 of them were written before"):
        run(LocalSource(root), dest, "parquet")


def test_an_unreadable_row_group_is_named_and_the_others_kept(corpus, tmp_path, monkeypatch):
    root, rows = corpus
    real = pq.ParquetFile.read_row_group

    def damaged(self, i, *args, **kwargs):  # the tokenizer process is forked: it inherits this
        if i == 1:
            raise OSError("Corrupt snappy compressed data.")
        return real(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", damaged)
    stats = run(LocalSource(root), tmp_path / "out", "parquet/part-1.parquet")
    assert stats.damaged_files == {"parquet/part-1.parquet": "row group 1 unreadable (Corrupt snappy compressed data.)"}
    assert np.array_equal(output(tmp_path / "out", "train")[0], expected_tokens(rows[:5] + rows[10:16]))
