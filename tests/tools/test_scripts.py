"""The scripts beside the package (benchmarks/, scripts/) import against the current library, so they cannot rot."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.relative_to(ROOT).as_posix() for p in SCRIPTS])
def test_script_imports_and_has_a_main(path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports; the work itself sits behind `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_importing_the_package_has_no_global_side_effects():
    """Issue 10: no matplotlib backend chosen and no pyplot loaded by importing intra's modules."""
    import subprocess
    import sys

    code = (
        "import sys, matplotlib; before = dict.__getitem__(matplotlib.rcParams, 'backend'); "
        "import intra, intra.evaluation.plots, intra.evaluation.outputs, intra.files; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before, 'backend changed'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_map_names_every_module():
    """docs/method.md's module map has a row for every module of the package, so it cannot fall behind.

    A package's `__init__.py` counts as a module when it holds code (the top level's public API,
    `serve`), not when it is a docstring alone."""
    package = ROOT / "src" / "intra"
    table = (ROOT / "docs" / "method.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    modules = {
        "intra/__init__.py"
        if path.parent == package and path.name == "__init__.py"
        else path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or "def " in path.read_text() or path.parent == package
    }
    missing = sorted(modules - rows)
    assert not missing, f"docs/method.md's module map lacks {missing}"
