"""Standard AutoAttack (Croce & Hein, ICML 2020): our own APGD-CE, APGD-T, FAB-T and Square, written after the
original implementation (github.com/fra31/auto-attack, `version='standard'` as its `_set_version` sets it).

Each part (advprune.attacks.apgd, .fab, .square) follows the original operation for operation with the same
random draws, and returns the original's points; it is faster because FAB-T's target classes run side by
side in one batch, FAB reuses a forward pass the original runs twice, Square skips work whose result it never
uses, and no per-call wrappers sit around the model. advprune.evaluation attacks the model through its attack
view (advprune.models.view: BatchNorm folded, max pooling on the fast CPU kernel). `benchmarks/autoattack.py`
measures it against the original (`pyautoattack`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchattacks

from advprune.attacks.apgd import apgd_ce, apgd_targeted
from advprune.attacks.fab import fab_targeted
from advprune.attacks.square import square_linf
from advprune.attacks.state import AttackState, Checkpoint
from advprune.codehash import code_hash

log = logging.getLogger(__name__)

N_TARGETS = 9  # target classes of APGD-T and FAB-T in the original standard version
# (iterations of APGD and FAB, Square's queries). "rehearsal" runs every part and code path with a budget too small
# to mean anything: only `advprune rehearse` uses it, to check a configuration end to end in seconds; its records
# say so (`autoattack_version`) and are never results.
VERSIONS = {"standard": (100, 5000), "rehearsal": (3, 20)}
TOLERANCE = 1e-5  # float slack allowed on the eps-ball (the parts project in float32)


@dataclass
class AutoAttackResult:
    x_adv: torch.Tensor  # adversarial examples; == x where no attack succeeded
    robust: torch.Tensor  # bool N: still correct after every attack
    clean_correct: torch.Tensor  # bool N
    robust_after: dict[str, float]  # accuracy after "clean" and after each attack, in order
    seconds: dict[str, float]  # wall time per attack

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()


class AutoAttack:
    r"""Standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square, each run only on the points still robust.

    Distance Measure : Linf, L2

    Arguments:
        model (nn.Module): model to attack; takes inputs in [0, 1] (normalisation, if any, lives inside it).
        norm (str): 'Linf' or 'L2'. (Default: 'Linf')
        eps (float): radius of the threat model. (Default: 8/255)
        n_classes (int): number of classes the model outputs (checked on each call); >= 4, as the
            targeted DLR loss uses the 4th-largest logit. (Default: 10)
        version (str): 'standard', or 'rehearsal' (the same parts with 3 iterations and 20 queries: a smoke test
            of a configuration, never a result). (Default: 'standard')
        seed (int): seed every part starts from, on every batch, as the original does. (Default: 0)
        batch_size (int): points per attack call, as the original's `run_standard_evaluation(batch_size=)`.
            Results depend on it, since every part reseeds per batch as in the original (which defaults to 250).
            (Default: 500)
        log_progress (bool): log one line per attack (name, robust accuracy, seconds). (Default: True)
        max_batch (int): most points per model call, which bounds memory: FAB-T runs the targets of a batch
            side by side, up to min(9, n_classes - 1) x batch_size points at once. Does not change results.
            (Default: min(9, n_classes - 1) x batch_size)

    Shape:
        - x: (N, C, H, W) float in [0, 1], y: (N,) int64, both on the model's device.
        - output: :class:`AutoAttackResult`.

    The paper's standard settings (Linf and L2 alike, as in the original):
        APGD-CE: 100 iterations, 1 restart, rho .75, CE loss;
        APGD-T: targeted DLR loss, 100 iterations, 1 restart, rho .75, min(9, n_classes - 1) targets
            (the 2nd-, 3rd-, ... most likely classes on the clean input);
        FAB-T: 100 iterations, 1 restart, alpha_max .1, eta 1.05, beta .9, min(9, n_classes - 1) targets;
        Square: 5000 queries, p_init .8, 1 restart, margin loss, the unrescaled p schedule.
    Clean-misclassified points count as non-robust from the start; an attack only sees the points no
    earlier attack broke.

    Unlike `torchattacks.AutoAttack` (10-step parts, Square's p schedule rescaled to n_queries, n_classes - 1
    targets, no batching), this is the original's standard version.

    Differences from the original (`pyautoattack`), none of which changes a result:
        - FAB-T attacks all target classes of a batch at once and keeps, per point, the first target (in the
          original's order) that broke it (FAB-T draws nothing at random, so the targets do not interact);
        - FAB-T's "is the iterate adversarial?" pass also serves the next gradient when no point moved;
        - Square skips the cross-entropy and query counts it computes but never uses with the margin loss;
        - the sanity checks of `run_standard_evaluation` (randomised defence, probability outputs, ...) are left
          out; the model must output logits;
        - its state file (robust flags and the parts run) is replaced by ours (`state=`, advprune.attacks.state),
          which also keeps the adversarial inputs, stops inside a part, and continues to the uninterrupted result;
        - with `seed=None` it seeds from the clock; here the seed is an int, and since every part calls
          `torch.manual_seed` (which also reseeds CUDA), the call runs inside `torch.random.fork_rng` so the
          caller's RNG stream is left as it was.
    Points are evaluated in other batch compositions than the original's (FAB-T's targets side by side,
    chunks of max_batch); where a kernel's blocking depends on the batch size (oneDNN for small batches, cuDNN) a logit
    can then differ by float rounding, which changes a result only where an attack sits on a knife edge.
    The model runs in eval mode with its parameters' `requires_grad` off (FAB backpropagates through the
    logits, which would otherwise fill `.grad`); both are restored afterwards.

    With norm='L2', Square is torchattacks 3.5.1's, which deviates from the original: it measures the
    windows' norms over all channels at once, the original per channel (identical for one channel), and does
    not cap the square's side at min(H, W) (matters only for very elongated images).
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        n_classes: int = 10,
        version: str = "standard",
        seed: int = 0,
        batch_size: int = 500,
        log_progress: bool = True,
        max_batch: int | None = None,
    ):
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if version != "standard" and norm != "Linf":
            raise ValueError(f"version {version!r} is only for Linf")
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        if n_classes < 4:
            raise ValueError("AutoAttack's targeted DLR loss needs at least 4 classes")
        if eps <= 0 or batch_size < 1:
            raise ValueError("AutoAttack needs eps > 0 and batch_size >= 1")
        self.model, self.norm, self.eps, self.n_classes, self.version = model, norm, float(eps), int(n_classes), version
        self.seed, self.batch_size, self.log_progress = int(seed), int(batch_size), log_progress
        self.n_targets = min(N_TARGETS, self.n_classes - 1)
        self.max_batch = int(max_batch) if max_batch is not None else self.n_targets * self.batch_size
        if self.max_batch < 1:
            raise ValueError("AutoAttack needs max_batch >= 1")
        eps, seed, chunk, targets = self.eps, self.seed, self.max_batch, self.n_targets
        n_iter, n_queries = VERSIONS[version]
        # Square with L2 stays torchattacks' (see the class docstring); with Linf it is ours.
        self.square = None if norm == "Linf" else torchattacks.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False, norm=norm, eps=self.eps, seed=self.seed)
        # Each part takes (x, y, checkpoint=None): a Checkpoint lets it save and resume inside a batch (APGD-CE and
        # torchattacks' Square stop only between batches).
        self.attacks = {
            "apgd-ce": lambda x, y, checkpoint=None: apgd_ce(model, x, y, eps, norm, seed, chunk, n_iter),
            "apgd-t": lambda x, y, checkpoint=None: apgd_targeted(model, x, y, eps, norm, seed, targets, chunk, n_iter, checkpoint),
            "fab-t": lambda x, y, checkpoint=None: fab_targeted(model, x, y, eps, norm, targets, chunk, n_iter, checkpoint),
            "square": (lambda x, y, checkpoint=None: square_linf(model, x, y, eps, seed, n_queries, checkpoint)) if self.square is None
            else (lambda x, y, checkpoint=None: self.square(x, y)),
        }

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: AttackState | None = None) -> AutoAttackResult:
        """With `state`, the attack saves its progress there (advprune.attacks.state) and continues from a saved
        state written for the same key (`fingerprint` and the state's identity) to the result of an uninterrupted
        run; the caller removes the file once it has stored the result."""
        x, y = x.detach(), y.detach()
        if x.min() < 0 or x.max() > 1:
            raise ValueError("AutoAttack expects inputs in [0, 1]")
        params = list(self.model.parameters())
        was_training, grad_flags = self.model.training, [p.requires_grad for p in params]
        try:
            self.model.eval()
            self.model.requires_grad_(False)
            with torch.random.fork_rng(devices=range(torch.accelerator.device_count())):
                return self._run(x, y, state)
        finally:
            self.model.train(was_training)
            for p, flag in zip(params, grad_flags):
                p.requires_grad_(flag)

    def fingerprint(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
        """What the result depends on, the key a saved state must match: the settings, the points, the attacked
        model's tensors, the attack code and the packages it runs on, and the device (a state written on another
        GPU model is not continued: float rounding there may differ)."""
        settings = {"norm": self.norm, "eps": self.eps, "n_classes": self.n_classes, "version": self.version, "seed": self.seed,
                    "batch_size": self.batch_size, "max_batch": self.max_batch}
        points = hashlib.sha256(_bytes(x) + _bytes(y)).hexdigest()
        model = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            model.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode() + _bytes(tensor))
        device = f"cuda ({torch.cuda.get_device_name(x.device)})" if x.device.type == "cuda" else x.device.type
        return {"settings": json.dumps(settings, sort_keys=True), "points": points, "model": model.hexdigest(), "code": code_hash(Path(__file__)),
                "packages": f"torch {torch.__version__}, torchattacks {torchattacks.__version__}", "device": device}

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(xb).argmax(1) for xb in x.split(self.batch_size)])

    def _run(self, x: torch.Tensor, y: torch.Tensor, state: AttackState | None) -> AutoAttackResult:
        with torch.no_grad():
            n_out = self.model(x[:1]).shape[1]
        if n_out != self.n_classes:
            raise ValueError(f"model outputs {n_out} classes, AutoAttack was built for n_classes={self.n_classes}")
        names = list(self.attacks)
        key = {**self.fingerprint(x, y), **state.identity} if state is not None else None
        run = self._resume(state, key, x, y, names) if state is not None else None
        if run is None:
            clean_correct = self._predict(x) == y
            accuracy = {"clean": clean_correct.float().mean().item()}
            run = _Progress(clean_correct, clean_correct.clone(), x.clone(), accuracy, {}, part=0, batch=0, part_robust=clean_correct.clone())
            self._log("clean", run.robust_after["clean"], 0.0)
        if self.square is not None:
            self.square.set_device(x.device)
        for part in range(run.part, len(names)):
            name = names[part]
            if part != run.part:  # a new part: its batches are the points robust now
                run.part, run.batch, run.part_robust = part, 0, run.robust.clone()
            started = time.perf_counter() - run.seconds.get(name, 0.0)

            def save(make_inner=None):
                if state.due():
                    run.seconds[name] = time.perf_counter() - started
                    state.save(key, run.to_state(make_inner() if make_inner else None))

            batches = run.part_robust.nonzero().flatten().split(self.batch_size)
            for b in range(run.batch, len(batches)):
                idx = batches[b]
                checkpoint = Checkpoint(run.inner, save) if state is not None else None
                run.inner = None
                adv = self.attacks[name](x[idx], y[idx], checkpoint)
                fooled = self._predict(adv) != y[idx]
                run.robust[idx[fooled]] = False
                run.x_adv[idx[fooled]] = adv[fooled]
                run.batch = b + 1
                if state is not None:
                    save()
            run.seconds[name] = time.perf_counter() - started
            run.robust_after[name] = run.robust.float().mean().item()
            self._log(name, run.robust_after[name], run.seconds[name])
        if state is not None and run.part < len(names):  # done: a kill before the caller stores the result does not repeat the attack
            run.part, run.batch = len(names), 0
            state.save(key, run.to_state(None))
        self._check_valid(x, run.x_adv)
        return AutoAttackResult(run.x_adv, run.robust, run.clean_correct, run.robust_after, run.seconds)

    def _resume(self, state: AttackState, key: dict, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> _Progress | None:
        saved = state.load(key)
        if saved is None:
            return None
        try:
            run = _Progress.from_state(saved, x, names, self.batch_size)
            if not torch.equal(run.clean_correct, self._predict(x) == y):
                raise ValueError("its clean predictions are not the model's")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            state.set_aside("unreadable", f"does not fit these points ({error})")
            return None
        where = "every part done" if run.part == len(names) else f"{names[run.part]}, batch {run.batch + 1}" + (" (inside it)" if run.inner else "")
        log.info("AutoAttack: resumed from %s at %s; robust accuracy so far %.2f%%", state.path, where, 100 * run.robust.float().mean().item())
        return run

    def _check_valid(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        # The original only reports the largest perturbation; a violation here means a part is broken.
        delta = (x_adv - x).flatten(1)
        dist = delta.abs().amax(1) if self.norm == "Linf" else delta.norm(dim=1)
        if dist.max() > self.eps + TOLERANCE or x_adv.min() < 0 or x_adv.max() > 1 or x_adv.isnan().any():
            raise RuntimeError(
                f"AutoAttack produced invalid x_adv: max {self.norm} distance {dist.max().item():.6f} (eps {self.eps}), "
                f"range [{x_adv.min().item()}, {x_adv.max().item()}]"
            )

    def _log(self, name: str, accuracy: float, seconds: float) -> None:
        if self.log_progress:
            log.info("%s: robust accuracy %.2f%% (%.1f s)", name, 100 * accuracy, seconds)


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@dataclass
class _Progress:
    """Where a run stands; `to_state`/`from_state` convert it to and from a saved state (advprune.attacks.state)."""

    clean_correct: torch.Tensor  # bool N
    robust: torch.Tensor  # bool N
    x_adv: torch.Tensor
    robust_after: dict[str, float]  # "clean" and every finished part
    seconds: dict[str, float]  # finished parts, and the running one so far
    part: int  # index of the running part (len(parts) once done)
    batch: int  # the running part's next batch
    part_robust: torch.Tensor  # bool N: robust when the running part started, which fixes its batches
    inner: dict | None = None  # the loop variables of a part stopped inside batch `batch`

    def to_state(self, inner: dict | None) -> dict:
        broken = self.clean_correct & ~self.robust  # x_adv differs from x only there
        return {"part": self.part, "batch": self.batch, "clean_correct": self.clean_correct, "robust": self.robust, "part_robust": self.part_robust,
                "x_adv_broken": self.x_adv[broken], "robust_after": self.robust_after, "seconds": self.seconds, "inner": inner}

    @classmethod
    def from_state(cls, saved: dict, x: torch.Tensor, names: list[str], batch_size: int) -> _Progress:
        """Raises ValueError (or KeyError, TypeError) where the state does not fit the points."""
        flags = [saved[k] for k in ("clean_correct", "robust", "part_robust")]
        if any(f.dtype != torch.bool or tuple(f.shape) != (len(x),) for f in flags):
            raise ValueError(f"flags for other than {len(x)} points")
        clean_correct, robust, part_robust = (f.to(x.device) for f in flags)
        if (robust & ~part_robust).any() or (part_robust & ~clean_correct).any():
            raise ValueError("inconsistent robust flags")
        broken = clean_correct & ~robust
        rows = saved["x_adv_broken"]
        if tuple(rows.shape) != (int(broken.sum()), *x.shape[1:]) or rows.dtype != x.dtype:
            raise ValueError("adversarial inputs of another shape")
        x_adv = x.clone()
        x_adv[broken] = rows.to(x.device)
        part, batch = int(saved["part"]), int(saved["batch"])
        if not 0 <= part <= len(names) or list(saved["robust_after"]) != ["clean", *names[:part]]:
            raise ValueError("parts out of order")
        if not 0 <= batch <= -(-int(part_robust.sum()) // batch_size):
            raise ValueError("batch out of range")
        inner = saved["inner"]
        if inner is not None and (part == len(names) or not isinstance(inner, dict)):
            raise ValueError("loop state where there is no loop")
        return cls(clean_correct, robust, x_adv, dict(saved["robust_after"]), dict(saved["seconds"]), part, batch, part_robust,
                   _to_device(inner, x.device))


def _to_device(value, device):
    """A saved loop state on the attack's device; the CPU generator's state ("rng") stays on the CPU."""
    if isinstance(value, dict):
        return {k: v if k == "rng" else _to_device(v, device) for k, v in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value
