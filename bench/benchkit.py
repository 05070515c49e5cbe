"""What the benchmarks share: a private local stack with the schema applied, and percentiles.

The benchmark scripts put bench/ on `sys.path` and import this by its bare name, as they do
`ingest_load` and `fleet_workload`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def start_stack(workdir: Path) -> tuple[Any, Any]:
    """A private stack under `workdir/stack` on free ports, migrated: (the Stack, its StackUrls)."""
    from ingest.migrate import migrate
    from localstack import Stack, ensure_installed, free_ports

    ensure_installed(log=print)
    stack = Stack(workdir / "stack", free_ports(), log=lambda _m: None)
    urls = stack.up()
    migrate(urls.database_url)
    return stack, urls


def pct(values: Sequence[float], q: float) -> float:
    """The `q` quantile (nearest rank below), NaN for no values; `values` need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
