"""The layout rules of docs/architecture.md, checked: lit_gpt's imports form no circle, no module of lit_gpt is over
400 lines, and the run folder's file names are spelled in lit_gpt/layout.py alone."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_gpt"
# file and folder names of a training run (lit_gpt/layout.py); none may appear as a string literal elsewhere
LAYOUT_NAMES = ("state.pth", "meta.pt", "checkpoints", "train_metadata.json", "eval_results.json", "model_config.json",
                "lit_model.pth", "checksums.json", "metrics.csv", ".lock", "lm_eval.log")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the lit_gpt modules it imports, at module level or inside functions."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lit_gpt"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def test_no_import_circle():
    graph = imports()

    def circle_from(start, path, done):
        for dep in sorted(graph.get(path[-1], ())):
            if dep == start:
                return path + [dep]
            if dep not in done:
                done.add(dep)
                found = circle_from(start, path + [dep], done)
                if found:
                    return found
        return None

    for module in graph:
        circle = circle_from(module, [module], set())
        assert circle is None, "import circle: " + " -> ".join(circle)


def test_library_never_imports_training():
    for module, deps in imports().items():
        if not module.startswith("lit_gpt.training"):
            assert not any(d.startswith("lit_gpt.training") for d in deps), module


def test_no_module_over_400_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 400, {m: n for m, n in sizes.items() if n > 400}


def test_run_folder_names_only_in_layout():
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in LAYOUT_NAMES:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} spells {node.value!r} "
                                     "(use lit_gpt.layout)")
