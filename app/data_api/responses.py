"""The /data body, assembled from pre-encoded rows: the per-request hot path."""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence

from app.data_api.sampling import sample_indices


def data_body(rows: list[bytes], rng: random.Random, group_number: int, batch_number: int) -> bytes:
    """{"group_number":G,"batch_number":B,"data":[...]} with a random tenth of `rows`.

    Each row is already its JSON array, so the body is one join: no per-request encoding.
    """
    picked = _pick(rows, sample_indices(rng, len(rows), len(rows) // 10))
    return b"".join(
        (
            b'{"group_number":%d,"batch_number":%d,"data":[' % (group_number, batch_number),
            b",".join(picked),
            b"]}",
        )
    )


def _pick(rows: list[bytes], indices: list[int]) -> Sequence[bytes]:
    # itemgetter fetches in C: about half the cost of a list comprehension at 5,810 rows.
    if len(indices) < 2:  # itemgetter of one index returns the item itself, of none fails
        return [rows[i] for i in indices]
    return operator.itemgetter(*indices)(rows)
