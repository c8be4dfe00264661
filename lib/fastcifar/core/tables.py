"""Markdown tables, as the notebooks' reports and the toolkit's grid search write them."""
from __future__ import annotations

import math

import numpy as np


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df, columns: dict[str, str] | None = None, digits: dict[str, int] | None = None) -> str:
    """A GitHub markdown table of `df` (pandas' to_markdown needs an extra package)."""
    columns = columns or {c: c for c in df.columns}
    digits = digits or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in df.astype(object).iterrows():  # keep ints as ints
        lines.append("| " + " | ".join(_cell(row.get(c), digits.get(c, 2 if "acc" in c else 4)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
