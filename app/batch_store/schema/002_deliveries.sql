-- Batches as the data API delivered them, between the pipeline's fetch_batch and store_batch
-- tasks: fetch_batch saves the payload here and hands store_batch only its id, so thousands
-- of rows never travel through Airflow's XCom (the metadata database). store_batch deletes
-- the row in the transaction that stores the batch; a row left here is a fetch whose store
-- step failed or never ran, kept so nothing delivered is lost.
CREATE TABLE IF NOT EXISTS batch_deliveries (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_number integer     NOT NULL CHECK (group_number >= 1),
    batch_number integer     NOT NULL CHECK (batch_number >= 0),
    fetched_at   timestamptz NOT NULL,
    row_count    integer     NOT NULL CHECK (row_count >= 0),
    -- The rows exactly as delivered (a JSON array of arrays), malformed ones included:
    -- validation happens when they are stored.
    payload      jsonb       NOT NULL
);

INSERT INTO schema_migrations (version, name) VALUES (2, 'deliveries')
ON CONFLICT (version) DO NOTHING;
