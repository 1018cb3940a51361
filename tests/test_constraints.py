"""constraints.txt: the versions the tests passed with, used by `make setup` and .ci/run.

A pin outside pyproject.toml's ranges would make `make setup` fail (or install what the project says it
does not support); a dependency without a pin would let a new release change a fresh environment."""
from __future__ import annotations

import re
import subprocess

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def pins() -> dict[str, tuple[str, Marker]]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[canonicalize_name(req.name)] = (spec.version, req.marker)
    return out


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_direct_dependency_is_pinned_within_its_range():
    p = pins()
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in p, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(p[name][0]), f"{req.name}=={p[name][0]} is outside pyproject's {req}"
    assert "jaxlib" in p and p["jaxlib"][0] == p["jax"][0]  # jax and jaxlib move together


def test_pins_apply_where_tested_only():
    """Every pin carries the same Python marker: on older interpreters pip resolves within the ranges."""
    markers = {str(m) for _, m in pins().values()}
    assert markers == {'python_version >= "3.11"'}, markers
    assert Marker('python_version >= "3.11"').evaluate({"python_version": "3.11"})
    assert not Marker('python_version >= "3.11"').evaluate({"python_version": "3.10"})


def test_setup_and_ci_install_with_the_constraints():
    dry = subprocess.run(["make", "-n", "--no-print-directory", "setup"], capture_output=True, text=True, cwd=REPO)
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs), dry.stdout
    newest = subprocess.run(["make", "-n", "--no-print-directory", "setup", "CONSTRAINTS="], capture_output=True,
                            text=True, cwd=REPO)
    assert not any(" -c " in line for line in newest.stdout.splitlines() if "pip install" in line), newest.stdout
    ci = (REPO / ".ci" / "run").read_text()
    assert len(re.findall(r"pip install -q (?:--no-deps )?-c constraints\.txt", ci)) == 2, ci
