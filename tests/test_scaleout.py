"""Paper scale on a cluster (issue 15): split runs and collect, submitit, checkpoints and resume,
many devices, the cost plan, and the one-line errors of each."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import REPO, cli, compose_in_process, make, run_files, run_in_process
from smoke_pin import PIN_TOLERANCE, compare, pinned

from ntkrepro import runstate
from ntkrepro.registry import CONF_DIR, SCALES, figure_ids

FIGURES = figure_ids()


def _one_line_error(res, fragment: str):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert fragment in lines[0], lines[0]


def _metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv")


def _sorted(m: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in m.columns if c != "value"]
    return m.sort_values(keys, na_position="first").reset_index(drop=True)


def _finished(out_root: Path, fid: str) -> list[Path]:
    return [p for p, r in runstate.find(out_root) if r.get("figure") == fid and r["state"] == "finished"
            and not r.get("part")]


# ----------------------------------------------------------------------------------------------
# split and collect


@pytest.mark.parametrize("fid", FIGURES)
def test_split_run_collected_equals_the_unsplit_run(fid):
    """Every figure splits along its sweep points, and its parts, concatenated as `collect` does,
    are the unsplit run's rows: the pinned smoke metrics, which test_figures checks the unsplit run
    of the command line against (the runner's part of it is tested below, through the command line)."""
    from ntkrepro import split

    run_cfg, module = compose_in_process(fid)
    points = split.points(module, run_cfg) or []
    assert len(points) >= 2, f"{fid} has {len(points)} sweep points at smoke scale: nothing to split"
    parts = [run_in_process(fid, subset=split.select(points, 2, k, fid))[0] for k in (0, 1)]
    collected = pd.concat(parts, ignore_index=True)
    assert compare(_sorted(pinned(fid)), _sorted(collected), **PIN_TOLERANCE) == []


def test_split_through_the_command_line_and_collect(tmp_path):
    whole = cli("figure=lee-s10", "scale=smoke", out_root=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    res = cli("-m", "figure=lee-s10", "scale=smoke", "shards=2", "shard=0,1", out_root=tmp_path / "split")
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = next((tmp_path / "split" / "shards" / "lee-s10" / "smoke").iterdir())
    col = cli(str(sweep), out_root=tmp_path, module="ntkrepro.collect")
    assert col.returncode == 0, col.stderr[-3000:]
    (unsplit,), (collected,) = _finished(tmp_path / "whole", "lee-s10"), _finished(tmp_path / "split", "lee-s10")
    # one folder throughout: the parts and the merged run lie in the sweep folder the hints name
    assert sorted(p.name for p in sweep.glob("shard=*")) == ["shard=0", "shard=1"]
    assert collected.parent == sweep and f"python -m ntkrepro.collect {sweep}" in res.stdout
    assert compare(_sorted(_metrics(unsplit)), _sorted(_metrics(collected)), rtol=1e-6, atol=1e-9) == []
    assert json.loads((collected / "claims.json").read_text()) and (collected / "lee-s10.png").is_file()
    assert runstate.read(collected)["command"] == f"python -m ntkrepro.collect {sweep}"
    # one part alone is not the figure: replot says so instead of drawing half of it
    _one_line_error(cli(str(sweep / "shard=0"), out_root=tmp_path, module="ntkrepro.replot"),
                    "is part 0 of a split run of 2 parts")


def test_two_job_split_through_submitit_local_and_collect(tmp_path):
    res = cli("-m", "figure=lee-s10", "scale=smoke", "shards=2", "shard=range(2)", "hydra/launcher=local",
              out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = next((tmp_path / "shards" / "lee-s10" / "smoke").iterdir())
    parts = [r for _, r in runstate.find(sweep) if r.get("part")]
    assert sorted(r["shard"] for r in parts) == [0, 1] and len({r["pid"] for r in parts}) == 2
    assert list(sweep.glob(".submitit/*"))  # real submitit jobs
    col = cli(str(sweep), out_root=tmp_path, module="ntkrepro.collect")
    assert col.returncode == 0, col.stderr[-3000:]
    (latest := tmp_path / "lee-s10" / "smoke" / "latest").resolve()
    assert latest.is_symlink() and "collected-" in os.readlink(latest)


def test_the_readme_cluster_workflow_through_make(tmp_path):
    """The README's steps 1-5 as typed (with submitit's local launcher for Slurm and smoke scale):
    plan, submit, watch, submit again (nothing left to run: it names the collect command), collect."""
    plan = make("plan", "FIGURES=lee-s10", "SHARDS=2", "SCALE=smoke", timeout=300)
    assert plan.returncode == 0 and "lee-s10 shard=1" in plan.stdout, plan.stderr[-3000:]
    submit = ("figure-lee-s10", "SCALE=smoke", "SHARDS=2", "LAUNCHER=local", f"ARGS=out_root={tmp_path}")
    first = make(*submit)
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep,) = (tmp_path / "shards" / "lee-s10" / "smoke").iterdir()
    watch = make("runs", f"ARGS=--figure lee-s10 --scale smoke --out-root {tmp_path}")
    rows = [ln for ln in watch.stdout.splitlines() if f"{sweep}/shard=" in ln]
    assert watch.returncode == 0 and len(rows) == 2 and all(" finished " in r for r in rows), watch.stdout
    again = make(*submit)
    assert again.returncode == 0 and "all 2 requested parts have finished" in again.stdout, again.stderr[-3000:]
    assert f"python -m ntkrepro.collect {sweep}" in again.stdout
    merged = make("collect", f"DIR={sweep}")
    assert merged.returncode == 0, merged.stderr[-3000:]
    (collected,) = sweep.glob("collected-*")
    assert (collected / "claims.json").is_file() and (collected / "metrics.csv").is_file()
    assert (tmp_path / "lee-s10" / "smoke" / "latest").resolve() == collected.resolve()


def test_running_the_same_split_again_computes_only_what_is_missing(tmp_path):
    args = ("-m", "figure=lee-s10", "scale=smoke", "shards=2", "shard=range(2)")
    assert cli(*args, out_root=tmp_path).returncode == 0
    sweep = next((tmp_path / "shards" / "lee-s10" / "smoke").iterdir())
    part1 = next(p for p, r in runstate.find(sweep) if r.get("shard") == 1)
    record = json.loads((part1 / "run.json").read_text())
    (part1 / "run.json").write_text(json.dumps({**record, "state": "interrupted"}))  # as if killed
    again = cli(*args, out_root=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "shard=1" in again.stdout + again.stderr and "shard=0" not in again.stdout.split("#0")[-1]
    assert runstate.read(part1)["state"] == "finished" and runstate.read(part1)["attempt"] == 2
    done = cli(*args, out_root=tmp_path)
    assert done.returncode == 0 and "all 2 requested parts have finished" in done.stdout


def test_collect_refuses_an_incomplete_or_mixed_sweep(tmp_path):
    assert cli("figure=lee-s10", "scale=smoke", "shards=2", "shard=0", out_root=tmp_path).returncode == 0
    sweep = next((tmp_path / "shards" / "lee-s10" / "smoke").iterdir())
    res = cli(str(sweep), out_root=tmp_path, module="ntkrepro.collect")
    _one_line_error(res, "1 of 2 parts not finished: shard=1 (never started)")
    assert cli("figure=lee-s10", "scale=smoke", "shards=2", "shard=1", out_root=tmp_path).returncode == 0
    part1 = next(p for p, r in runstate.find(sweep) if r.get("shard") == 1)
    record = json.loads((part1 / "run.json").read_text())
    (part1 / "run.json").write_text(json.dumps({**record, "code_version": "0123abcd"}))
    _one_line_error(cli(str(sweep), out_root=tmp_path, module="ntkrepro.collect"),
                    "come from different code versions")
    assert not list(sweep.rglob("collected-*"))


BAD = [
    (["figure=lee-s10", "shards=2", "shard=2"], "shard must be in [0, 2)"),
    (["figure=lee-s10", "shards=0"], "shards must be a positive integer"),
    (["figure=lee-s10", "shards=99", "shard=0"], "fewer than shards=99"),
    (["figure=lee-s10", "plan=maybe"], "plan must be true or false"),
    (["figure=lee-s10", "mutation=nonsense"], "unknown mutation 'nonsense'"),
    (["figure=lee-s10", "device=cuda"], "unknown device 'cuda'; use device=auto"),
    (["figure=lee-s10", "shards=abc"], "shards must be a positive integer, got 'abc'"),
    (["figure=lee-s10", "shards=2", "shard=abc"], "shard must be a non-negative integer below shards, got 'abc'"),
    (["-m", "figure=lee-s10", "shards=99", "shard=range(99)"], "fewer than shards=99"),
    (["-m", "figure=lee-s10", "shards=2", "shard=range(2)", "seed=0,1"],
     "a split run (shards > 1) sweeps only shard, but seed=0,1 sweeps several values"),
    (["-m", "figure=lee-s10", "shards=2", "shard=range(2)", "hydra/launcher=nope"],
     "unknown launcher hydra/launcher=nope; choose one of: basic, local, slurm_gpu"),
]


@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_scale_out_input_is_one_line(tmp_path, args, fragment):
    _one_line_error(cli(*args, "scale=smoke", out_root=tmp_path), fragment)
    assert not list(tmp_path.rglob("*"))  # nothing written: no run folder, no sweep folder


@pytest.mark.skipif(bool(__import__("shutil").which("sbatch")), reason="this machine has Slurm")
def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path):
    # a split run submitted from a laptop: one line naming the fix, not submitit's traceback
    res = make("figure-lee-s10", "SCALE=smoke", "SHARDS=2", "LAUNCHER=slurm_gpu", f"ARGS=out_root={tmp_path}")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert res.returncode != 0 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: hydra/launcher=slurm_gpu submits Slurm jobs, but sbatch is not"), lines[0]
    assert not list(tmp_path.rglob("*"))


def test_a_part_still_running_is_left_out_not_launched_again(tmp_path):
    # the cluster workflow's "submit again" while a job still runs: the others run, that one is named
    args = ("-m", "figure=lee-s10", "scale=smoke", "shards=2", "shard=range(2)")
    from ntkrepro import sweeps
    from ntkrepro.preflight import _parse

    sweep = sweeps.folder(_parse(list(args[1:]) + [f"out_root={tmp_path}"]), str(tmp_path))
    busy = runstate.RunFolder(sweep / "shard=0")
    busy.claim(figure="lee-s10", scale="smoke", shards=2, shard=0)  # this (live) process holds part 0
    res = cli(*args, out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shard=0 is still running" in res.stdout and "left out" in res.stdout
    assert runstate.read(sweep / "shard=1")["state"] == "finished"
    assert runstate.read(sweep / "shard=0")["pid"] == os.getpid()  # not taken over
    again = cli(*args, out_root=tmp_path)
    assert again.returncode == 0 and "1 have finished and 1 are still running" in again.stdout, again.stdout


def test_a_launcher_that_is_not_installed_names_the_extra(monkeypatch):
    import importlib.util

    from ntkrepro import preflight
    from ntkrepro.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if "submitit" in name else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[cluster\]'"):
        preflight.check(["figure=lee-s10", "hydra/launcher=slurm_gpu"], True)


# ----------------------------------------------------------------------------------------------
# the device a job runs on


def _has_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_device_gpu_without_a_gpu_stops_a_job_in_one_line_and_writes_nothing(tmp_path):
    # what a Slurm job of the GPU launcher does on a node where jax was installed without CUDA: stop at
    # once (not run a paper preset on the CPU for its whole time limit); through make, as a user types it
    res = make("figure-lee-s10", "SCALE=smoke", f"ARGS=device=gpu out_root={tmp_path / 'out'}", timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert res.returncode != 0 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: device=gpu but jax finds no GPU here (backend 'cpu'"), lines[0]
    assert "pip install -e '.[cuda]'" in lines[0] and "Traceback" not in res.stdout + res.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_check_device():
    from ntkrepro.errors import ConfigError
    from ntkrepro.runner import check_device

    for device in ("auto", "gpu"):
        for scale in SCALES:
            assert check_device(device, scale, "gpu") is None
    with pytest.raises(ConfigError, match=r"device=gpu but jax finds no GPU here \(backend 'cpu', cpu:0\)"):
        check_device("gpu", "smoke", "cpu", "cpu:0")
    with pytest.raises(ConfigError, match=r"device=gpu .*backend 'tpu'"):
        check_device("gpu", "paper", "tpu")
    assert check_device("auto", "smoke", "cpu") is None and check_device("auto", "cpu", "cpu") is None
    warning = check_device("auto", "paper", "cpu")
    assert "scale=paper on jax's 'cpu' backend" in warning and "pip install -e '.[cuda]'" in warning


def test_the_gpu_launcher_runs_its_jobs_with_device_gpu():
    # make -n: the command each target would run; only the Slurm GPU launcher requires a GPU
    def command(*args):
        res = make("-n", "figure-lee-1", "SCALE=paper", *args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "device=gpu" in command("SHARDS=2", "LAUNCHER=slurm_gpu")
    assert "device=gpu" not in command("SHARDS=2", "LAUNCHER=local")
    assert "device=gpu" not in command("SHARDS=2") and "device=gpu" not in command()


def test_device_does_not_change_the_sweep_folder(tmp_path):
    # a part resumed with device=auto (or on another node) continues the same split run
    from ntkrepro import sweeps
    from ntkrepro.preflight import _parse

    base = ["figure=lee-1", "scale=paper", "shards=2"]
    assert sweeps.folder(_parse([*base, "device=gpu"]), str(tmp_path)) == sweeps.folder(_parse(base), str(tmp_path))


def test_the_cuda_extra_installs_a_gpu_build_of_jax():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("jax[cuda12]") for dep in extras["cuda"])
    readme = (REPO / "README.md").read_text()
    assert "pip install -e '.[cluster,cuda]'" in readme


def test_launcher_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["figure=lee-s10", "hydra/launcher=slurm_gpu",
                                           "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node == 1 and launcher.partition == "gpu" and launcher.account == "lab"
    assert "submitit" in launcher._target_


# ----------------------------------------------------------------------------------------------
# preemption-safe training


RESUME = ["figure=lee-1", "scale=smoke", "figure.smoke.steps=3000", "figure.smoke.widths=[64]",
          "checkpoint.every_steps=100"]


def _start(args, out_root):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ntkrepro", *args, f"out_root={out_root}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out_root: Path, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if run_files(out_root, "checkpoints/fit-0000/meta.pkl"):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("no checkpoint was written")


def test_a_run_killed_with_sigkill_resumes_and_gives_the_same_metrics(tmp_path):
    straight = cli(*RESUME, out_root=tmp_path / "a")
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = _start(RESUME, tmp_path / "b")
    _wait_for_checkpoint(tmp_path / "b", proc)
    proc.kill()
    proc.wait()
    killed = [r for _, r in runstate.find(tmp_path / "b")]
    assert [r["state"] for r in killed] == ["stale"]           # never mistaken for finished
    again = cli(*RESUME, out_root=tmp_path / "b")
    assert again.returncode == 0, again.stderr[-3000:]
    (resumed,) = _finished(tmp_path / "b", "lee-1")
    assert runstate.read(resumed)["resumed_from"]
    (reference,) = _finished(tmp_path / "a", "lee-1")
    assert compare(_metrics(reference), _metrics(resumed), rtol=0, atol=0) == []


def test_sigterm_saves_a_checkpoint_and_marks_the_run_interrupted(tmp_path):
    proc = _start(RESUME, tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    ((folder, record),) = runstate.find(tmp_path)
    assert record["state"] == "interrupted" and record["signal"] == "SIGTERM"
    assert (folder / "checkpoints" / "fit-0000" / "meta.pkl").is_file()


def test_kernel_blocks_of_a_killed_run_are_not_recomputed(tmp_path):
    import jax.numpy as jnp

    from ntkrepro import checkpoint, kernels

    calls, cache = [], tmp_path / "ck" / "kernels" / "k"

    def kernel(a, b):
        calls.append(1)
        if len(list(cache.glob("block_*.npz"))) >= 2 and not (tmp_path / "second").exists():
            raise KeyboardInterrupt  # killed once two blocks are saved
        return kernels.fc(a, b, depth=1).ntk

    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)))
    kernels.blockwise(kernel, x, block_size=2)           # every block computed: the calls of a full run
    full_calls = len(calls)
    with checkpoint.session(tmp_path / "ck"):
        with pytest.raises(KeyboardInterrupt):
            kernels.blockwise(kernel, x, block_size=2, cache_dir=checkpoint.kernel_cache("k"), key="fc1")
    done = len(list(cache.glob("block_*.npz")))
    assert done >= 2
    (tmp_path / "second").touch()
    calls.clear()
    with checkpoint.session(tmp_path / "ck"):
        full = kernels.blockwise(kernel, x, block_size=2, cache_dir=checkpoint.kernel_cache("k"), key="fc1")
    n_blocks = len(list(cache.glob("block_*.npz")))
    assert len(calls) <= n_blocks - done < full_calls  # the saved blocks are read back, not recomputed
    np.testing.assert_allclose(np.asarray(full), np.asarray(kernels.fc(x, depth=1).ntk), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# many devices in one job


def test_vmapped_models_sharded_over_four_devices_equal_one_device(tmp_path):
    script = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from ntkrepro.models import ModelSpec
from ntkrepro.train import Trainer, fit
x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 5)))
y = jnp.asarray(np.random.default_rng(1).standard_normal((16, 2)))
spec = ModelSpec(width=16, depth=2, out_dim=2)
params = jax.vmap(lambda k: spec.init(k, x))(jax.random.split(jax.random.PRNGKey(0), 4))
res = fit(Trainer(spec.apply, lr=0.1, momentum=0.9, batch_size=4), params, x, y, steps=20, batched=True)
leaf = jax.tree_util.tree_leaves(res.state.variable)[0]
print(len(jax.devices()), len(leaf.sharding.device_set))
np.save("OUT", np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(res.state.variable)]))
"""
    out = {}
    for n in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        path = tmp_path / f"d{n}.npy"
        res = subprocess.run([sys.executable, "-c", script.replace("OUT", str(path))], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.split() == [str(n), str(n)]           # the models are spread over every device
        out[n] = np.load(path)
    np.testing.assert_allclose(out[4], out[1], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# the cost plan


@pytest.mark.parametrize("scale", [s for s in SCALES if s != "smoke"])
@pytest.mark.parametrize("fid", FIGURES)
def test_plan_composes_for_every_figure_and_scale(fid, scale):
    """Nothing runs: every job's work comes from XLA's cost analysis of abstract inputs. Here the
    first point of each job at cpu and paper scale (usually the largest: the full plan of every
    figure compiles hundreds of programs, minutes of CPU); every point of every figure is planned at
    smoke scale by `make plan SCALE=smoke` below."""
    from ntkrepro import plan

    jobs = plan.jobs(fid, scale, first_only=True)
    assert jobs and all(j.costs for j in jobs)
    assert all(c.flops >= 0 and c.calls >= 1 and c.peak_memory > 0 for j in jobs for c in j.costs)
    assert sum(j.flops for j in jobs) > 0


@pytest.mark.parametrize("fid,point", [
    ("arora-t1", {"column": "CNN-V", "depth": 21}),     # nine vmapped 1024-channel CNNs needed 217 GiB
    ("lee-s5", {"pane": "cnn", "depth": 32, "n_train": 128, "width": 256, "trial": 0}),  # its kernel: 103 GiB
])
def test_the_largest_paper_points_fit_an_80_gb_gpu(fid, point):
    """The paper-scale points that needed more memory than an A100 / H100 holds (as the plan's
    memory note said) now fit: one CNN at a time, the CNN kernel in blocks of examples."""
    from ntkrepro import costs, plan, split

    _, run_cfg, module = plan.compose(fid, "paper")
    assert point in split.points(module, run_cfg)
    pieces = module.cost(run_cfg, point)
    peak = max(pieces, key=lambda c: c.peak_memory)
    assert peak.peak_memory < costs.ACCELERATORS["A100"]["memory"] / 2, (peak.name, peak.peak_memory / 2 ** 30)


def test_plan_on_the_command_line_prints_the_jobs_and_writes_nothing(tmp_path):
    res = cli("figure=lee-s9", "scale=paper", "shards=3", "plan=true", out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "lee-s9 shard=2" in res.stdout and "GPU-h" in res.stdout and "A100" in res.stdout
    assert not list(tmp_path.iterdir())


def test_make_plan_lists_the_costliest_pieces():
    res = make("plan", "FIGURES=lee-s10", "SCALE=smoke", "ARGS=--pieces 2")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("piece "))
    assert lines[head].split()[-1] == "share"
    shares = [float(ln.split()[-1].rstrip("%")) for ln in lines[head + 1:head + 3]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05, lines[head:head + 4]
    assert lines[head + 3].startswith("(1 more piece)")     # lee-s10 smoke: three pieces
    bad = make("plan", "FIGURES=lee-s10", "SCALE=smoke", "ARGS=--pieces -1")
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error: ")]
    assert bad.returncode == 2 and len(errors) == 1 and "--pieces must be 0 or a positive integer" in errors[0]


def test_make_plan_prints_for_every_figure():
    """`make plan` (paper scale unless SCALE is given) plans every figure; SCALE=smoke keeps it quick
    here, the paper scale of each figure is composed above."""
    res = subprocess.run(["make", "plan", "SCALE=smoke"], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for fid in FIGURES:
        assert f"plan: {fid} at scale smoke" in res.stdout
    totals = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("total ")]
    assert len(totals) == len(FIGURES) and all(float(t[1]) > 0 and "GPU-h" in t for t in totals), totals
