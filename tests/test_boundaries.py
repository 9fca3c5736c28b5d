"""The layering of docs/design.md and docs/architecture.md: every row of the architecture page's table, its
"never imports" column checked on every file of the package (function-level imports included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "unlearning": {"prefect", "mlflow", "boto3", "botocore", "registry", "pipeline", "flows", "tasks"},
    "registry": {"prefect", "pipeline", "flows", "tasks"},
    "pipeline": {"prefect", "flows", "tasks"},
    "tasks": {"flows"},
    "flows": set(),  # the top floor: it may import everything
}


def imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(p for p, never in FORBIDDEN.items() if never))
def test_package_respects_its_import_boundary(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_top_level_modules(f) & FORBIDDEN[package]) for f in files}
    offenders = {f: mods for f, mods in offenders.items() if mods}
    assert offenders == {}


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import mlflow.pyfunc\n    from prefect import flow\n")
    assert imported_top_level_modules(sample) == {"mlflow", "prefect"}


def test_the_architecture_page_states_these_very_rules():
    """docs/architecture.md's table has a row per package, and its "never imports" column is FORBIDDEN
    (botocore rides with boto3): the page says exactly what this file checks."""
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            never = {name.strip() for name in cells[2].split(",")} - {"—", ""}
            rows[cells[0].strip("`/")] = never
    assert rows == {package: never - {"botocore"} for package, never in FORBIDDEN.items()}
