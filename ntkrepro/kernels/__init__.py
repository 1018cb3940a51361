"""Analytic infinite-width kernels (NNGP and NTK).

* `fc`: fully connected networks, Lee et al. 2019 App. E (Eqs. S26-S29), both parameterizations;
  returns a `Kernel` (nngp, ntk).  Layer maps and T / Tdot live in `ntkrepro.kernels.fc` and
  `ntkrepro.kernels.activations`.
* `cntk`: Arora et al. 2019's exact convolutional NTK (vanilla CNN and global average pooling).
* `blockwise`: any of them block by block under a memory budget, over all devices, resumable.
* `kernel_regression`, `solve_kernel`, `accuracy`: exact (no ridge) float64 kernel regression
  K(test, train) K(train, train)^-1 Y (Arora et al. App. A), a one-line error when not solvable.
"""
from ntkrepro.kernels.blocks import BlockPlan, blockwise, plan_blocks
from ntkrepro.kernels.cntk import cntk
from ntkrepro.kernels.fc import Kernel, fc
from ntkrepro.kernels.regression import accuracy, kernel_regression, solve_kernel

__all__ = ["BlockPlan", "Kernel", "accuracy", "blockwise", "cntk", "fc", "kernel_regression",
           "plan_blocks", "solve_kernel"]
