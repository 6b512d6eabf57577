"""Covering arrays: fewer test cases than a full parameter product that still meet every combination of
``strength`` factor levels (a bug needs that many settings together to show in one of the cases).

Deterministic greedy construction (each next row covers the most combinations not yet met; ties go to the
first row in product order), so a parametrized test keeps the same ids from run to run."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def combinations_met(rows: Sequence[tuple], strength: int) -> set[tuple]:
    """Every (factor positions, their levels) the rows meet, ``strength`` factors at a time."""
    met = set()
    for row in rows:
        for positions in itertools.combinations(range(len(row)), strength):
            met.add((positions, tuple(row[i] for i in positions)))
    return met


def covering_array(levels: Sequence[Sequence], strength: int = 3) -> list[tuple]:
    """Rows of the product of ``levels`` (one sequence per factor) meeting every ``strength``-way combination."""
    product = list(itertools.product(*levels))
    wanted = combinations_met(product, strength)
    rows: list[tuple] = []
    while wanted:
        best = max(product, key=lambda row: len(combinations_met([row], strength) & wanted))
        rows.append(best)
        wanted -= combinations_met([best], strength)
    return rows
