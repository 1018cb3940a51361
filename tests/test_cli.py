"""The command line a user meets first: help, strict settings (one line, exit 2, no folder), data errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ENV, REPO, cli, error_line, finished_runs, make
from ntkrepro.cli import _title
from ntkrepro import data
from ntkrepro.registry import figure_ids

# rejected before Hydra runs: one line, exit status 2, not even an empty folder
STRICT = [
    (["figure=lee-s99"], "unknown figure 'lee-s99'"),
    (["figure=lee-s9", "scale=huge"], "unknown scale 'huge'"),
    ([], "no figure given"),
    (["scale=smoke"], "no figure given"),
    (["figure=lee-s9", "figure.paper.w_var=abc"], "figure.paper.w_var must be a float, got 'abc'"),
    (["figure=lee-s9", "seed=abc"], "seed must be a non-negative integer below 2^32, got 'abc'"),
    (["figure=lee-s9", "seed=-1"], "seed must be a non-negative integer below 2^32, got -1"),
    (["figure=lee-s9", "x64=maybe"], "x64 must be true or false, got 'maybe'"),
    (["figure=lee-s9", "x64=1"], "x64 must be true or false, got 1"),
    (["figure=lee-s9", "figure.paper.widthz=[8,16]"],
     "unknown setting figure.paper.widthz for figure lee-s9; known settings: figure.paper.widths"),
    (["figure=lee-s9", "+figure.paper.widthz=[8,16]"], "unknown setting figure.paper.widthz for figure lee-s9"),
    (["figure=lee-s9", "++figure.smoke.widthz=[8,16]"], "unknown setting figure.smoke.widthz for figure lee-s9"),
    (["figure=lee-s9", "widths=[8,16]"], "unknown setting widths; known settings:"),
    (["figure=lee-s9", "figure.title=x"], "unknown setting figure.title"),
    (["figure=lee-1", "figure.paper.panels.mnist_relu.depth=0"],
     "figure.paper.panels.mnist_relu.depth must be a positive integer, got 0"),
    (["figure=lee-1", "figure.paper.panels.mnist_relu.steps=abc"],
     "figure.paper.panels.mnist_relu.steps must be an integer, got 'abc'"),
    (["figure=jacot-2", "figure.paper.ref_width=0"], "figure.paper.ref_width must be a positive integer, got 0"),
    (["figure=liu-t1", "figure.paper.bottleneck_width=0"],
     "figure.paper.bottleneck_width must be a positive integer, got 0"),
    (["figure=lee-s9", "figure.paper.widths=[0,8]"], "figure.paper.widths must be a positive integer, got 0"),
    (["figure=lee-s9", "figure.smoke.widths=[8,-3]"], "figure.smoke.widths must be a positive integer, got -3"),
    (["figure=lee-s9", "figure.paper.depths=[0]"], "figure.paper.depths must be a positive integer"),
    (["figure=lee-s9", "figure.paper.widths=8"], "figure.paper.widths must be a list of integers, got 8"),
    (["figure=lee-s9", "figure.paper.activation=relux"], "unknown activation 'relux'"),
    (["figure=lee-1", "+figure.paper.lr=-0.5"], "figure.paper.lr (learning rate) must be positive"),
    (["figure=lee-s3", "figure.cpu.ode_lr=0"], "figure.cpu.ode_lr (learning rate) must be positive"),
    (["figure=lee-s9", "figure.paper.w_var=0"], "figure.paper.w_var (weight variance) must be positive"),
    (["figure=lee-s9", "figure.paper.b_var=-0.1"], "figure.paper.b_var (bias variance) must be >= 0"),
    (["figure=lee-s9", "figure.paper.evaluate_claims=maybe"], "must be true or false, got 'maybe'"),
    (["figure=lee-s9", "data.source=s3"], "unknown data source 's3'"),
    (["figure=lee-s9", "seed=0,1"], "add -m (--multirun)"),
    (["-m", "figure=lee-s9,lee-s10", "seed=0,-1"], "seed must be a non-negative integer below 2^32, got -1"),
    (["-m", "figure=lee-s9", "seed=range(-2,1)"], "seed must be a non-negative integer below 2^32, got -2"),
    (["-m", "figure=lee-s9", "figure.paper.w_var=choice(1.0,abc)"], "figure.paper.w_var must be a float"),
    (["-m", "figure=lee-s9,liu-2", "figure.paper.mc_samples=[1]"],
     "unknown setting figure.paper.mc_samples for figure liu-2"),
    (["figure=lee-s9", "task@figure.paper.task=mnistx"], "unknown task 'mnistx'; choose one of:"),
    (["figure=lee-s9", "task@figure.paper.task=mnist", "figure.paper.task.n_train=0"],
     "figure.paper.task.n_train must be a positive integer, got 0"),
    (["figure=lee-s9", "figure.paper.widths=[8,16"], "cannot read 'figure.paper.widths=[8,16'"),
    (["figure=lee-s9", "seed=4294967296"], "seed must be a non-negative integer below 2^32, got 4294967296"),
    (["figure=lee-s9", "out_root="], "out_root must be a folder path, got ''"),
    (["figure=lee-s9", "figure.paper.widths=[]"], "figure.paper.widths must be a non-empty list of positive"),
    (["figure=lee-s10", "figure=lee-s9"], "figure is given twice (figure=lee-s10, figure=lee-s9)"),
    (["figure=jacot-1", "figure.paper.task.n_test=-1"], "figure.paper.task.n_test must be a non-negative integer"),
    (["figure=lee-s5", "figure.paper.panes.fc.lr_fraction=1.5"], "figure.paper.panes.fc.lr_fraction (a fraction"),
    (["figure=lee-s5", "figure.paper.panes.data.lr=-1"], "figure.paper.panes.data.lr (learning rate) must be positive"),
    (["figure=lee-s10", "figure.paper.claims.width_slope=[0.5]"],
     "figure.paper.claims.width_slope must be a list of 2 floats, got [0.5]"),
]


@pytest.mark.parametrize("args,message", STRICT, ids=[" ".join(a) or "none" for a, _ in STRICT])
def test_bad_setting_is_one_line_exit_2_no_folder(tmp_path, args, message):
    res = cli(*args, out_root=tmp_path / "out")
    assert res.returncode == 2, res.stdout + res.stderr
    line = error_line(res)
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "out").exists()  # not even an empty folder


@pytest.mark.parametrize("below", ["", "runs/a"], ids=["the file itself", "a folder below it"])
def test_out_root_that_cannot_hold_folders_is_one_line_exit_2(tmp_path, below):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the runs would go\n")
    root = blocker / below if below else blocker
    res = cli("figure=lee-s9", out_root=root)
    assert res.returncode == 2, res.stdout + res.stderr
    line = error_line(res)
    assert line.startswith(f"error: out_root={root} cannot hold output folders: {blocker} is a file"), line
    assert "set out_root=" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]  # nothing made, not even a probe


# rejected by the run itself (the data): one line, exit 2, its folder removed
DATA = [
    (["figure=lee-s9", "task@figure.paper.task=mnist", "data.source=npz", "data.root=/nonexistent/dir"],
     "does not exist"),
    (["figure=lee-1", "scale=cpu", "data.source=npz"], "data.source=npz needs a data root"),
]


@pytest.mark.parametrize("args,message", DATA, ids=[" ".join(a) for a, _ in DATA])
def test_bad_data_is_one_line_and_leaves_no_folder(tmp_path, args, message):
    res = cli(*args, out_root=tmp_path)
    assert res.returncode == 2
    assert message in error_line(res)
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_too_many_examples_names_the_available_count(tmp_path):
    res = cli("figure=lee-s9", "task@figure.paper.task=mnist", "figure.smoke.task.n_train=999999",
              "data.source=sample", out_root=tmp_path)
    held = data.load_raw("mnist", "train", source="sample")[2]["n_available"]
    line = error_line(res)
    assert res.returncode == 2 and "asked for 999999 train examples of mnist" in line
    assert f"holds {held};" in line and held == 2000
    assert finished_runs(tmp_path) == []


def test_data_set_missing_from_root(tmp_path):
    root = tmp_path / "empty_root"
    root.mkdir()
    res = cli("figure=lee-s9", "task@figure.paper.task=cifar10", "data.source=npz", f"data.root={root}",
              out_root=tmp_path / "out")
    assert res.returncode == 2 and "not found" in error_line(res)
    assert finished_runs(tmp_path / "out") == []


def test_cpu_scale_without_data_names_both_fixes(tmp_path):
    if data.tfds_available():
        pytest.skip("tensorflow-datasets works here: auto would use it")
    res = cli("figure=lee-1", "scale=cpu", out_root=tmp_path)
    assert res.returncode == 2
    assert error_line(res) == ("error: no data source for mnist: pass data.root=<dir holding mnist.npz> or "
                               "install the tfds extra (pip install -e '.[tfds]') on a connected machine")


def _bare(*args):
    """python -m ntkrepro <args> exactly as given (no out_root appended)."""
    return subprocess.run([sys.executable, "-m", "ntkrepro", *args], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["figure=lee-s9", "--help"]],
                         ids=["--help", "-h", "no-args", "figure-and-help"])
def test_help_lists_usage_and_every_figure_with_times(args):
    res = _bare(*args)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    for text in ("usage: python -m ntkrepro figure=<id> scale=<smoke|cpu|paper>", "figure.paper.<key>=<value>",
                 "`+` is accepted but never needed", "-m figure=lee-s9,lee-s10", "python -m ntkrepro.runs",
                 "<out_root>/multirun/", "--hydra-help"):
        assert text in res.stdout, text
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  ") and line.split()}
    for fid in figure_ids():
        assert fid in rows and _title(fid) in rows[fid], fid
    assert "min" in rows["lee-s6"]  # its measured cpu time


def test_hydra_flags_pass_through(tmp_path):
    res = _bare("--hydra-help")
    assert res.returncode == 0 and "Hydra" in res.stdout
    res = cli("--cfg", "job", "figure=lee-1", "figure.paper.panels.mnist_relu.steps=4", out_root=tmp_path)
    assert res.returncode == 0 and "steps: 4" in res.stdout
    assert not any(tmp_path.iterdir())


# the other commands (make figures / verify / plan / report / runs, bench, collect): the same convention
def _blocker(tmp_path):
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path / "a_file"


OTHER_COMMANDS = [
    (lambda o, f: ["verify", "SEEDS=abc", "FIGURES=jacot-1", f"ARGS=out_root={o}"],
     "argument --seeds: seeds must be comma-separated non-negative integers below 2^32"),
    (lambda o, f: ["verify", "SEEDS=1", "FIGURES=jacot-1 nonexist", f"ARGS=out_root={o}"],
     "argument --figures: unknown figure 'nonexist'"),
    (lambda o, f: ["verify", "SEEDS=1", "FIGURES=jacot-1", f"ARGS=out_root={o} figure.cpu.widthz=3"],
     "unknown setting figure.cpu.widthz for figure jacot-1"),
    (lambda o, f: ["figures", "FIGURES=nonexist", f"ARGS=out_root={o}"], "argument --figures: unknown figure"),
    (lambda o, f: ["figures", "FIGURES=jacot-1 lee-s9", f"ARGS=out_root={o} seed=-1"],
     "seed must be a non-negative integer below 2^32, got -1"),
    (lambda o, f: ["figures", "FIGURES=jacot-1", f"ARGS=out_root={f}/runs"],
     "cannot hold output folders: {f} is a file"),
    (lambda o, f: ["plan", "FIGURES=nonexist"], "argument --figures: unknown figure 'nonexist'"),
    (lambda o, f: ["plan", "FIGURES=lee-s9", "SHARDS=0"], "--shards must be a positive integer, got 0"),
    (lambda o, f: ["plan", "FIGURES=lee-s9", "ARGS=figure.paper.widthz=3"], "unknown setting figure.paper.widthz"),
    (lambda o, f: ["report", f"ARGS=--out-root={o} --dest={f}/report"], "--dest="),
    (lambda o, f: ["runs", f"ARGS=--out-root={o} --figure=nonexist"], "argument --figure: unknown figure"),
    (lambda o, f: ["collect"], "the following arguments are required: folders"),
    (lambda o, f: ["figures", "FIGURES=lee-s10", f"ARGS=out_root={o} figure=lee-s9"],
     "figure=lee-s9 among the settings: this command sets figure for each run; use FIGURES="),
    (lambda o, f: ["verify", "SEEDS=1", "FIGURES=lee-s10", f"ARGS=out_root={o} seed=5"],
     "seed=5 among the settings: this command sets seed for each run; use SEEDS="),
    (lambda o, f: ["report", f"ARGS=--out-root={o}"], "is not a folder; give the out_root the runs were written to"),
    (lambda o, f: ["runs", f"ARGS=--out-root={o}"], "is not a folder; give the out_root the runs were written to"),
]


@pytest.mark.parametrize("argv,message", OTHER_COMMANDS,
                         ids=[f"{a('o', 'f')[0]}-{i}" for i, (a, _) in enumerate(OTHER_COMMANDS)])
def test_other_commands_reject_bad_input_in_one_line(tmp_path, argv, message):
    out, blocker = tmp_path / "out", _blocker(tmp_path)
    res = make(*argv(out, blocker), timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert res.returncode != 0 and len(lines) == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert lines[0].startswith("error: ") and message.format(f=blocker) in lines[0], lines[0]
    assert "Traceback" not in res.stdout + res.stderr and "usage:" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written, not even out_root


@pytest.mark.parametrize("module,args,message", [
    ("ntkrepro.bench", ["--cases", "99"], "--cases must list numbers among"),
    ("ntkrepro.bench", ["--quick", "--cases", "3", "--out", "{f}"], "--out={f} cannot hold"),
    ("ntkrepro.bench", ["--timeout-s", "-1"], "--timeout-s must be positive, got -1.0"),
    ("ntkrepro.replot", [], "give one run folder"),
    ("ntkrepro.replot", ["{f}"], "{f}/settings.yaml not found")])
def test_python_m_commands_reject_bad_input_in_one_line(tmp_path, module, args, message):
    blocker = _blocker(tmp_path)
    res = subprocess.run([sys.executable, "-m", module, *[a.format(f=blocker) for a in args]],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
    assert res.returncode == 2 and message.format(f=blocker) in error_line(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_plan_goes_on_past_a_figure_that_lacks_a_setting():
    # figure.smoke.n_show exists for lee-s10 but not for liu-2 (as in make figures): liu-2 gets one line,
    # lee-s10 is still planned; a setting no listed figure has stops before any plan (OTHER_COMMANDS)
    res = make("plan", "SCALE=smoke", "FIGURES=liu-2 lee-s10", "ARGS=figure.smoke.n_show=3", timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert res.returncode != 0 and lines == [lines[0]] and lines[0].startswith(
        "error: liu-2: unknown setting figure.smoke.n_show for figure liu-2"), res.stderr[-2000:]
    assert "plan: lee-s10 at scale smoke" in res.stdout and "Traceback" not in res.stderr


def test_make_bench_writes_the_side_by_side_table(tmp_path):
    """`make bench` as typed (one quick case): both libraries timed on the same inputs, values
    compared, bench.csv and bench.md written in a run folder of its own."""
    import pandas as pd

    res = make("bench", f"ARGS=--quick --cases 3 --out {tmp_path}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    table = pd.read_csv(run / "bench.csv")
    assert set(table.side) == {"ours", "nt"} and (table.best_s > 0).all()
    assert (table.rel_diff_norm < 1e-6).all() and "| 3 |" in (run / "bench.md").read_text()


def test_a_pane_switches_between_a_fixed_and_a_relative_learning_rate():
    # lee-s5's panes set either lr or lr_fraction, the other null: both ways are accepted by the checks
    from ntkrepro import preflight

    for pane, fixed in (("fc", True), ("data", False)):
        lr, frac = ("0.5", "null") if fixed else ("null", "0.25")
        preflight.check(["figure=lee-s5", f"figure.paper.panes.{pane}.lr={lr}",
                         f"figure.paper.panes.{pane}.lr_fraction={frac}"], multirun=False)


def test_bench_fails_when_no_case_was_timed(tmp_path, monkeypatch, capsys):
    # every worker failed (timed out, crashed): the tables are written, and the exit status says so
    from ntkrepro.bench import __main__ as bench

    monkeypatch.setattr(bench, "_worker", lambda argv, timeout, env=None: {"id": argv[1], "error": "timed out"})
    assert bench.main(["--quick", "--cases", "1", "--no-memory", "--out", str(tmp_path)]) == 1
    assert "error: no case was timed" in capsys.readouterr().err
    assert list(tmp_path.glob("*/bench.md"))

