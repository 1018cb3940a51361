"""ntkrepro: reproduce the figures of the founding papers on infinitely wide networks and the NTK.

Core modules (never importing from `experiments/`): `nets` (Flax networks), `kernels` (analytic
NNGP/NTK), `empirical` (finite-width kernels), `data` (MNIST / CIFAR-10 / synthetic inputs),
`runner` (Hydra entry, output folders, claims, manifest).
"""
__version__ = "0.1.0"
