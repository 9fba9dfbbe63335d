"""`SkippedRows`: the report of training rows that were dropped instead of crashing a run.

A row is skipped when it cannot become a training example: an empty query, an image file that is missing or that
does not decode, a product with neither title nor image, no product id, a value of the wrong type, or a row of a
data file that does not parse. The loader (`load_triples`) checks every row before training and the collator
(`MakeCollator`) re-checks each batch; both record what they drop in a `SkippedRows`, so that a run ends with one
report saying which rows were left out and why.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

SKIP_REASONS = (
    "empty_query", "missing_image", "corrupt_image", "no_title_or_image", "missing_product_id", "wrong_type",
    "malformed_row",
)
"""Why a row is skipped: no query text; an image path with no file behind it; image data that does not decode;
a product row with neither a title nor an image; a row with no product id; a row of a JSON / CSV file whose
query, title or image is not a string (or whose product id is neither a string nor an integer); a line of a
JSONL file that is not a JSON object, or a CSV / TSV row that does not parse or has the wrong number of fields."""


@dataclass(frozen=True)
class SkippedRow:
    """One dropped row: where it came from (`source`, `index` = 0-based row position there, None when unknown),
    `reason` (one of `SKIP_REASONS`) and a human-readable `detail`."""

    source: str | None
    index: int | None
    reason: str
    detail: str = ""


class SkippedRows:
    """Rows dropped from a run, with their reasons; a row recorded twice (each epoch, or by both the loader and
    the collator, or on every process) counts once.

    Example:
        ```python
        >>> skipped = SkippedRows()
        >>> rows = load_triples("train.jsonl", skipped=skipped)
        >>> collator = MakeCollator(processor, skipped_rows=skipped)
        >>> ...  # train
        >>> print(collator.skipped_rows.gather(accelerator).report())
        ```
    """

    def __init__(self, rows: list[SkippedRow] | None = None):
        self._rows: dict[tuple, SkippedRow] = {}
        for row in rows or []:
            self._insert(row)

    def _insert(self, row: SkippedRow) -> None:
        # Without a row index the detail (which names the file or product) tells rows apart.
        key = (row.source, row.index, row.reason) if row.index is not None else (row.source, None, row.reason,
                                                                                   row.detail)
        self._rows.setdefault(key, row)

    def add(self, index: int | None, reason: str, detail: str = "", source: str | None = None) -> None:
        """Record one skipped row."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"reason={reason!r} is not one of {SKIP_REASONS}.")
        self._insert(SkippedRow(source, None if index is None else int(index), reason, detail))

    def extend(self, other: SkippedRows) -> SkippedRows:
        """Add every row of `other` (duplicates count once). Returns self."""
        for row in other:
            self._insert(row)
        return self

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[SkippedRow]:
        return iter(sorted(self._rows.values(), key=lambda r: (r.source or "", -1 if r.index is None else r.index,
                                                               r.reason, r.detail)))

    def __repr__(self) -> str:
        return f"SkippedRows({len(self)} rows: {dict(self.counts)})"

    @property
    def rows(self) -> list[SkippedRow]:
        """The skipped rows, ordered by source and index."""
        return list(self)

    @property
    def counts(self) -> dict[str, int]:
        """Number of skipped rows per reason."""
        return dict(Counter(row.reason for row in self._rows.values()))

    @property
    def indices(self) -> list[int]:
        """Row indices of the skipped rows (those whose index is known), sorted."""
        return sorted({row.index for row in self._rows.values() if row.index is not None})

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: `total`, `by_reason` and every row (`source`, `index`, `reason`, `detail`)."""
        return {"total": len(self), "by_reason": self.counts, "rows": [asdict(row) for row in self]}

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> SkippedRows:
        """Rebuild a report from `summary()` (e.g. after gathering it from other processes)."""
        return cls([SkippedRow(**row) for row in summary.get("rows", [])])

    def report(self, max_rows: int = 20) -> str:
        """A human-readable report: the total, the count per reason and the first `max_rows` rows."""
        if not self:
            return "No rows were skipped."
        counts = ", ".join(f"{count} {reason}" for reason, count in sorted(self.counts.items()))
        lines = [f"{len(self)} row(s) skipped ({counts}):"]
        for row in self.rows[:max_rows]:
            where = f"row {row.index}" if row.index is not None else "row ?"
            source = f"{row.source} " if row.source else ""
            lines.append(f"  {source}{where}: {row.reason}" + (f" ({row.detail})" if row.detail else ""))
        if len(self) > max_rows:
            lines.append(f"  ... and {len(self) - max_rows} more")
        return "\n".join(lines)

    def log(self, log: logging.Logger | None = None, level: int = logging.WARNING) -> None:
        """Log `report()` (at WARNING when rows were skipped, else INFO)."""
        (log or logger).log(level if self else logging.INFO, self.report())

    def gather(self, accelerator=None) -> SkippedRows:
        """The union of every process's report (call it on all processes); a copy when running one process.

        Args:
            accelerator: an `accelerate.Accelerator` (or None for a single process).
        """
        if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
            return SkippedRows(self.rows)
        from accelerate.utils import gather_object

        merged = SkippedRows()
        for summary in gather_object([self.summary()]):
            merged.extend(SkippedRows.from_summary(summary))
        return merged


__all__ = ["SKIP_REASONS", "SkippedRow", "SkippedRows"]
