"""The package's layout rules: small files (every Python file of the repository under 500 lines), no import cycles,
and model files that import nothing of the training side (they travel with every saved model and run as remote
code)."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import sentence_multitask

PACKAGE = Path(sentence_multitask.__file__).parent
REPOSITORY = Path(sentence_multitask.__file__).parents[2]  # src/sentence_multitask/__init__.py: a source checkout
MAX_LINES = 500
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


def tracked_python_files() -> list[Path]:
    """Every .py file git tracks in the repository: the package, tests, benchmarks and experiments."""
    if shutil.which("git") is None or not (REPOSITORY / ".git").exists():
        missing = "git is not installed" if shutil.which("git") is None else f"{REPOSITORY} has no .git folder"
        pytest.skip(f"{missing}: only the package's modules were checked (under {MAX_LINES} lines), not the other "
                    "Python files of the repository, which git lists")
    listed = subprocess.run(["git", "ls-files", "-z", "--", "*.py"], cwd=REPOSITORY, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"git ls-files failed in {REPOSITORY}: {listed.stderr.strip()}")
    return [REPOSITORY / name for name in listed.stdout.split("\0") if name and (REPOSITORY / name).is_file()]


def over_the_limit(paths) -> dict[str, int]:
    """The files of `paths` over MAX_LINES lines (relative to the repository), with their line counts."""
    counts = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in paths}
    return {path.relative_to(REPOSITORY).as_posix(): n for path, n in sorted(counts.items()) if n > MAX_LINES}


def test_no_source_file_is_over_500_lines():
    long = over_the_limit(MODULES.values())  # also where there is no git repository (an installed package)
    assert not long, f"package modules over {MAX_LINES} lines: {long}"
    files = tracked_python_files()
    assert any(path.is_relative_to(PACKAGE) for path in files), f"git lists none of the package's files: {files[:5]}"
    long = over_the_limit(files)
    assert not long, f"Python files over {MAX_LINES} lines (split them): {long}"


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
