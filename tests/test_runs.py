"""Run folders: unique per run, states in run.json (finished, failed, interrupted, stale), sweeps,
`make figure-<id>`, `make figures`, `python -m ntkrepro.runs` and conf/timings.yaml."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from hydra import compose, initialize_config_dir

from helpers import REPO, cli, make, run_files, run_record, start
from ntkrepro import runner, runs, runstate, timings
from ntkrepro.errors import DataError
from ntkrepro.registry import CONF_DIR, figure_ids

CHEAP = ("figure.smoke.widths=[8,16]", "figure.smoke.mc_samples=[1,2]")  # lee-s9 / lee-s10 in a second
SLOW = ("figure=lee-s9", "scale=smoke", "figure.smoke.widths=[64,128,256,512]",
        "figure.smoke.mc_samples=[8,32]", "figure.smoke.task.n_train=16")  # several seconds, short steps


def test_make_figure_runs_the_figure(tmp_path):
    res = make("figure-lee-s10", "SCALE=smoke", f"ARGS=out_root={tmp_path} {' '.join(CHEAP)}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Nothing to be done" not in res.stdout
    record = run_record(tmp_path / "lee-s10" / "smoke" / "latest")
    assert record["state"] == "finished" and record["scale"] == "smoke"


def test_make_figures_goes_on_past_a_failure_and_ends_with_a_table(tmp_path):
    # figure.smoke.n_show exists for lee-s10 but not for liu-2: liu-2 is rejected, lee-s10 still runs
    res = make("figures", "SCALE=smoke", "FIGURES=liu-2 lee-s10",
               f"ARGS=out_root={tmp_path} figure.smoke.n_show=3 {' '.join(CHEAP)}")
    assert res.returncode != 0
    table = res.stdout[res.stdout.index("make figures SCALE=smoke: 1 of 2 finished"):].splitlines()
    assert table[1].split()[:2] == ["figure", "status"] and "paper claims passed/evaluated" in table[1]
    assert re.match(r"liu-2\s+error \(exit 2\)\s+-\s+\S+ (s|min)$", table[2]), table
    assert re.match(r"lee-s10\s+finished\s+0/0 \(4 not evaluated\)\s+\S+ (s|min)$", table[3]), table
    assert "unknown setting figure.smoke.n_show for figure liu-2" in res.stderr
    assert run_record(tmp_path / "lee-s10" / "smoke" / "latest")["state"] == "finished"


def test_make_figures_fails_on_a_figure_that_ran_no_run(tmp_path):
    # plan=true prints a plan and exits 0 without a run: the batch must not call that figure done
    res = make("figures", "SCALE=smoke", "FIGURES=lee-s10", f"ARGS=out_root={tmp_path} plan=true")
    assert res.returncode != 0 and "figures] Error 1" in res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    assert "0 of 1 finished" in res.stdout and "error (exit 0)" in res.stdout


def test_make_verify_runs_at_cpu_scale_unless_told(tmp_path):
    # as python -m ntkrepro.verify: smoke evaluates no claims, so it is never the silent default
    assert "--scale cpu " in make("-n", "verify").stdout
    assert "--scale smoke " in make("-n", "verify", "SCALE=smoke").stdout


def test_a_stop_signal_ends_the_process_without_the_interpreters_shutdown(monkeypatch, capsys):
    # a normal exit (sys.exit) ran the interpreter's shutdown while XLA threads still computed and
    # crashed with SIGSEGV (exit 139) in 3 of 14 trials; the console is flushed first
    import logging

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(logging, "shutdown", lambda: exits.append("logs flushed"))  # not this test process's
    print("interrupted by SIGTERM", flush=False)
    runstate.exit_interrupted(143)
    assert exits == ["logs flushed", 143] and "interrupted by SIGTERM" in capsys.readouterr().out
    source = (REPO / "ntkrepro" / "runner.py").read_text() + (REPO / "ntkrepro" / "cli.py").read_text()
    assert "sys.exit(128 + sig.signum)" not in source and source.count("runstate.exit_interrupted(128 + sig.signum)") == 2


def test_a_late_error_leaves_no_new_out_root(tmp_path):
    # found by the run (its data), after Hydra made the run folder under a new out_root: all of it goes
    res = cli("figure=lee-s9", "task@figure.paper.task=mnist", "data.source=npz", "data.root=/nonexistent/dir",
              out_root=tmp_path / "new" / "root")
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_timings_do_not_change_the_code_version():
    # `runs --timings` rewrites conf/timings.yaml: a split run keeps its folder, verify its finished runs
    from ntkrepro import manifest

    listed = manifest._git(manifest.REPO, "ls-files", "--", *manifest._PATHSPEC) or ""
    assert "conf/config.yaml" in listed and "conf/timings.yaml" not in listed


def test_sweep_over_figures_and_seeds(tmp_path):
    res = cli("-m", "figure=lee-s9,lee-s10", "scale=smoke", "seed=0,1", *CHEAP, out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-[0-9a-f]{6}", sweep.name)
    assert (sweep / "multirun.yaml").is_file()
    folders = sorted(p.relative_to(sweep).as_posix() for p in sweep.glob("*/smoke/*"))
    assert folders == ["lee-s10/smoke/2_seed=0", "lee-s10/smoke/3_seed=1",
                       "lee-s9/smoke/0_seed=0", "lee-s9/smoke/1_seed=1"]  # swept values only
    for folder in folders:
        record, man = run_record(sweep / folder), json.loads((sweep / folder / "manifest.json").read_text())
        assert record["state"] == "finished" and man["seed"] == int(folder[-1]) == record["seed"]
        assert man["figure"] == folder.split("/")[0] and man["command"].startswith("python -m ntkrepro -m")
    for fid, newest in (("lee-s9", "1_seed=1"), ("lee-s10", "3_seed=1")):
        link = tmp_path / fid / "smoke" / "latest"
        assert not os.path.isabs(os.readlink(link)) and link.resolve() == (sweep / fid / "smoke" / newest)


def test_runs_started_together_get_their_own_folders(tmp_path):
    procs = [start("figure=lee-s10", "scale=smoke", f"seed={seed}", "figure.smoke.n_show=3", *CHEAP,
                   out_root=tmp_path) for seed in (0, 1)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    folders = sorted(p for p in (tmp_path / "lee-s10" / "smoke").iterdir() if not p.is_symlink())
    assert len(folders) == 2
    for folder in folders:
        seed = json.loads((folder / "manifest.json").read_text())["seed"]
        assert f"seed={seed}" in (folder / ".hydra" / "overrides.yaml").read_text()
        settings = yaml.safe_load((folder / "settings.yaml").read_text())
        assert settings["seed"] == seed and settings["n_show"] == 3  # a key the smoke preset lacks, no `+`


@pytest.fixture
def slow_run(tmp_path):
    """A run that takes several seconds, once its run.json says running -> (process, run folder)."""
    proc = start(*SLOW, out_root=tmp_path)
    try:
        deadline = time.time() + 300
        while not run_files(tmp_path, "run.json"):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)
        (found,) = run_files(tmp_path, "run.json")
        yield proc, found.parent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_marks_the_run_interrupted(tmp_path, slow_run, sig, code):
    proc, folder = slow_run
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert err.strip() == f"interrupted by {sig.name}; {folder} marked interrupted", err
    record = run_record(folder)
    assert record["state"] == "interrupted" and record["signal"] == sig.name and record["ended"]
    assert not (tmp_path / "lee-s9" / "smoke" / "latest").exists()


def test_a_killed_run_reads_as_stale(tmp_path, slow_run):
    proc, folder = slow_run
    assert runstate.read(folder)["state"] == "running"
    proc.kill()
    proc.wait()
    assert runstate.read(folder)["state"] == "stale"
    res = cli("--out-root", str(tmp_path), out_root=tmp_path, module="ntkrepro.runs")
    (row,) = res.stdout.splitlines()[1:]
    assert row.split()[:3] == ["lee-s9", "smoke", "stale"] and str(folder) in row


def test_a_slurm_job_that_squeue_no_longer_lists_reads_as_stale(tmp_path, monkeypatch):
    # a part killed on a compute node (out of memory, node lost) never marks itself: the login node's
    # squeue tells, so resubmitting the split run computes it again instead of skipping it forever
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    record = {"state": "running", "host": "node-17", "pid": 4242, "slurm_job": "123456"}
    for listed, expected in (("RUNNING", "running"), ("", "stale")):
        squeue.write_text(f"#!/bin/sh\necho '{listed}'\n")
        squeue.chmod(0o755)
        assert runstate.state(record) == expected
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert runstate.state(record) == "stale"
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    assert runstate.state(record) == "running"  # cannot tell: not stale
    assert runstate.state({**record, "slurm_job": None}) == "running"


def test_a_folder_is_claimed_once(tmp_path):
    first = runstate.RunFolder(tmp_path / "run")
    first.claim(figure="x")
    with pytest.raises(runstate.FolderTaken, match="already belongs to another run"):
        runstate.RunFolder(tmp_path / "run").claim(figure="y")
    assert runstate.read(tmp_path / "run")["figure"] == "x"


@pytest.fixture
def fake_experiment(tmp_path, monkeypatch):
    """A composed lee-s10 config whose experiment module raises what the test asks for."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def configure(error: str):
        name = f"fake_experiment_{abs(hash((str(tmp_path), error)))}"
        (tmp_path / f"{name}.py").write_text("from ntkrepro.errors import DataError\n"
                                             "from ntkrepro.runstate import Interrupted\n"
                                             f"def run(cfg):\n    raise {error}\n")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["figure=lee-s10", f"out_root={tmp_path}"])
        cfg.figure.experiment = name
        return cfg
    return configure


def test_a_crash_marks_the_run_failed_and_keeps_its_folder(tmp_path, fake_experiment):
    folder = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        runner.run_figure(fake_experiment("ZeroDivisionError('boom')"), folder)
    assert run_record(folder)["state"] == "failed" and "ZeroDivisionError: boom" in (folder / "FAILED.txt").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run")] == ["run"]  # no -FAILED rename


def test_bad_input_removes_the_folder_and_a_signal_marks_it(tmp_path, fake_experiment):
    with pytest.raises(DataError):
        runner.run_figure(fake_experiment("DataError('no data')"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(runstate.Interrupted):
        runner.run_figure(fake_experiment("Interrupted(15)"), tmp_path / "stopped")
    assert runstate.read(tmp_path / "stopped")["signal"] == "SIGTERM"


def _interrupted_with_checkpoints(folder, cfg, started, checkpoints=True):
    """A run folder as an interrupted run of `cfg`'s settings and code leaves it."""
    from ntkrepro import manifest, split

    run_cfg = runner.effective_settings(cfg)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "state": "interrupted", "host": socket.gethostname(), "pid": 1, "started": started,
        "settings_hash": split.settings_hash(run_cfg), "code_version": manifest.code_version()}))
    if checkpoints:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "step_100").write_text("saved state\n")
    return folder


def test_checkpoints_are_adopted_from_sweep_jobs_and_given_back_on_bad_input(tmp_path, fake_experiment):
    # an interrupted sweep job's checkpoints (<out_root>/multirun/...) are found, past a newer interrupted
    # run that saved none; a run that then stops on bad input (its data gone) gives them back
    cfg = fake_experiment("DataError('data root gone')")
    older = _interrupted_with_checkpoints(tmp_path / "multirun" / "s1" / "lee-s10" / "smoke" / "0_seed=0", cfg,
                                          "2026-01-01T00:00:01")
    _interrupted_with_checkpoints(tmp_path / "lee-s10" / "smoke" / "newer", cfg, "2026-01-01T00:00:02",
                                  checkpoints=False)
    with pytest.raises(DataError):
        runner.run_figure(cfg, tmp_path / "lee-s10" / "smoke" / "run")
    assert not (tmp_path / "lee-s10" / "smoke" / "run").exists()
    assert (older / "checkpoints" / "step_100").is_file() and runstate.read(older).get("resumed_by") is None
    crash = fake_experiment("ZeroDivisionError('boom')")  # a crash keeps what it adopted
    job = _interrupted_with_checkpoints(tmp_path / "multirun" / "s2" / "lee-s10" / "smoke" / "0", crash,
                                        "2026-01-01T00:00:03")
    with pytest.raises(ZeroDivisionError):
        runner.run_figure(crash, tmp_path / "lee-s10" / "smoke" / "run2")
    assert (tmp_path / "lee-s10" / "smoke" / "run2" / "checkpoints" / "step_100").is_file()
    assert runstate.read(job)["resumed_by"] == str(tmp_path / "lee-s10" / "smoke" / "run2")


def test_the_float_precision_is_part_of_a_runs_settings(fake_experiment):
    # x64=false computes other numbers: its parts must not be collected, nor its checkpoints adopted, with x64=true's
    from ntkrepro import split

    cfg = fake_experiment("ZeroDivisionError('unused')")
    on = runner.effective_settings(cfg)
    cfg.x64 = False
    off = runner.effective_settings(cfg)
    assert on.x64 is True and off.x64 is False and split.settings_hash(on) != split.settings_hash(off)


def _fake_run(root, name, **record):
    folder = root / record["figure"] / record["scale"] / name
    folder.mkdir(parents=True)
    base = {"host": socket.gethostname(), "pid": os.getpid(), "started": f"2026-01-01T00:00:0{name[-1]}"}
    (folder / "run.json").write_text(json.dumps({**base, **record}))
    return folder


def test_runs_lists_each_state_and_rewrites_timings(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    counts = {"passed": 4, "failed": 0, "not_evaluated": 0, "paper_passed": 4, "paper_evaluated": 4}
    _fake_run(tmp_path, "r1", figure="lee-s9", scale="cpu", state="finished", wall_time_s=80.0, claims=counts)
    _fake_run(tmp_path, "r2", figure="lee-s9", scale="cpu", state="finished", wall_time_s=90.0, claims=counts)
    _fake_run(tmp_path, "r3", figure="lee-s9", scale="smoke", state="failed", wall_time_s=1.0)
    _fake_run(tmp_path, "r4", figure="lee-s10", scale="smoke", state="interrupted", signal="SIGTERM")
    _fake_run(tmp_path, "r5", figure="lee-s10", scale="cpu", state="running", pid=dead.pid)
    _fake_run(tmp_path, "r6", figure="lee-s10", scale="paper", state="running")  # this process: alive
    rows = [line.split()[:4] for line in runs.listing(tmp_path).splitlines()]
    assert rows == [["figure", "scale", "state", "claims"], ["lee-s10", "smoke", "interrupted", "-"],
                    ["lee-s10", "cpu", "stale", "-"], ["lee-s10", "paper", "running", "-"],
                    ["lee-s9", "smoke", "failed", "-"], ["lee-s9", "cpu", "finished", "4/4"],
                    ["lee-s9", "cpu", "finished", "4/4"]]
    assert runs.listing(tmp_path, figure="lee-s9", scale="cpu").count("finished") == 2

    # not the preset's time: one part, a collected run, a resumed run, a changed setting
    _fake_run(tmp_path, "r7", figure="lee-s9", scale="cpu", state="finished", wall_time_s=5.0, shards=2, shard=1)
    _fake_run(tmp_path, "r8", figure="lee-s9", scale="cpu", state="finished", wall_time_s=6.0, collected_from=["a"])
    _fake_run(tmp_path, "r9", figure="lee-s9", scale="cpu", state="finished", wall_time_s=7.0, resumed_from="x")
    _fake_run(tmp_path, "r9", figure="lee-s10", scale="cpu", state="finished", wall_time_s=8.0,
              overrides=["figure=lee-s10", "scale=cpu", "out_root=/x", "++figure.cpu.widths=[8]"])
    path = tmp_path / "timings.yaml"
    path.write_text(timings.TIMINGS_FILE.read_text())
    before, text = timings.load(path), path.read_text()
    assert timings.update(tmp_path / "lee-s10", path) == [] and path.read_text() == text  # nothing measured
    assert timings.update(tmp_path, path, figure="lee-s9", scale="smoke") == [] and path.read_text() == text
    assert timings.update(tmp_path, path) == ["lee-s9.cpu"]
    after = timings.load(path)
    assert after["times"]["lee-s9"]["cpu"] == 90.0  # the latest finished run at the preset
    assert "lee-s9.cpu" not in after["from_readme"] and "lee-s9.cpu" in before["from_readme"]
    assert after["times"]["lee-s10"] == before["times"]["lee-s10"]  # no finished run at the preset: kept
    assert before["note"] in after["note"] and "lee-s9.cpu measured" in after["note"]
    rows = {ln.split(":")[0].strip(): ln for ln in path.read_text().splitlines() if ln.startswith("  ")}
    assert rows["jacot-1"] == next(ln for ln in text.splitlines() if ln.startswith("  jacot-1:"))  # comment kept
    assert "# cpu: measured" in rows["lee-s9"]


def test_runs_lists_the_run_a_latest_link_points_at(tmp_path, capsys):
    folder = _fake_run(tmp_path, "r1", figure="lee-s9", scale="cpu", state="finished", wall_time_s=80.0)
    runstate.link_latest(tmp_path, "lee-s9", "cpu", folder)
    assert runs.main(["--out-root", str(tmp_path / "lee-s9" / "cpu" / "latest")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["lee-s9", "cpu", "finished"]


def test_timings_file_lists_registered_figures():
    data = timings.load()
    assert data["machine"] and data["date"] and set(data["from_readme"]) <= {
        f"{fid}.{scale}" for fid in data["times"] for scale in ("cpu", "paper")}
    for fid, row in data["times"].items():
        assert fid in figure_ids() and set(row) == {"smoke", "cpu", "paper"}, fid
        assert all(v is None or (isinstance(v, (int, float)) and v > 0) for v in row.values()), row
