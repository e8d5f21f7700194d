"""The layering rule, checked in CI: layers only point down (import-linter's contracts in
pyproject.toml) and no function imports our own modules (an import inside a function hides a
cycle and defeats go-to-definition; only optional heavy runtimes are imported lazily)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mobilenets"


def test_layers_only_point_down():
    pytest.importorskip("importlinter")
    from importlinter.application import use_cases
    from importlinter.configuration import configure

    configure()
    passed = use_cases.lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml"), cache_dir=None,
                                    no_logo=True)
    assert passed, "import-linter contracts broken (the report is above; `lint-imports` prints it too)"


def function_imports(path: Path, root: Path) -> list[str]:
    """``file:line in function()`` for each import of ``mobilenets`` (absolute or relative) inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                ours = node.level > 0 or (node.module or "").startswith("mobilenets")
            else:
                ours = isinstance(node, ast.Import) and any(a.name.startswith("mobilenets") for a in node.names)
            if ours:
                found.append(f"{path.relative_to(root)}:{node.lineno} in {fn.name}()")
    return found


def test_no_function_imports_our_own_modules():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in function_imports(path, PACKAGE.parent)]
    assert not found, "imports of our own modules inside functions:\n" + "\n".join(found)


def test_the_check_sees_function_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    from .models import build_model\n    import onnx\n"
                   "    import mobilenets.train\n    return build_model, onnx\n")
    assert function_imports(bad, tmp_path) == ["bad.py:5 in f()", "bad.py:7 in f()"]
