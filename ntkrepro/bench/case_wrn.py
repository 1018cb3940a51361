"""Benchmark case: one SGD-with-momentum step of the linearized wide residual network against one step
of the network itself (Lee et al. Fig. 4; `ntkrepro.wrn`, `ntkrepro.train.Trainer`).

The linearized step trains f_lin(theta, X_B) = f(theta_0, X_B) + J(theta_0, X_B)(theta - theta_0)
through one `jax.jvp` (no Jacobian is formed): its forward pass is the network's forward pass plus the
tangent pass, its gradient the transpose of the tangent pass, so it should cost a small multiple of a
network step.  Goal: linearized step time / network step time <= 3 (`GOAL_RATIO`).

Both steps are `Trainer.step_fn` (MSE over the batch and the outputs, momentum 0.9, the parameters
stored as theta_0 + delta for both), jitted alone (no compiled loop around them), on the same batch of
8 CIFAR-10 images (the shipped sample), float32; compilation is excluded (one warm-up call), time =
best of k calls, each ended by `jax.block_until_ready`.

Sizes: quick (channels 8), default (channels 64), full (channels 128); N = 1 (WRN-10), k = 10.

    python -m ntkrepro.bench.case_wrn [--quick | --full] [--reps K]
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

GOAL_RATIO = 3.0
CHANNELS = {"quick": 8, "default": 64, "full": 128, "paper": 1024}   # paper: the caption's width (a GPU)
BATCH = 8


def setup(size: str = "default"):
    """(network step, linearized step, description): zero-argument callables on fixed inputs."""
    from ntkrepro.bench.cases import _images
    from ntkrepro.models import ModelSpec
    from ntkrepro.train import Trainer
    from ntkrepro.wrn import depth_from_blocks

    channels = CHANNELS[size]
    x = jnp.asarray(_images("cifar10", BATCH), jnp.float32)
    labels = np.random.default_rng(0).integers(0, 10, BATCH)
    y = jnp.asarray(np.eye(10)[labels] - 0.1, jnp.float32)
    spec = ModelSpec(arch="wrn", width=channels, depth=depth_from_blocks(1), out_dim=10, w_var=1.0,
                     b_var=0.0)
    params0 = spec.init(jax.random.PRNGKey(0), x, jnp.float32)
    net = Trainer(spec.apply, loss="mse_per_output", lr=1.0, momentum=0.9, batch_size=BATCH, delta=True)
    lin = net.linearization()
    steps = {}
    for name, trainer in (("network", net), ("linearized", lin)):
        state = trainer.init(params0)
        step = jax.jit(trainer.step_fn)
        steps[name] = (lambda step=step, state=state: jax.block_until_ready(step(state, x, y))[0])
    desc = (f"one SGD-momentum step, WRN-10 (N = 1), {channels} channels, batch {BATCH} CIFAR-10 "
            f"32x32x3, k = 10, float32, {spec.n_params(x)} parameters")
    return steps["network"], steps["linearized"], desc


def measure(size: str = "default", reps: int = 5) -> dict:
    """Best-of-`reps` step times (compilation excluded) and their ratio."""
    net, lin, desc = setup(size)
    first = {}
    for name, fn in (("network", net), ("linearized", lin)):
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    times = {"network": [], "linearized": []}
    for _ in range(reps):                      # round-robin: load changes hit both alike
        for name, fn in (("network", net), ("linearized", lin)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["linearized"] / best["network"]
    return {"title": desc, "size": size, "reps": reps, "best_s": best, "first_call_s": first,
            "times_s": times, "ratio": ratio, "goal": f"<= {GOAL_RATIO:g}x", "goal_met": ratio <= GOAL_RATIO}


def bench(bench_id: str = "7-wrn", size: str = "default"):
    """The case as a `cases.Bench` for `python -m ntkrepro.bench` (case 7): the network step is
    impl 0 ("ours"), the linearized step impl 1 ("variant"); goal: ratio check impl 1 / impl 0 <= 3.
    Both return the loss at theta_0, where f_lin = f: the values must agree."""
    from ntkrepro.bench.cases import Bench, Impl

    net, lin, desc = setup(size)
    return Bench(id=bench_id, case=7, title=desc, dtype="float32", n_entries=BATCH,
                 impls=[Impl("ours: WRN step (Trainer.step_fn)", "ours", net),
                        Impl("ours: linearized WRN step (jax.jvp, Trainer.linearization)", "variant", lin)],
                 checks=[("ratio", 1, 0, GOAL_RATIO)],
                 notes=["SGD with momentum 0.9 on the per-output-mean MSE, parameters as theta_0 + "
                        "delta for both; each step jitted alone (no compiled loop), the same batch; "
                        "time per step (n_entries = the batch's examples)."])


def register() -> None:
    """Add case 7 to the benchmark registry (`cases.register`)."""
    from ntkrepro.bench.cases import Case, register as add

    add(Case(7, ("7-wrn",), lambda b, size: bench(b, size), 1.0,
             f"linearized step <= {GOAL_RATIO:g}x the network step", float32_ids=("7-wrn",)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ntkrepro.bench.case_wrn", description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    res = measure("quick" if args.quick else ("full" if args.full else "default"), max(1, args.reps))
    print(res["title"])
    for name, t in res["best_s"].items():
        print(f"  {name:<10} best {t * 1e3:8.1f} ms of {res['reps']} (first call {res['first_call_s'][name]:.1f} s)")
    print(f"  ratio linearized / network = {res['ratio']:.2f} (goal {res['goal']}: "
          f"{'met' if res['goal_met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
