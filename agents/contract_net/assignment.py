"""Minimum-cost assignment: the exact solver behind a manager's joint award.

How this works: ``solve(costs)`` gives each row (a task) its own column (a
contractor's place) so that the sum of the chosen costs is least, by the
Hungarian method with potentials (shortest augmenting paths, O(rows^2 * columns)).
``None`` in the matrix forbids a pairing. When not every row can be placed
(forbidden pairs, or fewer columns than rows) the solver places as many rows as
can be placed and, among those placements, picks the cheapest: every row gets a
private "stay unplaced" column whose price exceeds any difference a placement
could make, so placing one more row always wins over any saving in cost.

``assign_places(rows, capacities)`` is the form the manager uses: per task the
score of each contractor that bid (lower is better), and per contractor how
many of the batch's tasks it may take. A contractor's places are identical
copies, so the solution never depends on which copy a task got.

Pure and deterministic: ties go to the lower column, so to the contractor
listed first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["assign_places", "solve"]


def solve(costs: Sequence[Sequence[float | None]]) -> list[int | None]:
    """Per row the column it gets (or None: it could not be placed); see the module doc.

    Every row must have the same length; costs must be finite numbers or None.
    """
    rows = len(costs)
    if rows == 0:
        return []
    columns = len(costs[0])
    finite = [value for row in costs for value in row if value is not None]
    for row in costs:
        if len(row) != columns:
            raise ValueError("every row of the cost matrix must have the same length")
    for value in finite:
        if not math.isfinite(value):
            raise ValueError(f"cost {value!r} is not a finite number")
    if not finite:
        return [None] * rows
    low = min(finite)
    spread = max(finite) - low
    # Placing one more row must beat any saving the other rows could make.
    unplaced = (rows + 1) * (spread + 1.0)
    forbidden = 2 * unplaced + 1.0
    width = columns + rows
    matrix = [
        [(forbidden if value is None else value - low) for value in row]
        + [unplaced] * rows
        for row in costs
    ]
    owner = _hungarian(matrix, width)
    placed: list[int | None] = [None] * rows
    for column in range(columns):
        owner_row = owner[column]
        if owner_row is not None and costs[owner_row][column] is not None:
            placed[owner_row] = column
    return placed


def assign_places(
    rows: Sequence[Mapping[bytes, float]], capacities: Mapping[bytes, int]
) -> list[bytes | None]:
    """Per row (``{contractor: score}``, lower better) the contractor it gets, or None.

    A contractor takes at most ``capacities[contractor]`` rows (absent: as many as
    it scored). The total score of the placed rows is least among the
    assignments placing the most rows. Contractors are tried in byte order, so
    equal totals resolve the same way every time.
    """
    if not rows:
        return []
    # The cheap case first: every row's favourite fits its capacity.
    favourites = [min(row.items(), key=lambda item: (item[1], item[0]))[0] if row else None
                  for row in rows]
    taken: dict[bytes, int] = {}
    for node in favourites:
        if node is not None:
            taken[node] = taken.get(node, 0) + 1
    if all(count <= capacities.get(node, count) for node, count in taken.items()):
        return favourites
    nodes = sorted({node for row in rows for node in row})
    columns: list[bytes] = []
    for node in nodes:
        bidders = sum(node in row for row in rows)
        columns.extend([node] * max(0, min(capacities.get(node, bidders), bidders)))
    costs = [[row.get(node) for node in columns] for row in rows]
    return [None if column is None else columns[column] for column in solve(costs)]


def _hungarian(matrix: list[list[float]], width: int) -> list[int | None]:
    """Column -> row of a minimum-cost assignment of every row (rows <= width)."""
    rows = len(matrix)
    u = [0.0] * (rows + 1)
    v = [0.0] * (width + 1)
    owner = [0] * (width + 1)  # column (1-based) -> row (1-based), 0: free
    way = [0] * (width + 1)
    for row in range(1, rows + 1):
        owner[0] = row
        column = 0
        least = [math.inf] * (width + 1)
        used = [False] * (width + 1)
        while True:
            used[column] = True
            current = owner[column]
            costs = matrix[current - 1]
            u_current = u[current]
            delta, next_column = math.inf, 0
            for j in range(1, width + 1):
                if not used[j]:
                    reduced = costs[j - 1] - u_current - v[j]
                    if reduced < least[j]:
                        least[j] = reduced
                        way[j] = column
                    if least[j] < delta:
                        delta, next_column = least[j], j
            for j in range(width + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            column = next_column
            if owner[column] == 0:
                break
        while column:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    result: list[int | None] = [None] * width
    for column in range(1, width + 1):
        if owner[column]:
            result[column - 1] = owner[column] - 1
    return result
