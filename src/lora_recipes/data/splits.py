"""Splits: content hashes of rows and splits, carving missing splits, the split column, row caps.

Carving is by content, never by position or a random draw: every row's hash is the SHA-256 of its
source fields as canonical JSON, and within each label (category outputs; all rows for text) the
rows with the smallest hashes go to the carved splits. The same rows therefore land in the same
split on every machine and in any row order, the label mix of every split matches the source's,
and the recipe's seed plays no part. Quotas are `fraction x rows` rounded half up (at least one
row when the fraction is above 0), shared among labels by largest remainder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

SPLIT_NAMES = ("train", "validation", "test")
# Ludwig's split column: 0 train, 1 validation, 2 test.
SPLIT_CODES = {
    "0": "train",
    "1": "validation",
    "2": "test",
    "train": "train",
    "validation": "validation",
    "test": "test",
}


def row_hash(row: Mapping[str, Any]) -> str:
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def split_hash(row_hashes: Sequence[str]) -> str:
    """Hash of a split: its rows' hashes in split order (the order training reads them)."""
    h = hashlib.sha256(f"{len(row_hashes)}\n".encode())
    for rh in row_hashes:
        h.update(rh.encode())
    return "sha256:" + h.hexdigest()


def quota(fraction: float, n: int) -> int:
    if fraction <= 0 or n == 0:
        return 0
    return max(1, math.floor(fraction * n + 0.5))


def _share(total: int, sizes: dict[Hashable, float], capacity: dict[Hashable, int]) -> dict[Hashable, int]:
    """Split `total` among groups in proportion to `sizes` by largest remainder, within capacity."""
    weight = sum(sizes.values())
    exact = {g: total * s / weight if weight else 0.0 for g, s in sizes.items()}
    given = {g: min(math.floor(x), capacity[g]) for g, x in exact.items()}
    left = total - sum(given.values())
    # Largest remainder first; ties by group name, so the outcome does not depend on row order.
    order = sorted(exact, key=lambda g: (-(exact[g] - math.floor(exact[g])), str(g)))
    while left > 0 and any(given[g] < capacity[g] for g in order):
        for g in order:
            if left and given[g] < capacity[g]:
                given[g] += 1
                left -= 1
    return given


def carve(
    indices: Sequence[int], hashes: Sequence[str], strata: Sequence[Hashable], fractions: Sequence[float]
) -> tuple[list[int], list[list[int]]]:
    """Carve splits of the given fractions out of `indices` (positions into `hashes`/`strata`).
    Returns the rows that stay and one list per fraction, each in source order."""
    groups: dict[Hashable, list[int]] = {}
    for i in indices:
        groups.setdefault(strata[i], []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: (hashes[i], i))
    remaining = {g: len(m) for g, m in groups.items()}
    taken = {g: 0 for g in groups}
    carved: list[list[int]] = []
    for fraction in fractions:
        shares = _share(quota(fraction, len(indices)), {g: len(m) for g, m in groups.items()}, remaining)
        chosen: list[int] = []
        for g, k in shares.items():
            chosen += groups[g][taken[g] : taken[g] + k]
            taken[g] += k
            remaining[g] -= k
        carved.append(sorted(chosen))
    kept = sorted(i for g, members in groups.items() for i in members[taken[g] :])
    return kept, carved


def split_code(value: Any) -> str | None:
    """The split a split-column value names, or None if it names none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return SPLIT_CODES.get(str(value).strip().lower()) if value is not None else None


def cap(indices: list[int], limit: int | None) -> tuple[list[int], int]:
    """The first `limit` rows in source order, and how many were left out."""
    if limit is None or len(indices) <= limit:
        return indices, 0
    return indices[:limit], len(indices) - limit
