"""AutoAttack's saved progress, so that a killed evaluation continues where it stopped (advprune.attacks.autoattack).

The state (written atomically with advprune.checkpoint.save_torch, at most every `every` seconds, and once when
the attack is done) holds the part reached and the batch within it, the points still robust and those robust
when the part started (which fix its batches), the adversarial inputs found so far, the accuracy after each
finished part, the seconds spent, and, where a part can stop inside a batch (APGD-T between target classes,
FAB-T between iterations, Square between queries), that loop's variables and the state of torch's global CPU
generator, from which the part's next random draws come. Every part reseeds at each batch, so between batches
nothing random needs saving. A resumed attack makes the model calls of an uninterrupted one on the same batches
with the same draws, and returns its per-point result.

A state is keyed by what the result depends on (AutoAttack's settings, the points, the attacked model's tensors,
the attack code, the device, and what the caller adds, e.g. the evaluation's code hash). One written for
anything else is set aside (`<path>.stale`) with a log line naming what differs; one that cannot be read or does
not fit the points is set aside (`<path>.unreadable`). The attack then starts from its first part: a state is
never half-used, and a bad one cannot block the job on every re-run. The caller removes the state once its
result is stored.

Unlike the original's state (github.com/fra31/auto-attack, `state.py`: the robust flags and the parts run), this
one keeps the adversarial inputs and resumes inside a part; the original reruns an interrupted part on the
points left, in other batches, so with other random draws than an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from advprune.checkpoint import CheckpointError, load_torch, save_torch

log = logging.getLogger(__name__)

FORMAT = "advprune-autoattack-state-1"
EVERY = 300.0  # seconds between saves (evaluate.autoattack.state_every)


@dataclass
class Checkpoint:
    """What a part's loop gets: the loop variables to continue from (`resumed`; None from the start) and `save`,
    which the loop calls at each point it can continue from with a function building those variables (called
    only when a save is due, so the loop pays for a copy only every `every` seconds)."""

    resumed: dict | None
    save: Callable[[Callable[[], dict]], None]


class AttackState:
    def __init__(self, path: str | os.PathLike, every: float = EVERY, identity: dict | None = None):
        """`identity`: what the caller adds to the key (strings), e.g. {"evaluation_code": hash}."""
        self.path, self.every, self.identity = Path(path), float(every), dict(identity or {})
        self._last_save = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every

    def save(self, key: dict, progress: dict) -> None:
        save_torch({"format": FORMAT, "key": key, **progress}, self.path)
        self._last_save = time.monotonic()

    def load(self, key: dict) -> dict | None:
        """The saved progress if there is one written for `key`; otherwise None (and a state that is there is
        set aside)."""
        if not self.path.exists():
            return None
        try:
            state = load_torch(self.path)
            if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("key"), dict):
                raise CheckpointError(self.path, "not an AutoAttack state")
        except CheckpointError as error:
            self.set_aside("unreadable", error.reason)
            return None
        if state["key"] != key:
            differs = [name for name in sorted(set(key) | set(state["key"])) if key.get(name) != state["key"].get(name)]
            self.set_aside("stale", f"written for another {', '.join(differs)}")
            return None
        return state

    def set_aside(self, suffix: str, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.{suffix}")
        os.replace(self.path, aside)
        log.warning("AutoAttack state %s: %s; moved aside to %s, the attack starts from its first part", self.path, reason, aside)
