"""The README's commands work as written: every smoke-scale `python -m ntkrepro ...` / `make figure-...`
line, `--help`, `python -m ntkrepro.runs` and `make plan` (any scale: it runs nothing) of its shell
blocks runs (into a temporary out_root)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import ENV, REPO, run_record


def shell_lines(text: str) -> list[str]:
    """The command lines of the ```bash blocks (comments dropped)."""
    blocks = re.findall(r"^ *```bash\n(.*?)^ *```", text, flags=re.S | re.M)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def runnable(line: str) -> bool:
    """Smoke-scale figure runs, help, the runs listing and cost plans (cpu and paper runs take
    minutes to hours; a plan of any scale runs nothing)."""
    if line.startswith(("python -m ntkrepro.runs", "make plan")):
        return True
    if line.startswith("python -m ntkrepro "):
        return "scale=smoke" in line or line.endswith("--help")
    return line.startswith("make figure-") and "SCALE=smoke" in line


COMMANDS = [line for line in shell_lines((REPO / "README.md").read_text()) if runnable(line)]


def test_readme_has_commands_to_check():
    assert len(COMMANDS) >= 4, COMMANDS
    assert any(line.startswith("make figure-") for line in COMMANDS)
    assert any(" -m figure=" in line for line in COMMANDS)  # a sweep


def as_run(line: str, out_root) -> list[str]:
    """The line as written, with this interpreter and the outputs sent to out_root."""
    words = shlex.split(line)
    if words[:2] == ["make", "plan"]:  # writes nothing: no out_root
        return ["make", "--no-print-directory", f"PY={sys.executable}", *words[1:]]
    if words[0] == "make":
        return ["make", "--no-print-directory", f"PY={sys.executable}", *words[1:], f"ARGS=out_root={out_root}"]
    words[0] = sys.executable
    if words[2] == "ntkrepro.runs":
        return [*words, "--out-root", str(out_root)]
    return words if "--help" in words else [*words, f"out_root={out_root}"]


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_works_as_written(tmp_path, line):
    res = subprocess.run(as_run(line, tmp_path), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    if line.startswith("make plan"):
        assert "GPU-h" in res.stdout and not any(tmp_path.iterdir())
    elif "figure=" in line or line.startswith("make"):
        records = [run_record(p.parent) for p in tmp_path.rglob("run.json")]
        assert records and all(r["state"] == "finished" for r in records)


def test_readme_core_api_example_runs(tmp_path, monkeypatch):
    """The README's core-API block as written, on small inputs named as it names them."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## The core API.*?^```python\n(.*?)^```", text, flags=re.S | re.M).group(1)
    monkeypatch.chdir(tmp_path)  # its blockwise cache_dir
    preamble = """
import jax, numpy as np
from ntkrepro import kernels
jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
x1, x2 = rng.normal(size=(5, 10)), rng.normal(size=(4, 10))
x = x1
images1, images2 = rng.normal(size=(2, 6, 6, 3)), rng.normal(size=(3, 6, 6, 3))
f = lambda p, u: model.apply({"params": p}, u)
f_scalar = lambda p, u: model.apply({"params": p}, u[None])[0, 0]
train, cross, test = kernels.fc(x1, depth=3), kernels.fc(x2, x1, depth=3), kernels.fc(x2, depth=3)
theta_tt, theta_st, th_tt, th_st = train.ntk, cross.ntk, train.ntk, cross.ntk
k_tt, k_st, k_ss = train.nngp, cross.nngp, test.nngp
y, f0_train, f0_test, ts = np.ones((5, 1)), np.zeros((5, 1)), np.zeros((4, 1)), np.array([0.0, 1.0, 10.0])
x0 = x1[0]
"""
    scope: dict = {}
    exec(compile(preamble + block, "README core API", "exec"), scope)
    assert np.shape(scope["theta"]) == (2, 3) and np.shape(scope["big"]) == (5, 5)
    assert np.shape(scope["mean"])[-2:] == (4, 1) and np.isfinite(scope["norm"])
