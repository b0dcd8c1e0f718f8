"""kvorch: the package behind the `orchestrate` command."""

__version__ = "0.1.0"
