"""When to stop training, and whether a run learned at all.

Early stopping on a handful of noisy validation cases must not end a run before it has learned:
patience is counted only after the validation Dice has first risen above ``floor``, and never
before ``min_iterations``. A run whose validation Dice never rises above the floor is reported as
not learned (``result.json``: ``"learned": false``), never silently kept as a result.

Example:
    >>> rule = StoppingRule(patience=2, min_iterations=100, floor=0.05)
    >>> s = rule.initial_state()
    >>> [rule.update(s, it, d) for it, d in [(50, 0.0), (100, 0.0), (150, 0.3), (200, 0.2), (250, 0.2)]]
    [False, False, False, False, True]
    >>> s["best_iteration"], s["learned"]
    (150, True)
"""

from __future__ import annotations

from dataclasses import dataclass

# What a run that ended at its budget with a structure not learned is told (train.log, the sweep's report):
# structures are learned one after another, and on head-and-neck CT a larger budget taught the ones that
# 1000-iteration runs had not (benchmarks/results/ablation_learning.md, thirteenth round).
MORE_ITERATIONS = ("the run ended at its iteration budget: more iterations may teach it "
                   "(e.g. --set training.max_iterations=2000 --set training.min_iterations=1000)")


@dataclass(frozen=True)
class StoppingRule:
    """``patience`` validations without improvement, counted once the Dice exceeds ``floor``,
    end a run that has passed ``min_iterations``."""

    patience: int
    min_iterations: int = 0
    floor: float = 0.05

    @staticmethod
    def initial_state() -> dict:
        return {"best_dice": -1.0, "best_iteration": 0, "bad_evals": 0, "learned": False}

    def update(self, state: dict, iteration: int, dice: float) -> bool:
        """Record one validation (in place); True when training should stop now."""
        if dice > state["best_dice"]:
            state.update(best_dice=float(dice), best_iteration=int(iteration), bad_evals=0)
        elif state["learned"]:
            state["bad_evals"] += 1
        if dice > self.floor:
            state["learned"] = True
        return (state["learned"] and state["bad_evals"] >= self.patience
                and iteration >= self.min_iterations)
