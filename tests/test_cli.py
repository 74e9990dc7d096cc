"""Every command line accepts exact option names only: an abbreviation (`--learning_rat`, `--dest`) is an error, not a
silent expansion to the one option it prefixes."""

import argparse
import runpy
import sys
from pathlib import Path

import pytest

from lit_gpt.training.args import TrainArgs, parse_args
from lit_gpt.utils import TrainError

ROOT = Path(__file__).resolve().parents[1]
ARGPARSE_CLIS = sorted(str(p.relative_to(ROOT)) for folder in ("scripts", "benchmarks") for p in (ROOT / folder).glob(
    "*.py") if "ArgumentParser(" in p.read_text())


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def script_parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script builds when run as a program: stopped at its parse call, nothing runs."""
    def stop(parser, *args, **kwargs):
        raise Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    monkeypatch.setattr(sys, "argv", [script])
    with pytest.raises(Parsed) as e:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    return e.value.parser


def test_trainer_cli_rejects_abbreviations():
    assert parse_args(TrainArgs(), ["--learning_rate", "1e-3"]).learning_rate == 1e-3
    with pytest.raises(TrainError, match="unrecognized arguments: --learning_rat 1e-3"):
        parse_args(TrainArgs(), ["--learning_rat", "1e-3"])


def test_argparse_clis_reject_abbreviations(monkeypatch, capsys):
    assert "scripts/prepare_slimpajama.py" in ARGPARSE_CLIS and "benchmarks/train_throughput.py" in ARGPARSE_CLIS
    for script in ARGPARSE_CLIS:
        parser = script_parser(script, monkeypatch)
        option = max((o for a in parser._actions for o in a.option_strings if o.startswith("--")), key=len)
        assert parser.allow_abbrev is False, script
        monkeypatch.undo()
        value = lambda action: next(iter(action.choices)) if action.choices else "x"  # noqa: E731
        required = [x for a in parser._actions if a.required for x in (a.option_strings[:1] or []) + [value(a)]]
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*required, option[:-1]])
        assert e.value.code == 2, script
        assert f"unrecognized arguments: {option[:-1]}" in capsys.readouterr().err, script
