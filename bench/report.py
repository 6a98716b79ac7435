"""What both benchmarks print: targets met or missed, shares of the CPU, JSON without NaN."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    op: str
    bound: float

    @property
    def met(self) -> bool:
        return COMPARE[self.op](self.value, self.bound)


def worst(shares: list[float]) -> float:
    """The largest share the host stole in any round (NaN where the kernel does not say)."""
    return max((share for share in shares if not math.isnan(share)), default=math.nan)


def percent(share: float) -> str:
    return "?" if math.isnan(share) else f"{share:.0%}"


def markdown_targets(checks: list[Target]) -> str:
    lines = ["| target | measured | bound | |", "|---|---|---|---|"]
    lines += [f"| {check.name} | {check.value:.4g} | {check.op} {check.bound:g} | {'met' if check.met else 'MISSED'} |"
              for check in checks]
    return "\n".join(lines)


def standard_json(value: object) -> object:
    """NaN (a quantile of nothing, e.g. no request refused) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: standard_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [standard_json(item) for item in value]
    return value
