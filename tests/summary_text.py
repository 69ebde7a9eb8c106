"""Reading the end-of-run summary back (phi3v.training.reporting.run_summary), for the tests that run train.py:
a split's lines, and its tables per field."""

from __future__ import annotations

import re

FIELD_HEADER = re.compile(r"^(\w+) \((number|integer|category|text)\)$")  # "price (number)"


def split_lines(output: str, split: str) -> list[str]:
    """The summary of `split` in a run's output: from its counts line (`val: 8 answers, ...`) to its verdict."""
    start = re.search(rf"^{split}: \d+ answers, ", output, re.MULTILINE).start()
    lines = output[start:].split("\n\n")[0].splitlines()
    assert lines[-1].startswith(f"{split} verdict: "), lines
    return lines


def field_tables(lines: list[str]) -> dict[str, list[list[str]]]:
    """Each table of a split's lines, keyed by its header (`price (number)`): its rows' cells, stripped, the
    column header first (the rule under it left out)."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in lines:
        if FIELD_HEADER.match(line):
            current = tables.setdefault(line, [])
        elif current is not None and " | " in line:
            current.append([cell.strip() for cell in line.split(" | ")])
        elif current is not None and not set(line) <= set("-+"):
            current = None  # the verdict line: the last table ended
    return tables
