"""Security curves: minimum-norm L∞ distances per point with FMN (via secml-torch), tuned the way the Adversarial
Pruning benchmark tunes it (HO-FMN), and robust accuracy read from them at every ε.

- `fmn`: FMN with HO-FMN's loss, optimizer and schedule; distances checked point by point.
- `hofmn`: the hyper-parameter search on validation points, the attack on the evaluated points, the record fields.
- `curves`: robust accuracy against ε from distances (no torch: the report uses it).
The package imports nothing itself: the report reads `curves` without loading torch.
"""
