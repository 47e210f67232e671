"""Fidelity filters: per-candidate scores and the keep rules that decide on them.

Filters decide; they never move data. Every candidate gets its scores in its manifest row, with
`kept` and a `reject_reason`; `dpp refilter` re-applies other rules to the stored scores. The
decision for a candidate depends only on its own scores and on the scores of the other candidates in
its block (the "drop the q% most uncertain" rule ranks within a block of `block` candidates), so a
fresh run and a refilter with the same rules decide the same way.

Reasons, in the order they are checked (a candidate gets the first that applies):
  non_finite             the rendered image had NaN or infinite values
  target_missing         the mask holds fewer than min_target_pixels of the target class(es)
                         (with no target: of any non-background class)
  fragments              a non-background region of the mask is smaller than min_fragment_pixels
  classifier_confidence  the noise-aware classifier's confidence in the target is below min_confidence
  label_uncertainty      the label head's image uncertainty is above max_uncertainty
  realism                the k-NN distance to real images is above max_realism_distance
  uncertainty_rank       among the drop_fraction most uncertain candidates of its block
A candidate that passes every rule but arrives when its shard is already full is recorded as `surplus`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from manifests.errors import UsageError
from pipeline.filtering.scores import Scores

REASONS = (
    "non_finite",
    "target_missing",
    "fragments",
    "classifier_confidence",
    "label_uncertainty",
    "realism",
    "uncertainty_rank",
)
SURPLUS = "surplus"


@dataclass(frozen=True)
class FilterRules:
    min_target_pixels: int = 16  # mask sanity: pixels of the target class (or of any object); 0 = off
    min_fragment_pixels: int = 0  # mask sanity: smallest allowed object region (0 = off)
    min_confidence: float | None = None  # classifier confidence in the target (None = off)
    max_uncertainty: float | None = None  # label-head image uncertainty (None = off)
    max_realism_distance: float | None = None  # k-NN distance to real images (None = off)
    drop_fraction: float = 0.1  # drop this share of the most uncertain candidates of each block
    block: int = 20  # candidates per block, the unit the rank rule works on

    def __post_init__(self):
        if self.min_target_pixels < 0 or self.min_fragment_pixels < 0:
            raise UsageError("--min-target-pixels and --min-fragment-pixels must be 0 or more")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise UsageError(f"--drop-fraction {self.drop_fraction} is not allowed; it must be in [0, 1)")
        if self.block < 1:
            raise UsageError(f"--filter-block {self.block} is not allowed; it must be positive")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"--min-confidence {self.min_confidence} is not allowed; it must be in [0, 1]")
        for name in ("max_uncertainty", "max_realism_distance"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UsageError(f"--{name.replace('_', '-')} {v} is not allowed; it must be 0 or more")

    def as_json(self) -> dict:
        return asdict(self)

    @property
    def dropped_per_block(self) -> int:
        return int(round(self.drop_fraction * self.block))


def decide(rules: FilterRules, block: list[Scores]) -> list[str | None]:
    """The reject reason of each candidate of one block (None = passes); see the module docstring."""
    drop = set()
    if rules.dropped_per_block:
        ranked = sorted(
            (i for i, s in enumerate(block) if s.finite),
            key=lambda i: (-(block[i].uncertainty or 0.0), i),
        )
        drop = set(ranked[: rules.dropped_per_block])
    out: list[str | None] = []
    for i, s in enumerate(block):
        out.append(_reason(rules, s, i in drop))
    return out


def _reason(rules: FilterRules, s: Scores, ranked_out: bool) -> str | None:
    if not s.finite:
        return "non_finite"
    if rules.min_target_pixels and s.target_pixels < rules.min_target_pixels:
        return "target_missing"
    if rules.min_fragment_pixels and (s.min_fragment or 0) and s.min_fragment < rules.min_fragment_pixels:
        return "fragments"
    if (
        rules.min_confidence is not None
        and (s.confidence if s.confidence is not None else 1) < rules.min_confidence
    ):
        return "classifier_confidence"
    if rules.max_uncertainty is not None and (s.uncertainty or 0.0) > rules.max_uncertainty:
        return "label_uncertainty"
    if (
        rules.max_realism_distance is not None
        and s.realism is not None
        and s.realism > rules.max_realism_distance
    ):
        return "realism"
    if ranked_out:
        return "uncertainty_rank"
    return None


def describe_reasons(counts: Counter) -> str:
    """e.g. 'target_missing 120, uncertainty_rank 16' in the order rules are checked."""
    order = [*REASONS, SURPLUS, *sorted(set(counts) - {*REASONS, SURPLUS})]
    return ", ".join(f"{r} {counts[r]}" for r in order if counts.get(r))
