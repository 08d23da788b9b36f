"""The PostgreSQL batch store (batches_db): schema migrations, ingestion of delivered batches
and the readers the pipeline and the UI use.

Tables and views (schema/001_initial.sql): covertype_rows (typed rows, row_hash, is_holdout),
batch_status, rejected_rows, batch_statistics (per group and batch) and batch_totals (per
group). `python -m app.batch_store migrate` applies the schema using BATCHES_DB_DSN.
"""

from app.batch_store.ingest import IngestError, IngestReport, ingest_batch
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

__all__ = [
    "IngestError",
    "IngestReport",
    "MigrationError",
    "apply_migrations",
    "batch_numbers",
    "batch_statistics",
    "batch_totals",
    "data_fingerprint",
    "ingest_batch",
    "load_rows",
    "missing_batches",
    "seen_batches",
]
