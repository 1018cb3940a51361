"""Bad input on the command line: one clear line, non-zero exit, nothing that looks like a result."""
from __future__ import annotations

import pytest

from helpers import cli, finished_runs

BAD = [
    (["figure=lee-s99"], "unknown figure 'lee-s99'"),
    (["figure=lee-s9", "scale=huge"], "unknown scale 'huge'"),
    ([], "no figure given"),
    (["figure=lee-s9", "figure.paper.widths=[0,8]"], "widths must be a positive integer"),
    (["figure=lee-s9", "figure.smoke.widths=[8,-3]"], "widths must be a positive integer"),
    (["figure=lee-s9", "figure.paper.depths=[0]"], "depths must be a positive integer"),
    (["figure=lee-s9", "figure.paper.activation=relux"], "unknown activation 'relux'"),
    (["figure=lee-s9", "+figure.paper.lr=-0.5"], "learning rate) must be positive"),
    (["figure=lee-s9", "figure.paper.inputs=mnist", "data.source=npz", "data.root=/nonexistent/dir"],
     "does not exist"),
    (["figure=lee-s9", "figure.paper.inputs=mnist", "figure.smoke.n_inputs=999999",
      "data.source=sample"], "999999"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) or "none" for a, _ in BAD])
def test_bad_input_gives_one_line(tmp_path, args, message):
    res = cli(*args, out_root=tmp_path)
    assert res.returncode != 0
    err_lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err_lines) == 1, res.stderr
    assert err_lines[0].startswith("error: ")
    assert message in err_lines[0]
    assert "Traceback" not in res.stdout + res.stderr
    assert finished_runs(tmp_path) == []
    # nothing at all is left behind for input rejected before any work
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], list(tmp_path.rglob("*"))


def test_too_many_examples_names_the_available_count(tmp_path):
    res = cli("figure=lee-s9", "figure.paper.inputs=mnist", "figure.smoke.n_inputs=999999",
              "data.source=sample", out_root=tmp_path)
    assert "holds" in res.stderr and res.returncode != 0


def test_data_set_missing_from_root(tmp_path):
    root = tmp_path / "empty_root"
    root.mkdir()
    res = cli("figure=lee-s9", "figure.paper.inputs=cifar10", "data.source=npz", f"data.root={root}",
              out_root=tmp_path / "out")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "not found" in lines[0], res.stderr
    assert finished_runs(tmp_path / "out") == []
