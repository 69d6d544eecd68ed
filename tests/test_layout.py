"""The package's layout rules: small modules, no import cycles, and model files that import nothing of the training
side (they travel with every saved model and run as remote code)."""

import ast
from pathlib import Path

import sentence_multitask

PACKAGE = Path(sentence_multitask.__file__).parent
MODULES = {path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): path
           for path in PACKAGE.rglob("*.py")}
MODEL_FILES = {name for name in MODULES if name.endswith("_sentence_multitask")}


def package_imports(name: str) -> set[str]:
    """The package modules that module `name` imports, at module level or inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, node.module] if node.module else base)
            candidates = [f"{target}.{alias.name}".lstrip(".") for alias in node.names] + [target]
            found |= {candidate for candidate in candidates if candidate in MODULES}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for full in ([module] if module else [alias.name for alias in node.names]):
                if full and full.startswith("sentence_multitask."):
                    found.add(full.removeprefix("sentence_multitask."))
    return found - {name}


def test_no_source_file_is_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long


def test_no_import_cycles():
    graph = {name: package_imports(name) - {""} for name in MODULES}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for other in graph[node]:
            if state.get(other) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, other])}")
            if other not in state:
                visit(other, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_model_files_import_only_each_other():
    for name in MODEL_FILES:
        others = package_imports(name) - MODEL_FILES
        assert not others, f"{name} imports {others}: a saved model's code must not need the package"
