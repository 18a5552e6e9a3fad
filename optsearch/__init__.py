"""optsearch: hyperparameter search for neural-network optimizer settings."""

__version__ = "0.1.0"
