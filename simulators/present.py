"""How a run looks on a terminal: one live progress line while it runs, a summary table at the end.

Kept apart from the run itself so the CLI, a benchmark script or a test can show it, log it or
ignore it (`run_fleet(..., on_progress=...)` takes any callable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulators.load import LoadSummary
from simulators.run import Progress, SimSummary


def progress_text(p: Progress) -> str:
    return (
        f"{p.elapsed_s:6.0f} s  sent {p.sent:>9,}  {p.rate:>8,.0f} msg/s  "
        f"acks {p.acks:>6,}  errors {p.errors:>5,}  connected {p.connected:>6,}"
    )


@contextmanager
def live_progress(console: Console | None = None) -> Iterator[Callable[[Progress], None]]:
    """`with live_progress() as show: await run_fleet(..., on_progress=show)`: one line, updated."""
    console = console or Console(stderr=True)
    with Live(Text("connecting..."), console=console, refresh_per_second=4, transient=False) as live:

        def show(p: Progress) -> None:
            live.update(Text(progress_text(p)))

        yield show


def summary_table(s: SimSummary) -> Table:
    table = Table(title="Simulation summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("devices", f"{s.devices:,} (peak connected {s.peak_connected:,}, {s.connects:,} connects)"),
        ("messages sent", f"{s.messages:,} in {s.elapsed_s:.1f} s ({s.rate:,.0f}/s)"),
        ("records the store should hold", f"{s.stored_records:,}"),
        ("duplicates (stored once)", f"{s.duplicates:,}"),
        ("NMEA epochs without a fix (ignored)", f"{s.no_fix:,}"),
        ("refused by the broker (ACL)", f"{s.acl_denied:,}"),
        ("commands / acks / ignored", f"{s.commands:,} / {s.acks:,} / {s.dropped_commands:,}"),
        ("connection errors", f"{s.errors:,}"),
    ]
    rows += [(f"expected dead letters: {reason}", f"{n:,}") for reason, n in sorted(s.rejects.items())]
    rows += [(f"injected: {kind}", f"{n:,}") for kind, n in sorted(s.faults.items())]
    for row in rows:
        table.add_row(*row)
    return table


def load_table(s: LoadSummary) -> Table:
    table = Table(title="Load summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("records", f"{s.records:,} in {s.messages:,} messages ({s.bytes / 1e6:,.1f} MB)")
    table.add_row("acknowledged", f"{s.acked:,} by {s.processes} publisher process(es)")
    table.add_row("publish time", f"{s.elapsed_s:.2f} s")
    table.add_row("rate", f"{s.rate_msgs:,.0f} msg/s = {s.rate_records:,.0f} records/s")
    return table
