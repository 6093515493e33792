"""The one Markdown table renderer: the summary tables, the findings, the sweep's layer table and
the generated config README are all written with it."""

from __future__ import annotations


def cell(value) -> str:
    """A float to two decimals; anything else as it prints."""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line a row (each row's cells already text,
    or values that `cell` renders)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
