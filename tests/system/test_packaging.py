"""What ships: every package of the wheel is copied into the image, and every
third-party module our code imports is declared in pyproject.toml (the product's in
`dependencies`, tooling's and tests' there or in the dev group), not merely installed
because something else happens to depend on it today."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.support.env import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
TOOLING = ["scripts", "standins", "tests"]
# Imported inside a function, installed by hand when wanted; never needed to run or test.
OPTIONAL = {"pyinstrument"}  # scripts/bench/profiled.py's statistical profiler


def normalized(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(package: str) -> dict[str, Path]:
    """Top-level names of what `package` imports (absolute imports), with one file each."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def undeclared(packages: list[str], declared: set[str]) -> list[str]:
    ours = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    ours |= {*SHIPPED, *TOOLING}
    # scripts/ runs some files as scripts, which import their siblings by bare name.
    ours |= {p.stem for p in (ROOT / "scripts").rglob("*.py")}
    ours |= {p.name for p in (ROOT / "scripts").rglob("*") if p.is_dir()}
    distributions = packages_distributions()
    missing = []
    for package in packages:
        for module, path in imported_modules(package).items():
            if module in sys.stdlib_module_names or module in ours | OPTIONAL:
                continue
            dists = {normalized(d) for d in distributions.get(module, [])}
            assert dists, f"{path.relative_to(ROOT)} imports {module}, which is not installed"
            if not dists & declared:
                missing.append(f"{module} ({', '.join(sorted(dists))}) in {path.relative_to(ROOT)}")
    return sorted(missing)


def test_every_module_the_product_imports_is_a_declared_dependency() -> None:
    declared = {normalized(r) for r in PYPROJECT["project"]["dependencies"]}
    assert undeclared(SHIPPED, declared) == []


def test_every_module_tooling_and_tests_import_is_declared() -> None:
    requirements = PYPROJECT["project"]["dependencies"] + PYPROJECT["dependency-groups"]["dev"]
    declared = {normalized(r) for r in requirements if isinstance(r, str)}
    assert undeclared(TOOLING, declared) == []


def test_the_image_holds_every_shipped_package() -> None:
    copied = re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert set(SHIPPED) <= set(copied)
