"""`none`: plain SGD with no regularizer and no pruning, the unpruned reference."""
from __future__ import annotations

from study.method import Method


class NoRegularization(Method):
    name = "none"
    citation = "Plain SGD (reference)."
    uses_sparsify_phase = False  # it never prunes: both phases are plain training
