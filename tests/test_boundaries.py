"""The layering of DESIGN.md: `unlearning/` imports no prefect/mlflow/boto3; `registry/` no prefect."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "unlearning": {"prefect", "mlflow", "boto3", "botocore", "flows", "tasks", "registry"},
    "registry": {"prefect", "flows", "tasks"},
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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
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
