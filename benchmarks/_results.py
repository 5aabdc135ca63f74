"""The one way benchmarks report: print the table, then write it to benchmarks/results/<name>.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def publish(table: pd.DataFrame, name: str, out: Path | None = None, transpose: bool = False) -> Path:
    """Prints ``table`` (one column per row when ``transpose``, for wide tables) and writes it as CSV."""
    print(table.T.to_string(header=False) if transpose else table.to_string(index=False))
    out = out or RESULTS / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"written to {out}")
    return out
