"""Is every module a GPU stage needs there on the device machine? The machine has its image's packages
(benchmarks/device_image.txt) plus the wheels benchmarks/fetch_wheels.sh carries, under Python 3.12, and nothing
can be installed there. `benchmarks/run_gpu.sh --dry-run` records, in each of a stage's processes, which top-level
module imported which (benchmarks/import_log/sitecustomize.py; one folder per stage) and then runs

  python benchmarks/device_image.py IMPORT_LOG_DIR

Needed are the modules the repository's code imports, and, through the carried wheels (installed without their
dependencies), what those import in turn; a package of the image brings its own dependencies, so what it imports
here (another version may import other things) is not followed. Each needed module is mapped to the distribution
it was installed from here, and one that is neither in the standard library, the image nor the wheels fails the
check, naming the stage, the module and who imported it.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

HERE = Path(__file__).resolve().parent
REMOVED_IN_PY312 = {"asynchat", "asyncore", "distutils", "imp", "smtpd"}  # stdlib here (3.11), gone on the device


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed() -> tuple[set[str], set[str]]:
    """Normalized distribution names on the device (the image's and the wheels'), and those of the wheels alone."""
    lines = [line.split("#")[0].strip() for line in (HERE / "device_image.txt").read_text().splitlines()]
    image = [line for line in lines if line]
    block = re.search(r"^WHEELS=\((.*?)^\)", (HERE / "fetch_wheels.sh").read_text(), re.M | re.S).group(1)
    wheels = re.findall(r"([A-Za-z0-9_.-]+)==", re.sub(r"#.*", "", block))
    wheels = {normalize(n) for n in wheels}
    return {normalize(n) for n in image} | wheels, wheels


def needed(local: set[str], edges: set[tuple[str, str]], ok: set[str], wheels: set[str]) -> dict[str, str]:
    """module -> why it would not import on the device, for the modules reached from the repository's code
    through import statements, following only the repository's own modules and the carried wheels."""
    owners = packages_distributions()
    imports: dict[str, set[str]] = {}
    for importer, module in edges:
        imports.setdefault(importer, set()).add(module)
    out, seen, todo = {}, set(local), [(m, importer) for importer in local for m in imports.get(importer, ())]
    while todo:
        module, importer = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        dists = {normalize(d) for d in owners.get(module, [module])}
        if module in REMOVED_IN_PY312:
            out[module] = f"imported by {importer}; removed from the standard library in Python 3.12"
        elif module.startswith("_") or module in sys.stdlib_module_names:
            continue  # the stdlib, its C parts, and installers' finders
        elif dists & wheels:  # carried without its dependencies: what it imports must be there too
            todo += [(m, module) for m in imports.get(module, ())]
        elif not dists & ok:
            out[module] = f"imported by {importer}, from distribution {'/'.join(sorted(dists))}"
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        sys.exit("usage: python benchmarks/device_image.py IMPORT_LOG_DIR (one folder of <pid>.json per stage)")
    ok, wheels = allowed()
    failed, checked = [], 0
    for stage in sorted(p for p in Path(argv[0]).iterdir() if p.is_dir()):
        logs = [json.loads(f.read_text()) for f in stage.glob("*.json")]
        local = {m for log in logs for m in log["local"]}
        edges = {tuple(e) for log in logs for e in log["edges"]}
        checked += len(logs)
        failed += [f"stage {stage.name} needs {m} ({why})" for m, why in needed(local, edges, ok, wheels).items()]
    for line in failed:
        print(f"error: {line}: not on the device image (benchmarks/device_image.txt) nor carried by "
              "benchmarks/fetch_wheels.sh", file=sys.stderr)
    if not checked:
        print("error: no imports were recorded (was benchmarks/import_log first on PYTHONPATH?)", file=sys.stderr)
        return 1
    if not failed:
        print(f"imports of {checked} processes: all in Python 3.12's standard library, on the device image or "
              "carried by benchmarks/fetch_wheels.sh")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
