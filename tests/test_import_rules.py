"""The dependency direction in DESIGN.md, checked on the source: chimera_core imports
nothing of ours; governance and execution only chimera_core (and themselves); the hot
path (core, governance, execution) never imports the dashboard's or research's
libraries. Read from every module's import statements, so a lazy import inside a
function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"chimera_core", "chimera_governance", "chimera_execution", "cortex", "tools", "benchmarks"}
ALLOWED = {
    "chimera_core": {"chimera_core"},
    "chimera_governance": {"chimera_core", "chimera_governance"},
    "chimera_execution": {"chimera_core", "chimera_execution"},
}
# Never in the hot path's packages: the dashboard's, the research drivers' and the
# people-facing side processes' libraries.
HOT_PATH_NEVER = {"streamlit", "plotly", "matplotlib", "optuna", "ray", "rich", "mcp",
                  "apprise", "telegram", "pandas"}  # fmt: skip


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_the_design_allows(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no source under {package}/"
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if (name in OURS and name not in ALLOWED[package]) or name in HOT_PATH_NEVER
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from tools.node import build_node\n    import plotly.express\n")
    assert _imports(probe) == [(2, "tools"), (3, "plotly")]
