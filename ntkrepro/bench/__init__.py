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
  5. exact CNTK at depth 21 on 32x32x3 images (vanilla, GAP; float64, float32), ours only, next to a
     memory-traffic floor and an arithmetic floor measured in-process; goals: GAP within 1.5x of
     the memory-traffic floor, all depths in one pass <= 1.1x the deepest alone; the accuracy
     change float32 causes on a 2K-style column (`ntkrepro.bench.arora`).
  6. Table 2's random features: empirical NTK of Arora et al.'s 128-channel vanilla CNN, depth 21,
     `layerwise_ntk` vs nt's `empirical_ntk_fn`;  goal >= 2x.
Cases are registered in one table, `cases.CASES` (`cases.register(Case(...))`).

neural-tangents is imported only here, through `nt_shim.load_neural_tangents()`; it is never a
dependency of the core package.  Outputs: outputs/bench/<date_time>/bench.csv, bench.md, raw.json.
"""
