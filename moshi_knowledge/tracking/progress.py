"""The line a run logs at each evaluation, so a terminal or a SLURM job's log file shows how training goes
without W&B: eval loss, and each tier's headline recall beside its strongest null."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from moshi_knowledge.tracking.contract import (
    EVAL_LOSS,
    HALVES,
    SPLIT_TIERS,
    half_tier,
    number,
    recall_key,
    recall_tiers,
)

_NULL_TEST = re.compile(r"^recall/(?P<tier>[^/]+)/p_vs_(?P<null>\w+)$")
_NOT_NULLS = ("null", "null_holm")  # p_vs_null is the headline test over the nulls, p_vs_null_holm its adjustment


def eval_line(step: int, max_steps: int, row: Mapping[str, Any]) -> str:
    """`step 4/10 | eval loss 3.412 | recall MC train 0.62 (null 0.35, p 0.031); unseen_facts 0.33`.

    A tier's null is the strongest of those it is tested against (its shuffled and silence controls, the
    unseen_facts tier): the tier's accuracy must beat it, and p is the headline test (`p_vs_null`). The halves of a
    split tier (eval_tune, eval_test) are left to the final table.
    """
    parts = [f"step {step}/{max_steps}"]
    if EVAL_LOSS in row:
        parts.append(f"eval loss {_fmt(row[EVAL_LOSS], '.3f')}")
    halves = {half_tier(t, h) for t in SPLIT_TIERS for h in HALVES}
    tiers = [t for t in recall_tiers(row) if t not in halves]
    cells = [_tier_cell(tier, row) for tier in tiers]
    if cells:
        parts.append("recall MC " + "; ".join(cells))
    return " | ".join(parts)


def _tier_cell(tier: str, row: Mapping[str, Any]) -> str:
    cell = f"{tier} {_fmt(row.get(recall_key(tier)), '.2f')}"
    nulls = [m["null"] for k in row if (m := _NULL_TEST.match(k)) and m["tier"] == tier and m["null"] not in _NOT_NULLS]
    accuracies = [number(row.get(recall_key(tier, f"mc_acc_{n}"), row.get(recall_key(n)))) for n in nulls]
    finite = [a for a in accuracies if math.isfinite(a)]
    p = row.get(recall_key(tier, "p_vs_null"))
    if finite or p is not None:
        cell += f" (null {_fmt(max(finite) if finite else None, '.2f')}, p {_fmt(p, '.2g')})"
    return cell


def _fmt(value: Any, spec: str) -> str:
    """`value` formatted, or n/a when absent, null (the files' NaN) or not finite."""
    x = number(value)
    return format(x, spec) if math.isfinite(x) else "n/a"
