"""The PostgreSQL batch store (batches_db): schema migrations, the deliveries the DAG saves
between its fetch and store steps, storing a delivered batch, and the readers the pipeline and
the UI use.

Tables and views (schema/): covertype_rows (typed rows, row_hash, is_holdout), batch_status,
rejected_rows, batch_deliveries, batch_statistics (per group and batch) and batch_totals (per
group). `python -m app.batch_store migrate` applies the schema using BATCHES_DB_DSN.
"""

from app.batch_store.deliveries import DeliveryNotFoundError, save_delivery
from app.batch_store.migrations import MigrationError, apply_migrations
from app.batch_store.read import (
    batch_numbers,
    batch_statistics,
    batch_totals,
    data_fingerprint,
    load_rows,
    missing_batches,
    seen_batches,
)
from app.batch_store.store import StoreError, StoreReport, store_batch, store_delivery

__all__ = [
    "DeliveryNotFoundError",
    "MigrationError",
    "StoreError",
    "StoreReport",
    "apply_migrations",
    "batch_numbers",
    "batch_statistics",
    "batch_totals",
    "data_fingerprint",
    "load_rows",
    "missing_batches",
    "save_delivery",
    "seen_batches",
    "store_batch",
    "store_delivery",
]
