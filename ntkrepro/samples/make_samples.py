"""Regenerate the real-data samples shipped in this folder from a data root.

    python ntkrepro/samples/make_samples.py --root ../shared/datasets

(run from the repository root; the root must hold mnist.npz and cifar10_partial.npz or cifar10.npz).
Writes mnist_sample.npz (first 2000 train + first 500 test MNIST images) and cifar10_sample.npz
(first 1000 train + first 200 test CIFAR-10 images, i.e. the real first images of data_batch_1 and
test_batch), keys x_train y_train x_test y_test note, images uint8 as in the source files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CUTS = {"mnist": (("mnist.npz",), 2000, 500),
        "cifar10": (("cifar10.npz", "cifar10_partial.npz"), 1000, 200)}


def make(name: str, root: Path, out_dir: Path = HERE) -> Path:
    files, n_train, n_test = CUTS[name]
    src = next((root / f for f in files if (root / f).is_file()), None)
    if src is None:
        raise SystemExit(f"no {' or '.join(files)} under {root}; pass --root <dir holding it>")
    with np.load(src) as f:
        for key, n in (("train_index", n_train), ("test_index", n_test)):  # partial file: check positions
            if key in f.files and not np.array_equal(f[key][:n], np.arange(n)):
                raise SystemExit(f"{src}: the first {n} rows of {key} are not the first images of the batch")
        arrays = {"x_train": f["x_train"][:n_train], "y_train": f["y_train"][:n_train].astype(np.int64),
                  "x_test": f["x_test"][:n_test], "y_test": f["y_test"][:n_test].astype(np.int64)}
    assert all(a.dtype == np.uint8 for k, a in arrays.items() if k.startswith("x_"))
    note = (f"real {name} sample cut from {src.name}: the first {n_train} training and the first {n_test} "
            f"test images in the original order, uint8 pixels, int64 labels (ntkrepro make_samples.py)")
    out = out_dir / f"{name}_sample.npz"
    np.savez_compressed(out, note=np.array(note), **arrays)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding mnist.npz and cifar10*.npz")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    args = parser.parse_args(argv)
    for name in CUTS:
        out = make(name, args.root.expanduser(), args.out)
        print(f"{out}  {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
