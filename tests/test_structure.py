"""The package's shape holds: data flows one way through the stages (no import runs back up) and functions
stay short. DEVELOPERS.md's layout table states the same rules for people."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

# part of ftonnx -> the parts it may import (besides itself); DEVELOPERS.md shows this table
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "ortshim": set(),
    "folders": {"errors", "files"},
    "isolated": {"errors"},
    "metadata": {"errors"},
    "files": {"errors"},
    "progress": {"errors"},
    "graph": {"errors", "metadata", "files", "isolated"},
    "data": {"errors", "metadata"},
    "runtime": {"errors", "metadata", "isolated", "graph"},
    "preprocess": {"errors", "metadata", "graph", "data", "runtime"},
    "evaluate": {"errors", "metadata", "files", "progress", "graph", "data", "runtime", "preprocess"},
    "train": {"errors", "metadata", "files", "folders", "progress", "graph", "data", "runtime"},
    "export": {"errors", "metadata", "files", "folders", "progress", "graph", "data", "runtime", "preprocess",
               "evaluate", "train"},
    "report": {"errors", "metadata", "files", "folders", "progress", "data", "runtime", "preprocess", "evaluate",
               "train", "export"},
    "zoo": {"errors", "metadata", "graph"},
    "pipeline": {"errors", "metadata", "files", "folders", "progress", "graph", "data", "runtime", "preprocess",
                 "evaluate", "train", "export", "report"},
    "demo": {"errors", "metadata", "progress", "graph", "data", "evaluate", "train", "pipeline", "zoo"},
    "cli": {"errors", "metadata", "files", "progress", "graph", "data", "runtime", "preprocess", "evaluate", "train",
            "export", "report", "pipeline", "demo", "zoo"},
}
MAX_FUNCTION_LINES = 50


def _sources() -> list[tuple[str, Path]]:
    """(part, file) for every module of the package, the zoo (installed as ftonnx.zoo) included."""
    found = [("zoo", p) for p in sorted((REPO / "models").glob("*.py"))]
    for path in sorted((REPO / "ftonnx").rglob("*.py")):
        parts = path.relative_to(REPO / "ftonnx").with_suffix("").parts
        if parts != ("__init__",):  # the package's face hands on the API verbs lazily
            found.append((parts[0], path))
    return found


def _imported_parts(path: Path) -> set[str]:
    """The parts of ftonnx a file imports, at module level or inside functions."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            if name.startswith("ftonnx."):
                parts.add(name.split(".")[1])
            elif name == "ftonnx" and isinstance(node, ast.ImportFrom):
                parts.update(a.name for a in node.names if not a.name.startswith("__"))
    return parts


def test_no_import_runs_back_up() -> None:
    wrong = []
    for part, path in _sources():
        assert part in MAY_IMPORT, f"{path}: a new part of the package; add it to the table here and in DEVELOPERS.md"
        if bad := _imported_parts(path) - MAY_IMPORT[part] - {part}:
            wrong.append(f"{path.relative_to(REPO)} ({part}) imports {sorted(bad)}")
    assert not wrong, wrong


def _syntax() -> list[tuple[str, ast.AST]]:
    """Every syntax node of the package, with "file:line" where it stands."""
    return [(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}", node)
            for _, path in _sources() for node in ast.walk(ast.parse(path.read_text()))]


def test_functions_are_short() -> None:
    long = [f"{where} {node.name} ({node.end_lineno - node.lineno + 1} lines)" for where, node in _syntax()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_pickle_eval_or_shell() -> None:
    """Nothing a model, a data set or a run folder holds is ever unpickled, evaluated as code or run by a shell."""
    found = []
    for where, node in _syntax():
        names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
        module = node.module if isinstance(node, ast.ImportFrom) else ""
        if {"pickle", "marshal", "shelve", "dill"} & {*names, module or ""}:
            found.append(f"{where} imports {names or module}")
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
            if (isinstance(node.func, ast.Name) and name in ("eval", "exec")) or name in ("system", "popen") or \
                    any(k.arg in ("shell", "allow_pickle") and getattr(k.value, "value", None) is True
                        for k in node.keywords):
                found.append(f"{where} calls {name}")
    assert not found, found
