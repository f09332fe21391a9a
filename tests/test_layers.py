"""The tree is the pipeline: the import contracts in pyproject.toml hold, and no module imports
itself back through others (docs/architecture.md)."""

from __future__ import annotations

import graphlib
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    """Stages import downwards only; first-party connectors use only the public plugin API."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": str(lint.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycles_between_modules() -> None:
    graph = grimp.build_graph("relay", exclude_type_checking_imports=True)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_architecture_doc_shows_the_layers_as_configured() -> None:
    """docs/architecture.md quotes the layers contract; a copy that drifts would mislead."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [layers] = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    quoted = doc.split("layers = [", 1)[1].split("]", 1)[0]
    assert [line.strip().strip(",").strip('"') for line in quoted.strip().splitlines()] == layers


def test_no_two_modules_share_a_name() -> None:
    """A name says what a module holds, so it says it once: ``views`` in two folders would not."""
    names: dict[str, list[str]] = {}
    for path in [*(ROOT / "relay").rglob("*.py"), *(ROOT / "plugins").glob("*.py")]:
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
