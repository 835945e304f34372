"""sensitivity-study: hyperparameter studies of sensitivity-driven sparsification."""

__version__ = "0.1.0"
