"""The tests are laid out like the code: shared helpers live in tests/support, so no test module
imports another test module or conftest (which holds only fixtures), and each helper is defined
once."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(tree: ast.Module) -> list[str]:
    """Every module an import statement names, at any depth (imports inside functions too)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "tests":  # from tests import x
            names += [f"tests.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def forbidden(module: str) -> bool:
    parts = module.split(".")
    return (
        len(parts) >= 2
        and parts[0] == "tests"
        and (parts[1] == "conftest" or parts[1].startswith("test_"))
    )


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for module in imported_modules(tree):
            if forbidden(module):
                offenders.append(f"{path.relative_to(TESTS.parent)} imports {module}")
    assert offenders == [], "shared helpers belong in tests/support:\n" + "\n".join(offenders)


def test_fixtures_dir_is_defined_once() -> None:
    definitions = [
        str(path.relative_to(TESTS.parent))
        for path in sorted(TESTS.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "fixtures_dir"
    ]
    assert definitions == ["tests/support/samples.py"]


def test_conftest_holds_only_fixtures() -> None:
    """Helpers in conftest would be importable only from conftest, which no test may import."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    helpers = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not any(
            "fixture" in ast.unparse(decorator) for decorator in getattr(node, "decorator_list", [])
        )
    ]
    assert helpers == []
