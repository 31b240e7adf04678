"""advprune: a reproducible harness for adversarially robust pruning.

Kept free of heavy imports: the Snakefile imports :mod:`advprune.codehash` while building the DAG.
"""

__version__ = "0.1.0"
