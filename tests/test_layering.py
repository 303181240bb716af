"""The package's imports point one way: no cycle between modules (lazy imports inside functions
count too), command modules are imported by the CLI only, and the model library imports no
trainer, exporter, data pipeline or server (its command module, `minillama model info`, sits in
the CLI layer above everything)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
COMMAND_MODULES = {"minillama.__main__", "minillama.cli", "minillama.pipeline"}  # and every */commands.py
MODEL_MAY_NOT_IMPORT = ("train", "data", "generate", "export", "serve", "finetune", "numpy_model", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The minillama modules `path` imports, anywhere in it (a submodule named in `from x import y`
    counts as y; a package as its __init__)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / "minillama").rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def is_command(name: str) -> bool:
    return name in COMMAND_MODULES or name.endswith(".commands")


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_only_the_cli_imports_command_modules(graph):
    """What several commands share lives in the library, not in one of them."""
    offenders = {name: sorted(t for t in targets if is_command(t)) for name, targets in graph.items()
                 if name not in ("minillama.cli", "minillama.__main__")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_model_imports_no_trainer_exporter_data_or_server(graph):
    model = {name: targets for name, targets in graph.items()
             if name.startswith("minillama.model") and not is_command(name)}
    forbidden = tuple(f"minillama.{package}" for package in MODEL_MAY_NOT_IMPORT)
    assert {name: sorted(t for t in targets if t.startswith(forbidden)) for name, targets in model.items()
            if any(t.startswith(forbidden) for t in targets)} == {}
