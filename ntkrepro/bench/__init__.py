"""Benchmark of ntkrepro against neural-tangents 0.6.5 (`make bench`, `python -m ntkrepro.bench`).

Cases (see `ntkrepro.bench.cases`):
  1. empirical NTK of a 784-1024-1024-1024-1 relu MLP on 128 MNIST inputs, float32 and float64:
     `ntkrepro.empirical.mlp_ntk` vs `nt.empirical_ntk_fn(implementation=1, 2, 3)`;  goal >= 10x.
  2. empirical NTK of a 3-conv (64 channels) CNN on 32 CIFAR-10 images:
     `ntkrepro.empirical.layerwise_ntk` vs nt's three implementations;  goal: at least as fast.
  3. analytic NTK of a depth-5 relu fc network on 4000 x 4000 inputs: `ntkrepro.kernels.fc` vs
     `stax` kernel_fn;  goal: at least as fast.
  4. analytic CNTK (Arora et al. 2019), GAP depth 6 and 21 and vanilla depth 21:
     `ntkrepro.kernels.cntk.cntk` vs `stax` kernel_fn;  goal >= 1.5x.

neural-tangents is imported only here, through `nt_shim.load_neural_tangents()`; it is never a
dependency of the core package.  Outputs: outputs/bench/<date_time>/bench.csv, bench.md, raw.json.
"""
