#!/usr/bin/env python3
"""`python orchestrate.py ARGS` is the same as the `orchestrate` console script."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kvorch.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
