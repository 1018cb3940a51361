"""python -m ntkrepro: see `ntkrepro.cli` (python -m ntkrepro --help)."""
from ntkrepro.cli import main

if __name__ == "__main__":
    main()
