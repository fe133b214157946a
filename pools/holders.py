"""Who still holds a pool's capacity.

The pools app offers capacity and never imports the app that grants it. That app registers a counter
here when Django starts (quotas.apps.QuotasConfig.ready); the inventory sync asks it before changing
what a pool is (its class or accelerator) under someone who holds it.
"""

from collections.abc import Callable

# pool id -> how many holders (grants) hold capacity of it now
HolderCount = Callable[[int], int]

_counters: dict[str, HolderCount] = {}


def holders_register(*, name: str, count: HolderCount) -> None:
    """Register (or replace) the counter called `name`."""
    _counters[name] = count


def holders_count(*, pool_id: int) -> int:
    return sum(count(pool_id) for count in _counters.values())
