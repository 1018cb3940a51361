"""First-order Taylor expansion of a network in its parameters, and one training step for both.

`linearize` returns (Lee et al. 2019 Eq. 5)::

    f_lin(theta, x) = f(theta_0, x) + J(theta_0, x) (theta - theta_0),   J = d f / d theta,

evaluated with one forward-mode product (`jax.jvp`), so the N x P Jacobian is never formed.
`f_lin` has the same signature as the network's `apply_fn(params, x)`, takes the same parameter
pytree and is differentiable in `params` (reverse mode transposes the JVP into a VJP), so the very
same optax optimizer, loss and minibatches train either model: see `make_train_step`.

Loss normalisation
------------------
The paper writes the *total* loss L = sum_{(x, y) in D} l(f(x), y) (Eq. 2 and footnote 6) with
l(f, y) = 1/2 ||f - y||^2 for MSE (Sec. 2.2) and l(f, y) = -sum_i y_i log softmax(f)_i for
cross-entropy (Eq. S5); its plots show the average loss.  The helpers here average over the
examples of the batch::

    mse_loss(f, y)  = 1/(2 N) sum_n ||f_n - y_n||^2          = L_total / N
    xent_loss(f, y) = -1/N sum_n sum_i y_ni log softmax(f_n)_i = L_total / N

so gradient descent with learning rate eta on these losses is gradient descent with learning rate
eta / N on the paper's total loss (eta_paper = eta / N for a full batch of N examples).  The closed
forms in `ntkrepro.dynamics` take `loss_scale="mean"` (= 1/N) for this convention and
`loss_scale="total"` (= 1, the default) for the paper's.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def linearize(apply_fn: Callable, params0) -> Callable:
    """The linearization f_lin(params, x) = f0(x) + J0(x) (params - params0) (Lee et al. Eq. 5).

    `apply_fn(params, x)` is the network; `params0` the expansion point (its initialization).
    Computed as ``f0, df = jax.jvp(apply_fn(., x), (params0,), (params - params0,))`` (no Jacobian
    is formed); the tangent is cast to each leaf's dtype.  f_lin(params0, x) == f(params0, x)
    and both models have the same parameter gradients at params0.
    """

    def f_lin(params, x):
        delta = jax.tree_util.tree_map(lambda p, p0: (p - p0).astype(p0.dtype), params, params0)
        f0, df = jax.jvp(lambda p: apply_fn(p, x), (params0,), (delta,))
        return f0 + df

    return f_lin


def mse_loss(f, y):
    """1/2 times the mean over examples of ||f_n - y_n||^2 (the paper's total MSE loss divided by N).

    `f` and `y` have shape (N,) or (N, k); the first axis indexes examples, the sum runs over the
    rest.  Gradient: d loss / d f = (f - y) / N.
    """
    _same_shape("mse_loss", f, y)
    d = (f - y).reshape(f.shape[0], -1)
    return 0.5 * jnp.mean(jnp.sum(d * d, axis=-1))


def _same_shape(loss: str, f, y) -> None:
    """Outputs and targets of one shape: (N, 1) against (N, 10) would broadcast into a wrong loss."""
    if jnp.shape(f) != jnp.shape(y):
        raise ValueError(f"{loss}: the model's outputs have shape {jnp.shape(f)}, the targets {jnp.shape(y)}; "
                         "give the model one output per target column (models.from_config(..., "
                         "out_dim=task.out_dim))")


def xent_loss(f, y):
    """Softmax cross-entropy averaged over examples: -1/N sum_n y_n . log softmax(f_n) (Eq. S5 / N).

    `y` holds one-hot (or any probability) rows of shape (N, k).  Gradient: (softmax(f) - y) / N.
    """
    _same_shape("xent_loss", f, y)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f, axis=-1), axis=-1))


def total_loss(loss: Callable) -> Callable:
    """The paper's total-loss convention: `loss` (an average over examples) times N."""

    def summed(f, y):
        return loss(f, y) * f.shape[0]

    return summed


def make_train_step(apply_fn: Callable, loss: Callable, optimizer: optax.GradientTransformation):
    """A jitted step ``step(params, opt_state, x, y) -> (params, opt_state, loss_value)``.

    Works identically for a network (`apply_fn = model.apply`-like, ``apply_fn(params, x)``) and for
    its linearization (`linearize(apply_fn, params0)`), with any optax optimizer and any batch
    (pass minibatches of the data to train with SGD).  `loss_value` is the loss at `params`,
    before the update.  Nothing inspects the values: a diverging run yields inf/NaN parameters and
    losses that the caller records; the step never raises on them.  Initialize the state with
    ``optimizer.init(params)``.
    """

    def objective(params, x, y):
        return loss(apply_fn(params, x), y)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(objective)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, value

    return step
