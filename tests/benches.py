"""Loading a script of bench/ as a module, for the tests that run benchmarks at a tiny size.

bench/ is not a package (its scripts run as `python bench/X.py`, with bench/ first on sys.path, and import
each other by name), so a test loads one by path with bench/ on sys.path as the script would have it.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """The module of bench/<name>.py, executed afresh."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.append(str(BENCH_DIR))  # after the project's packages: no bench script shadows one
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
