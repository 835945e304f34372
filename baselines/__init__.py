"""Comparators for the sensitivity method: one file per method, each a study.method.Method."""
