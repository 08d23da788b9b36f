"""The one ranking rule, used to pick the champion among candidates and to decide whether it
replaces production: higher held-out score wins by at least `margin`; within the margin the
two tie and the smaller serialized model wins (it is cheaper to upload, load and serve)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.pipeline.evaluate import MB, Scores
from app.settings import TrainingSettings

# Scores are fractions of a few thousand rows; differences below this are float noise.
_EPSILON = 1e-9
# "Smaller" means smaller by more than this share: the same model pickles to a few bytes more
# or less after a save/load round trip (memo layout), which must not decide a tie.
SIZE_TOLERANCE = 0.01


def _tied(diff: float, margin: float) -> bool:
    return abs(diff) <= _EPSILON or abs(diff) < margin - _EPSILON


class Ranked(Protocol):
    """What the rule looks at: an Evaluation in one process, a candidate task's result
    (app.pipeline.mapped.CandidateResult) when each candidate trained in its own task."""

    @property
    def candidate(self) -> str: ...
    @property
    def scores(self) -> Scores: ...
    @property
    def size_bytes(self) -> int: ...


R = TypeVar("R", bound=Ranked)


@dataclass(frozen=True)
class Verdict:
    wins: bool
    reason: str


def compare(
    challenger_score: float,
    challenger_bytes: int,
    incumbent_score: float,
    incumbent_bytes: int,
    *,
    metric: str,
    margin: float,
) -> Verdict:
    diff = challenger_score - incumbent_score
    numbers = (
        f"{metric} {challenger_score:.4f} vs {incumbent_score:.4f} (diff {diff:+.4f}, "
        f"margin {margin:.4f}), "
        f"size {challenger_bytes / MB:.2f} MB vs {incumbent_bytes / MB:.2f} MB"
    )
    if diff > _EPSILON and diff >= margin - _EPSILON:
        return Verdict(True, f"better by at least the margin: {numbers}")
    if _tied(diff, margin):
        if challenger_bytes < incumbent_bytes * (1 - SIZE_TOLERANCE):
            return Verdict(True, f"tie within the margin and smaller: {numbers}")
        return Verdict(False, f"tie within the margin and not smaller: {numbers}")
    return Verdict(False, f"worse by more than the margin: {numbers}")


def choose_champion(evaluations: Sequence[R], *, metric: str, margin: float, max_bytes: int) -> R:
    """Best score among the candidates under the size cap, the smallest of those tied with it
    within the margin. If none fits under the cap, the best overall (it will be registered,
    and not promoted, so the registry shows what the cap cost)."""
    if not evaluations:
        raise ValueError("no evaluations to choose from")
    pool = [e for e in evaluations if e.size_bytes <= max_bytes] or list(evaluations)
    top = max(e.scores.get(metric) for e in pool)
    tied = [e for e in pool if _tied(top - e.scores.get(metric), margin)]
    return min(tied, key=lambda e: (e.size_bytes, -e.scores.get(metric)))


def choose_by_settings(evaluations: Sequence[R], settings: TrainingSettings) -> R:
    """choose_champion with the metric, margin and size cap of the settings (PROMOTION_*)."""
    return choose_champion(
        evaluations,
        metric=settings.metric,
        margin=settings.promotion_margin,
        max_bytes=int(settings.max_model_mb * MB),
    )
