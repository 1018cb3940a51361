"""One trainer for every experiment: a network or its linearization, full batch or minibatches.

    trainer = Trainer(spec.apply, loss="mse", lr=1.0, momentum=0.9, batch_size=64)
    result = fit(trainer, params0, x, y, steps=1000, record_at=log_steps(1000, 20),
                 observe=lambda step, state: {"f_test": trainer.predict(state, x_test)})

The model is ``apply_fn(params, x) -> (N,) or (N, k)``.  ``Trainer(..., linearized=True)`` trains
its first-order Taylor expansion at the initial parameters theta_0 (Lee et al. 2019 Eq. 5)

    f_lin(theta, x) = f(theta_0, x) + J(theta_0, x) (theta - theta_0),

evaluated with one forward-mode product (`jax.jvp`; no Jacobian is formed), with the very same loss,
optimizer and minibatches as the network.  `fit_side_by_side({"network": t, "linearized":
t.linearization()}, ...)` trains both and records their outputs at the same steps.

State.  A `TrainState` holds theta_0, the trainable variable, the optimizer state and the step.
With ``delta=True`` (always for the linearization) the variable is delta = theta - theta_0 and the
model sees theta_0 + delta, so a weight change far below the float32 ulp of the weight is still
accumulated exactly (Lee et al. Fig. 1: intermediate weights move by O(1/n)).  The state is a
pytree: it can be `jax.vmap`-ped (`fit(..., batched=True)`: a leading model axis on theta_0 and/or
a vector of learning rates) and saved / restored between recording points (`fit(..., state=...)`
resumes; the minibatch order is a function of (seed, step), so a resumed run sees the same batches).

Compilation.  The steps between two recording points run in one jitted ``lax.while_loop`` (it ends
after a traced number of steps, or where `stop` fires), so every segment length shares one
compilation.  ``fit(...,
host_loop=True)`` runs them instead as a Python loop over one jitted step (same arithmetic, same
minibatches; batched: model by model): for convolutional networks on CPU, where XLA compiles the
weight-gradient convolutions inside a loop body to a slow generic kernel (measured ~25x slower than
the same step jitted alone), and a vmapped convolution over several models' weights is slower than
the models one after another.

Losses (`LOSSES`; the paper writes the total loss, Eq. 2, and plots the average, footnote 6)::

    mse             1/(2N)  sum_n ||f_n - y_n||^2         (per-example mean; `linearize.mse_loss`)
    mse_total       1/2     sum_n ||f_n - y_n||^2         (Eq. 2)
    mse_per_output  1/(2Nk) sum_{n,c} (f_nc - y_nc)^2     (mean over examples and output units)
    xent            -1/N sum_n y_n . log softmax(f_n)     (Eq. S5 / N)

Divergence is recorded, never raised: non-finite values propagate, `FitResult.diverged` says so.
"""
from __future__ import annotations

import dataclasses
import math
import time
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntkrepro.errors import ConfigError
from ntkrepro.linearize import _same_shape, mse_loss, xent_loss


def _mse_total(f, y):
    return mse_loss(f, y) * f.shape[0]


def _mse_per_output(f, y):
    _same_shape("mse_per_output", f, y)
    return 0.5 * jnp.mean((f - y) ** 2)


LOSSES: dict[str, Callable] = {"mse": mse_loss, "mse_total": _mse_total,
                               "mse_per_output": _mse_per_output, "xent": xent_loss}
OPTIMIZERS = ("sgd",)


def loss_function(loss: str | Callable) -> Callable:
    """The loss called `loss` (one of `LOSSES`), or `loss` itself when it is callable."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ConfigError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}") from None


# ----------------------------------------------------------------------------------------------
# step grids and small numerics shared by the experiments


def log_steps(steps: int, points: int) -> np.ndarray:
    """0, then about `points` log-spaced step counts up to `steps` (integers, unique, `steps` last)."""
    if steps <= 0:
        return np.zeros(1, dtype=int)
    grid = np.unique(np.round(np.geomspace(1, steps, max(2, points))).astype(int))
    return np.concatenate([[0], grid])


def rmse(a, b) -> float:
    """Root mean squared difference in float64 (NaN when either side diverged)."""
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def accuracy(logits, labels) -> np.ndarray:
    """Share of argmax hits over the examples axis of logits (..., N, k) against labels (N,); an
    example with a non-finite logit counts as wrong (a diverged model scores, it does not crash)."""
    logits = np.asarray(logits, np.float64)
    ok = np.all(np.isfinite(logits), axis=-1)
    pred = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=-1)
    return np.mean((pred == np.asarray(labels)) & ok, axis=-1)


def tree_finite(tree) -> bool:
    """True when every leaf of `tree` is finite (host-side check)."""
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


def batch_schedule(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch_size) int32 example indices: epochs of fresh permutations (numpy
    default_rng(seed)), each cut into n // batch_size batches; the remainder of an epoch is dropped."""
    if not 1 <= batch_size <= n:
        raise ConfigError(f"batch_size must be between 1 and the {n} training examples, got {batch_size}")
    per_epoch = n // batch_size
    epochs = max(1, math.ceil(steps / per_epoch))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(n)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
            for _ in range(epochs)]
    return np.concatenate(rows)[:max(steps, 1)].astype(np.int32)


# ----------------------------------------------------------------------------------------------
# the trainer


class TrainState(NamedTuple):
    """Everything a run needs to continue: a pytree (vmappable, savable)."""
    step: Any        # int32 scalar: steps taken so far
    params0: Any     # theta_0: the initial parameters (the linearization's expansion point)
    variable: Any    # what the optimizer updates: theta, or delta = theta - theta_0
    opt_state: Any


class Trainer:
    """A model, a loss and an optimizer; `fit` runs it.

    apply_fn      ``apply_fn(params, x)``, e.g. `ModelSpec.apply` or a Flax module's apply.
    loss          a name in `LOSSES` or ``loss(f, y) -> scalar``.
    lr, momentum  plain SGD (heavy-ball momentum when momentum > 0, optax.sgd) with learning rate lr;
                  lr may also be given per model to `init` (vmapped learning-rate grids).
    optimizer     any optax GradientTransformation instead (then lr and momentum are not used).
    batch_size    None: full batch; else minibatches from `batch_schedule`.
    linearized    train f_lin (Eq. 5) instead of f.
    delta         store theta_0 + delta (implied by linearized).
    """

    def __init__(self, apply_fn: Callable, *, loss: str | Callable = "mse", lr: float = 1.0,
                 momentum: float = 0.0, optimizer: optax.GradientTransformation | None = None,
                 batch_size: int | None = None, linearized: bool = False, delta: bool = False):
        if optimizer is None and not lr > 0:
            raise ConfigError(f"learning rate must be positive, got {lr}")
        if momentum < 0 or momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.apply_fn = apply_fn
        self.loss_fn = loss_function(loss)
        self.lr, self.momentum, self.optimizer = lr, momentum, optimizer
        self.batch_size = None if batch_size is None else int(batch_size)
        self.linearized = bool(linearized)
        self.delta = bool(delta) or self.linearized

    def linearization(self) -> "Trainer":
        """A trainer of this model's linearization f_lin (Eq. 5): the same loss, optimizer, learning
        rate, momentum and batch size (so `fit` with the same seed sees the same minibatches)."""
        return Trainer(self.apply_fn, loss=self.loss_fn, lr=self.lr, momentum=self.momentum,
                       optimizer=self.optimizer, batch_size=self.batch_size, linearized=True)

    # -- the model being trained --------------------------------------------------------------
    def model_output(self, params0, variable, x):
        """Outputs of the trained model (network or linearization) at `variable`."""
        if not self.delta:
            return self.apply_fn(variable, x)
        if not self.linearized:
            return self.apply_fn(_add(params0, variable), x)
        tangent = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), variable, params0)
        f0, df = jax.jvp(lambda p: self.apply_fn(p, x), (params0,), (tangent,))
        return f0 + df

    def params(self, state: TrainState):
        """theta at this state (for the linearization: theta_0 + delta, the weights it has moved to)."""
        return _add(state.params0, state.variable) if self.delta else state.variable

    def predict(self, state: TrainState, x):
        """Outputs of the trained model on x (jitted; one model's state: `predict_models` takes a
        batched state)."""
        return self._predict(state.params0, state.variable, x)

    def predict_models(self, state: TrainState, x, host_loop: bool = False, chunk: int | None = None):
        """(models, N, ...) outputs of every model of a batched state: one vmapped program, or
        (host_loop, as in `fit`) model by model, cheaper for convolutional networks on CPU; at most
        `chunk` inputs per call (memory), the state split into its models once."""
        size = chunk or max(1, len(x))
        starts = range(0, len(x), size)
        if not host_loop:
            return jnp.concatenate([self._predict_vmapped(state.params0, state.variable, x[i:i + size])
                                    for i in starts], axis=1)
        return jnp.stack([jnp.concatenate([self._predict(s.params0, s.variable, x[i:i + size]) for i in starts])
                          for s in split_models(state)])

    def loss(self, state: TrainState, x, y):
        """The loss of the trained model on (x, y) (jitted)."""
        return self._loss(state.params0, state.variable, x, y)

    # -- state --------------------------------------------------------------------------------
    def _sgd(self, lr=1.0, dtype=None):
        """optax.sgd with its hyperparameters in the optimizer state (so they can differ per model)."""
        return optax.inject_hyperparams(optax.sgd, hyperparam_dtype=dtype)(
            learning_rate=lr, momentum=self.momentum or None)

    def init(self, params0, lr=None) -> TrainState:
        """State at step 0.  `lr` overrides the trainer's learning rate (may be traced: vmap over it).
        The learning rate is stored in the training dtype (that of the first parameter)."""
        variable = jax.tree_util.tree_map(jnp.zeros_like, params0) if self.delta else params0
        if self.optimizer is not None:
            opt_state = self.optimizer.init(variable)
        else:
            dtype = jax.tree_util.tree_leaves(params0)[0].dtype
            lr = jnp.asarray(self.lr if lr is None else lr, dtype)
            opt_state = self._sgd(lr, dtype).init(variable)
        return TrainState(jnp.zeros((), jnp.int32), params0, variable, opt_state)

    # -- compiled pieces ----------------------------------------------------------------------
    @cached_property
    def _predict(self):
        return jax.jit(self.model_output)

    @cached_property
    def _predict_vmapped(self):
        return jax.jit(jax.vmap(self.model_output, in_axes=(0, 0, None)))

    @cached_property
    def _loss(self):
        return jax.jit(self._objective)

    def _objective(self, params0, variable, x, y):
        return self.loss_fn(self.model_output(params0, variable, x), y)

    def step_fn(self, state: TrainState, x, y):
        """One step on the batch (x, y): (loss at the current parameters, the next state)."""
        value, grads = jax.value_and_grad(self._objective, argnums=1)(state.params0, state.variable, x, y)
        transform = self.optimizer if self.optimizer is not None else self._sgd()
        updates, opt_state = transform.update(grads, state.opt_state, state.variable)
        variable = optax.apply_updates(state.variable, updates)
        return value, TrainState(state.step + 1, state.params0, variable, opt_state)

    def advance_fn(self, state: TrainState, x, y, n_steps, schedule=None, stop=None, loss0=None):
        """`n_steps` steps from `state` (pure: jit or vmap it) -> (state, stopped).

        schedule: (steps, batch) example indices, row `state.step` is the next batch (None: full batch).
        stop: ``stop(loss, loss0) -> bool``, checked before every update on the loss at the current
        parameters; once true the state stays where it is (`stopped`)."""

        def batch(step):
            if schedule is None:
                return x, y
            idx = schedule[jnp.minimum(step, schedule.shape[0] - 1)]
            return x[idx], y[idx]

        def body(carry):
            i, st, _ = carry
            value, new = self.step_fn(st, *batch(st.step))
            if stop is None:
                return i + 1, new, jnp.asarray(False)
            done = stop(value, loss0)
            return i + 1, jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), st, new), done

        def cond(carry):
            i, _, done = carry
            return (i < n_steps) & ~done

        _, state, done = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, jnp.asarray(False)))
        return state, done


def _add(a, b):
    return jax.tree_util.tree_map(lambda u, v: u + v.astype(u.dtype), a, b)


# ----------------------------------------------------------------------------------------------
# fit: run to the end, pausing at recording points


@dataclasses.dataclass
class FitResult:
    state: TrainState
    steps: list[int]                 # recording points reached, increasing (unbatched: the step a
                                     # stopped run stopped at replaces the point it did not reach)
    records: list[Any]               # observe(step, state) at each of them
    losses: np.ndarray               # full training loss at each recording point ((T,) or (T, models))
    stopped: Any                     # `stop` ended the run early (bool, or one per model)
    diverged: Any                    # the loss or the parameters became non-finite (bool or per model)


def fit(trainer: Trainer, params0, x, y, *, steps: int, record_at=(), observe: Callable | None = None,
        seed: int = 0, lr=None, batched: bool = False, shared_params: bool = False,
        state: TrainState | None = None, stop: Callable | None = None,
        on_record: Callable | None = None, track_loss: bool = True, loss0=None,
        host_loop: bool = False) -> FitResult:
    """Train `steps` steps (from `state` if given, else from `params0`), pausing at every step in
    `record_at` and at `steps` to call ``observe(step, state)`` (its results are kept in
    `FitResult.records`) and ``on_record(step, state)`` (e.g. to save a checkpoint).  A run resumed
    from a saved `state` at step s > 0 records only the points after s.

    batched: train several models in one vmapped program: `params0` has a leading model axis
        (unless `shared_params`: every model starts from the same theta_0), and/or `lr` is a vector
        with one learning rate per model.
    stop: ``stop(loss, loss0) -> bool`` checked at every step on the loss at the current parameters
        (loss0: the full training loss at step 0, computed here unless given, as a run resumed
        from a saved state must); a model that meets it stops there
        (e.g. ``lambda l, l0: ~jnp.isfinite(l) | (l <= 1e-6 * l0)``); the run ends when all have.
    Full batch when ``trainer.batch_size`` is None or covers the data, else minibatches
    ``batch_schedule(len(x), batch_size, steps, seed)`` indexed by the step counter.
    host_loop: step from Python, one jitted step at a time (batched: model by model; see the module
        docstring).
    """
    record = sorted({int(s) for s in record_at if 0 <= int(s) <= steps} | {int(steps)})
    schedule = None
    if trainer.batch_size is not None and trainer.batch_size < len(x):
        schedule = jnp.asarray(batch_schedule(len(x), trainer.batch_size, steps, seed))
    init, advance, loss = _cached_programs(trainer, batched, shared_params, lr, stop, host_loop)
    resumed_at = -1 if state is None else int(np.max(np.asarray(state.step)))
    if state is None:
        state = init(params0, lr)
    if batched:
        state = shard_models(state)
    ck = _Checkpoints.open(state)
    run = _Progress(state, loss0 if loss0 is not None or stop is None else loss(state, x, y))
    if ck is not None:
        done = ck.restore(run)
        if done is not None:
            return done
    try:
        for target in record:
            current = int(np.max(np.asarray(run.state.step)))
            if target < current or (target == current and (target == resumed_at > 0 or target in run.reached)):
                continue  # recorded before the state was saved
            while target > current and not np.all(run.stopped):
                n = target - current if ck is None else ck.segment(target - current)
                t0 = time.monotonic()
                run.state, done = advance(run.state, x, y, jnp.asarray(n, jnp.int32), schedule, run.loss0)
                run.stopped = run.stopped | np.asarray(done)
                if ck is not None:
                    ck.after_segment(n, time.monotonic() - t0, run)
                current = int(np.max(np.asarray(run.state.step)))
            at = target if batched else int(run.state.step)   # a stopped model is where it stopped
            if run.reached and at == run.reached[-1]:           # it stopped exactly at the last point
                break
            run.reached.append(at)
            if track_loss:
                run.losses.append(np.asarray(loss(run.state, x, y), np.float64))
            if observe is not None:
                run.records.append(observe(at, run.state))
            if on_record is not None:
                on_record(at, run.state)
            if ck is not None:
                ck.after_record(run)
            if stop is not None and np.all(run.stopped):
                break
    finally:
        if ck is not None:
            ck.close()
    if ck is not None:
        ck.save(run, final=batched)
    return run.result(batched)


class _Progress:
    """What `fit` has done so far (what a checkpoint holds)."""

    def __init__(self, state, loss0):
        self.state, self.loss0 = state, loss0
        self.reached, self.records, self.losses = [], [], []
        self.stopped = np.zeros(np.shape(state.step), bool)

    def meta(self) -> dict:
        return {"reached": self.reached, "records": self.records, "losses": self.losses,
                "stopped": self.stopped, "loss0": None if self.loss0 is None else np.asarray(self.loss0)}

    def load(self, state, meta: dict) -> None:
        self.state = state
        self.reached, self.records, self.losses = meta["reached"], meta["records"], meta["losses"]
        self.stopped = np.asarray(meta["stopped"])
        self.loss0 = None if meta["loss0"] is None else jnp.asarray(meta["loss0"])

    def result(self, batched: bool) -> FitResult:
        loss_arr = np.asarray(self.losses, np.float64)
        diverged = ~_finite_models(self.state.variable, batched)
        if loss_arr.size:
            diverged = diverged | ~np.all(np.isfinite(loss_arr), axis=0)
        if not batched:
            return FitResult(self.state, self.reached, self.records, loss_arr, bool(np.any(self.stopped)),
                             bool(diverged))
        return FitResult(self.state, self.reached, self.records, loss_arr, self.stopped, diverged)


class _Checkpoints:
    """`fit`'s side of `ntkrepro.checkpoint`: restore, save periodically, stop on request."""

    PAUSE_SECONDS = 30.0   # a compiled segment runs at most about this long, so a stop request waits
                           # at most that long before the state is saved

    def __init__(self, sess, key: str, abstract_state):
        self.sess, self.key, self.abstract = sess, key, abstract_state
        self.since_save, self.sec_per_step = 0, None
        self.clock = _clock(sess.every_seconds)
        sess.in_fit = True

    @classmethod
    def open(cls, state):
        from ntkrepro import checkpoint

        sess = checkpoint.current()
        if sess is None:
            return None
        return cls(sess, sess.next_key(), jax.eval_shape(lambda s: s, state))

    def restore(self, run: _Progress):
        found = self.sess.load(self.key, self.abstract)
        if found is None:
            return None
        state, meta = found
        run.load(state, meta)
        return None if meta.get("final") is None else run.result(meta["final"])

    def segment(self, remaining: int) -> int:
        n = min(remaining, self.sess.every_steps - self.since_save)
        if self.sec_per_step:
            n = min(n, int(self.PAUSE_SECONDS / self.sec_per_step))
        return max(1, n)

    def after_segment(self, n: int, seconds: float, run: _Progress) -> None:
        self.sec_per_step = seconds / max(n, 1)
        self.since_save += n
        if self.sess.stop_signal is not None:
            self.save(run)
            from ntkrepro.runstate import Interrupted

            raise Interrupted(self.sess.stop_signal)
        if self.since_save >= self.sess.every_steps or self.clock.due():
            self.save(run)

    def after_record(self, run: _Progress) -> None:
        if self.clock.due():
            self.save(run)

    def save(self, run: _Progress, final: bool | None = None) -> None:
        """Save the progress; `final` (the fit's `batched`) marks a finished fit."""
        self.sess.save(self.key, run.state, {**run.meta(), "final": final})
        self.since_save = 0
        self.clock.reset()

    def close(self) -> None:
        self.sess.in_fit = False


def _clock(seconds: float):
    from ntkrepro.checkpoint import Clock

    return Clock(seconds)


def shard_models(state: TrainState) -> TrainState:
    """Spread a batched state over all local devices along its model axis (one device: unchanged).
    The vmapped program then runs its models in parallel, one group per device (`jax.sharding`)."""
    devices = jax.local_devices()
    n_models = int(np.shape(state.step)[0]) if np.ndim(state.step) else 1
    if len(devices) < 2 or n_models % len(devices):
        return state
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sharding = NamedSharding(Mesh(np.asarray(devices), ("models",)), PartitionSpec("models"))
    return jax.device_put(state, sharding)


def _cached_programs(trainer: Trainer, batched: bool, shared_params: bool, lr, stop, host_loop: bool):
    """`_programs`, built once per trainer and configuration: a loop of `fit` calls with one trainer
    (e.g. over initialisations) compiles once, not once per call (~0.5 s of CPU each).  Kept on the
    trainer, keyed by `stop` too (pass the same function to reuse them)."""
    lr_axis = 0 if lr is not None and np.ndim(lr) == 1 else None
    cache = trainer.__dict__.setdefault("_fit_programs", {})
    key = (id(trainer), bool(batched), bool(shared_params), lr_axis, stop, bool(host_loop))
    if key not in cache:
        cache[key] = _programs(trainer, batched, shared_params, lr, stop, host_loop)
    return cache[key]


def _programs(trainer: Trainer, batched: bool, shared_params: bool, lr, stop, host_loop: bool = False):
    """Jitted (init, advance, loss) for one model or a vmapped batch of models."""
    def advance(state, x, y, n, schedule, loss0):
        return trainer.advance_fn(state, x, y, n, schedule, stop, loss0)

    def loss(state, x, y):
        return trainer._objective(state.params0, state.variable, x, y)

    if not batched:
        if host_loop:
            return jax.jit(trainer.init), _host_advance(trainer, stop), jax.jit(loss)
        return jax.jit(trainer.init), jax.jit(advance), jax.jit(loss)
    p_axis = None if shared_params else 0
    lr_axis = 0 if lr is not None and np.ndim(lr) == 1 else None
    if p_axis is None and lr_axis is None:
        raise ConfigError("batched training needs a model axis: batched params0 or a vector of lrs")
    init = jax.jit(jax.vmap(trainer.init, in_axes=(p_axis, lr_axis)))
    if host_loop:
        vadvance = _each_model(_host_advance(trainer, stop))
    else:
        vadvance = jax.jit(jax.vmap(advance, in_axes=(0, None, None, None, None, 0 if stop else None)))
    return init, vadvance, jax.jit(jax.vmap(loss, in_axes=(0, None, None)))


def prefer_host_loop(convolutional: bool = True) -> bool:
    """The `host_loop` to pass to `fit` / `Trainer.predict_models`: True for a convolutional network
    on the CPU backend (see the module docstring), False otherwise."""
    return bool(convolutional) and jax.default_backend() == "cpu"


def split_models(state: TrainState) -> list[TrainState]:
    """The models of a batched state (leading model axis), one unbatched state each."""
    return [jax.tree_util.tree_map(lambda a, m=m: a[m], state) for m in range(np.shape(state.step)[0])]


def _each_model(advance):
    """A batched `advance` from an unbatched one: each model in turn, its slice of the state
    advanced and the slices stacked again at the recording point (with `_host_advance`, for CPU,
    where one model's step is cheaper than a vmapped step over several: Arora et al.'s 8-channel
    depth-21 CNN, 3 models: 15 ms a model against 72 ms vmapped, 192 ms vmapped in the compiled loop)."""
    def advance_models(state, x, y, n, schedule, loss0):
        outs = [advance(s, x, y, n, schedule, None if loss0 is None else loss0[m])
                for m, s in enumerate(split_models(state))]
        return (jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(o[0] for o in outs)),
                jnp.stack([o[1] for o in outs]))
    return advance_models


def _host_advance(trainer: Trainer, stop):
    """`advance` as a Python loop over one jitted step (no compiled loop around the step)."""
    def one(state, x, y, schedule, loss0):
        if schedule is None:
            xb, yb = x, y
        else:
            idx = schedule[jnp.minimum(state.step, schedule.shape[0] - 1)]
            xb, yb = x[idx], y[idx]
        value, new = trainer.step_fn(state, xb, yb)
        if stop is None:
            return new, jnp.asarray(False)
        done = stop(value, loss0)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), state, new), done

    one = jax.jit(one)

    def advance(state, x, y, n, schedule, loss0):
        done = jnp.asarray(False)
        for _ in range(int(n)):
            state, done = one(state, x, y, schedule, loss0)
            if stop is not None and bool(done):
                break
        return state, done

    return advance


def _finite_models(tree, batched: bool):
    """Per model (leading axis when batched): every entry of every leaf is finite."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if not batched:
        return np.bool_(all(np.all(np.isfinite(a)) for a in leaves))
    return np.all([np.isfinite(a).reshape(a.shape[0], -1).all(axis=1) for a in leaves], axis=0)


# ----------------------------------------------------------------------------------------------
# several models side by side (a network beside its linearization)


def output_observer(trainer: Trainer, inputs: Mapping[str, Any], chunk: int | None = None) -> Callable:
    """An observer for `fit`: ``observe(step, state) -> {name: outputs}`` of the trained model on
    each named input set, as float64 numpy arrays, evaluated `chunk` inputs at a time (None: all)."""
    def observe(step, state):
        out = {}
        for name, x in inputs.items():
            size = len(x) if not chunk else int(chunk)
            out[name] = np.concatenate([np.asarray(trainer.predict(state, x[i:i + size]), np.float64)
                                        for i in range(0, len(x), max(size, 1))])
        return out
    return observe


def fit_side_by_side(trainers: Mapping[str, Trainer], params0, x, y, *, inputs: Mapping[str, Any],
                     chunk: int | None = None, observe: Callable | None = None,
                     **fit_kw) -> dict[str, FitResult]:
    """Train every trainer from the same theta_0 on the same data (with the same `seed`, the same
    minibatches), pausing at the same recording points, e.g. a network beside its linearization:

        res = fit_side_by_side({"network": t, "linearized": t.linearization()}, params0, x, y,
                               inputs={"test": x_test}, steps=1000, record_at=log_steps(1000, 30))
        res["linearized"].records[i]["test"]        # f_lin on x_test at res["linearized"].steps[i]

    Each record is {name: outputs on inputs[name]} (float64, `output_observer`), merged with what
    ``observe(trainer, step, state)`` returns (a dict) when given.  `fit_kw`: `fit`'s keywords
    (steps, record_at, seed, track_loss, ...).  Returns {name: FitResult} in the order of `trainers`."""
    results = {}
    for name, trainer in trainers.items():
        outputs = output_observer(trainer, inputs, chunk)

        def record(step, state, trainer=trainer, outputs=outputs):
            rec = outputs(step, state)
            return rec if observe is None else {**rec, **observe(trainer, step, state)}

        results[name] = fit(trainer, params0, x, y, observe=record, **fit_kw)
    return results
