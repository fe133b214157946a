"""Pure capacity rules: no database access, so they are trivially testable and reusable by forms and API."""

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from quotas.models import Precision

BYTES_PER_PARAMETER = {
    Precision.FP32: Decimal("4"),
    Precision.BF16: Decimal("2"),
    Precision.FP16: Decimal("2"),
    Precision.FP8: Decimal("1"),
    Precision.INT8: Decimal("1"),
    Precision.INT4: Decimal("0.5"),
}
# Weights are not the whole story: KV cache, activations and the CUDA context need room too. 20% is
# the usual planning margin for serving; it is deliberately simple and documented in the UI hint.
MEMORY_OVERHEAD = Decimal("1.2")


def model_memory_gib(parameters_billion: Decimal, precision: str) -> Decimal:
    """GPU memory one replica of the model needs, in GiB (weights x precision x overhead)."""
    weights_bytes = parameters_billion * Decimal(10**9) * BYTES_PER_PARAMETER[Precision(precision)]
    return (weights_bytes * MEMORY_OVERHEAD / Decimal(2**30)).quantize(Decimal("0.1"))


def model_weights_gib(parameters_billion: Decimal, precision: str) -> Decimal:
    """The weights alone, in GiB: what a model server reads from storage before it can serve."""
    weights_bytes = parameters_billion * Decimal(10**9) * BYTES_PER_PARAMETER[Precision(precision)]
    return (weights_bytes / Decimal(2**30)).quantize(Decimal("0.1"))


def simulated_load_seconds(
    parameters_billion: Decimal | None, precision: str, *, gib_per_second: float, base_seconds: int
) -> int:
    """How long the testbed pretends a model takes to load: its weights at `gib_per_second`, plus
    `base_seconds` of process and CUDA start. Without parameters, the start alone."""
    if not parameters_billion or not precision:
        return base_seconds
    weights = model_weights_gib(parameters_billion, precision)
    return base_seconds + math.ceil(float(weights) / gib_per_second)


def units_needed(memory_gib: Decimal, unit_memory_gib: int) -> int:
    return max(1, math.ceil(memory_gib / Decimal(unit_memory_gib)))


def within_auto_approval(*, gpus: int, starts_at: datetime, ends_at: datetime, rule: dict | None) -> bool:
    if not rule:
        return False
    days = (ends_at - starts_at).total_seconds() / 86400
    return gpus <= int(rule.get("max_gpus", 0)) and days <= float(rule.get("max_days", 0))


@dataclass(frozen=True)
class PoolCapacity:
    """What a pool has granted, the numbers every capacity decision is made from."""

    capacity: int
    headroom: int
    granted: int
    batch_granted: int
    batch_fraction: Decimal
    team_granted: int
    max_per_team: int | None

    @property
    def grantable(self) -> int:
        return self.capacity - self.headroom

    @property
    def free(self) -> int:
        return max(0, self.grantable - self.granted)

    @property
    def batch_cap(self) -> int:
        return math.floor(self.batch_fraction * self.capacity)


def capacity_refusal(figures: PoolCapacity, *, gpus: int, pool_name: str, is_batch: bool) -> str | None:
    """Why granting `gpus` more would break a rule, naming the numbers; None when it fits."""
    f = figures
    if f.granted + gpus > f.grantable:
        return (
            f"Pool {pool_name} cannot take {gpus} more: {f.granted} of {f.capacity} already granted and "
            f"{f.headroom} kept as warm headroom, so only {f.free} can be granted."
        )
    if is_batch and f.batch_granted + gpus > f.batch_cap:
        return (
            f"Pool {pool_name} caps batch inference at {f.batch_fraction:.0%} of {f.capacity} "
            f"= {f.batch_cap}; "
            f"{f.batch_granted} already granted to batch, so {gpus} more would exceed the cap."
        )
    if f.max_per_team is not None and f.team_granted + gpus > f.max_per_team:
        return (
            f"Pool {pool_name} allows at most {f.max_per_team} per team; the team already holds "
            f"{f.team_granted}, so {gpus} more would exceed it."
        )
    return None


def borrow_refusal(
    figures: PoolCapacity,
    *,
    gpus: int,
    borrow: int,
    pool_name: str,
    is_batch: bool,
    queued: bool,
    max_borrow: int | None,
) -> str | None:
    """Why a grant of `gpus` nominal GPUs may not borrow up to `borrow` more from its pool's cohort;
    None when it may. Borrowing is never counted as granted (lenders take their GPUs back), but it is
    bounded: by the pool's per-grant limit, by the pool itself, and for batch work by the batch cap,
    which so bounds what a cohort can ever borrow."""
    f = figures
    if borrow <= 0:
        return None
    if not queued:
        return (
            f"Pool {pool_name} admits work through a ResourceQuota, not a Kueue queue, so it lends no idle "
            "GPUs: ask to borrow 0."
        )
    if max_borrow is not None and borrow > max_borrow:
        return f"Pool {pool_name} lets a grant borrow at most {max_borrow} GPUs from its cohort."
    if gpus + borrow > f.grantable:
        return (
            f"Pool {pool_name} has {f.grantable} grantable GPUs: {gpus} of your own and {borrow} borrowed "
            f"would never fit; borrow at most {max(0, f.grantable - gpus)}."
        )
    if is_batch and gpus + borrow > f.batch_cap:
        return (
            f"Pool {pool_name} caps batch inference at {f.batch_cap} GPUs, borrowed ones included: "
            f"{gpus} of your own and {borrow} borrowed would exceed it; borrow at most "
            f"{max(0, f.batch_cap - gpus)}."
        )
    return None
