"""Attacks, one per file, torchattacks-style: the constructor takes the hyper-parameters, the call is pure.

Inputs are in [0, 1]; models take them directly. AutoAttack (advprune.attacks.autoattack) is imported
from its module where it is used, so training jobs do not load torchattacks.
"""

from advprune.attacks.pgd import PGD

__all__ = ["PGD"]
