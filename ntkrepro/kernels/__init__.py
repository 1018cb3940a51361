"""Analytic infinite-width kernels (NNGP and NTK).

* `fc`: fully connected networks, Lee et al. 2019 App. E (Eqs. S26-S29), both parameterizations;
  returns a `Kernel` (nngp, ntk).  Layer maps and T / Tdot live in `ntkrepro.kernels.fc` and
  `ntkrepro.kernels.activations`.
"""
from ntkrepro.kernels.fc import Kernel, fc

# --- convolutional kernels (ntkrepro/kernels/cntk.py) ---

__all__ = ["Kernel", "fc"]
