"""Imported by every Python process of `benchmarks/run_gpu.sh --dry-run` (the rehearsal puts this folder first on
PYTHONPATH): records which top-level module imported which (each successful `import` statement), and at exit
writes them with the repository's own top-level modules to $LIT_GPT_IMPORT_LOG/<pid>.json, for
benchmarks/device_image.py. Failed imports (optional ones inside try/except) are not recorded."""

import atexit
import builtins
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_edges = set()
_import = builtins.__import__


def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    module = _import(name, globals, locals, fromlist, level)
    if level == 0 and globals:
        _edges.add((str(globals.get("__name__", "?")).partition(".")[0], name.partition(".")[0]))
    return module


def _ours(module) -> bool:
    """Loaded from the repository (a namespace package has only __path__; torch.ops-like objects have odd ones)."""
    try:
        paths = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
    except TypeError:
        paths = [getattr(module, "__file__", None)]
    return any(isinstance(p, str) and os.path.abspath(p).startswith(_ROOT + os.sep) for p in paths)


def _write() -> None:
    folder = os.environ.get("LIT_GPT_IMPORT_LOG")
    if not folder:
        return
    local = sorted(name for name, m in list(sys.modules.items()) if "." not in name and _ours(m))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
        json.dump({"local": local, "edges": sorted(_edges)}, f)


if os.environ.get("LIT_GPT_IMPORT_LOG"):
    builtins.__import__ = _recording_import
    atexit.register(_write)
