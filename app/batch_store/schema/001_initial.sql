-- Batch store, version 1: rows, per-batch bookkeeping, rejected rows and statistics views.
--
-- Plain, idempotent SQL: `python -m app.batch_store migrate` applies it inside a transaction
-- under an advisory lock, and applying it again by other means (psql, Ansible's
-- postgresql_script) changes nothing. Needs PostgreSQL 14+ (SQL-standard function bodies).
-- Never edit a released file: add NNN_<name>.sql instead.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The identity of a row: sha256 of its 13 values in the data contract's order, integers in
-- canonical decimal, joined by commas (the same text as the row's line in covertype.csv).
-- app/batch_store/validation.py:row_hash computes the same bytes in Python.
-- The text is ASCII without backslashes (digits, commas and the category names the CHECKs
-- allow), so its bytea input form is exactly its bytes. Everything in the body is IMMUTABLE,
-- which lets PostgreSQL inline the function (about 5x faster than convert_to(), which is only
-- STABLE and blocks inlining).
CREATE OR REPLACE FUNCTION covertype_row_hash(
    elevation integer,
    aspect integer,
    slope integer,
    horizontal_distance_to_hydrology integer,
    vertical_distance_to_hydrology integer,
    horizontal_distance_to_roadways integer,
    hillshade_9am integer,
    hillshade_noon integer,
    hillshade_3pm integer,
    horizontal_distance_to_fire_points integer,
    wilderness_area text,
    soil_type text,
    cover_type integer
) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN sha256((
    elevation::text || ',' || aspect::text || ',' || slope::text || ','
    || horizontal_distance_to_hydrology::text || ',' || vertical_distance_to_hydrology::text || ','
    || horizontal_distance_to_roadways::text || ',' || hillshade_9am::text || ','
    || hillshade_noon::text || ',' || hillshade_3pm::text || ','
    || horizontal_distance_to_fire_points::text || ',' || wilderness_area || ',' || soil_type || ','
    || cover_type::text
)::bytea);

-- The train/holdout split, a pure function of the row hash: the first two bytes as an unsigned
-- 16-bit number, mod 100, below 20 means held out. Fixed at 20 % here so that a row never moves
-- between splits and the held-out set only grows. Changing it would silently leak held-out rows
-- into training: a different split needs a new column in a new migration.
CREATE OR REPLACE FUNCTION covertype_is_holdout(row_hash bytea) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (get_byte(row_hash, 0) * 256 + get_byte(row_hash, 1)) % 100 < 20;

-- One row per distinct row per group. Column names are app/covertype.COLUMNS in lower case.
-- A row is attributed to the batch that first delivered it to its group; later deliveries
-- count as duplicates in batch_status. The CHECK ranges mirror app/covertype.NUMERIC_RANGES
-- (tests/test_batch_store_schema.py asserts they agree).
CREATE TABLE IF NOT EXISTS covertype_rows (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_number integer     NOT NULL CONSTRAINT covertype_rows_group_number_check
                                 CHECK (group_number >= 1),
    -- Some copies of the course's server start counting at 0.
    batch_number integer     NOT NULL CONSTRAINT covertype_rows_batch_number_check
                                 CHECK (batch_number >= 0),
    fetched_at   timestamptz NOT NULL,
    elevation integer NOT NULL
        CONSTRAINT covertype_rows_elevation_range CHECK (elevation BETWEEN 0 AND 5000),
    aspect smallint NOT NULL
        CONSTRAINT covertype_rows_aspect_range CHECK (aspect BETWEEN 0 AND 360),
    slope smallint NOT NULL
        CONSTRAINT covertype_rows_slope_range CHECK (slope BETWEEN 0 AND 90),
    horizontal_distance_to_hydrology integer NOT NULL
        CONSTRAINT covertype_rows_horizontal_distance_to_hydrology_range
        CHECK (horizontal_distance_to_hydrology BETWEEN 0 AND 10000),
    vertical_distance_to_hydrology smallint NOT NULL
        CONSTRAINT covertype_rows_vertical_distance_to_hydrology_range
        CHECK (vertical_distance_to_hydrology BETWEEN -1000 AND 1000),
    horizontal_distance_to_roadways integer NOT NULL
        CONSTRAINT covertype_rows_horizontal_distance_to_roadways_range
        CHECK (horizontal_distance_to_roadways BETWEEN 0 AND 10000),
    hillshade_9am smallint NOT NULL
        CONSTRAINT covertype_rows_hillshade_9am_range CHECK (hillshade_9am BETWEEN 0 AND 255),
    hillshade_noon smallint NOT NULL
        CONSTRAINT covertype_rows_hillshade_noon_range CHECK (hillshade_noon BETWEEN 0 AND 255),
    hillshade_3pm smallint NOT NULL
        CONSTRAINT covertype_rows_hillshade_3pm_range CHECK (hillshade_3pm BETWEEN 0 AND 255),
    horizontal_distance_to_fire_points integer NOT NULL
        CONSTRAINT covertype_rows_horizontal_distance_to_fire_points_range
        CHECK (horizontal_distance_to_fire_points BETWEEN 0 AND 10000),
    wilderness_area text NOT NULL
        CONSTRAINT covertype_rows_wilderness_area_known
        CHECK (wilderness_area IN ('Rawah', 'Neota', 'Commanche', 'Cache')),
    soil_type text NOT NULL
        CONSTRAINT covertype_rows_soil_type_known
        CHECK (soil_type IN (
            'C2702', 'C2703', 'C2704', 'C2705', 'C2706', 'C2717', 'C3501', 'C3502',
            'C4201', 'C4703', 'C4704', 'C4744', 'C4758', 'C5101', 'C5151', 'C6101',
            'C6102', 'C6731', 'C7101', 'C7102', 'C7103', 'C7201', 'C7202', 'C7700',
            'C7701', 'C7702', 'C7709', 'C7710', 'C7745', 'C7746', 'C7755', 'C7756',
            'C7757', 'C7790', 'C8703', 'C8707', 'C8708', 'C8771', 'C8772', 'C8776')),
    cover_type smallint NOT NULL
        CONSTRAINT covertype_rows_cover_type_range CHECK (cover_type BETWEEN 1 AND 7),
    -- Computed by the database, so no client can store a hash or a split that disagrees
    -- with the row's values.
    row_hash bytea NOT NULL GENERATED ALWAYS AS (covertype_row_hash(
        elevation, aspect, slope, horizontal_distance_to_hydrology,
        vertical_distance_to_hydrology, horizontal_distance_to_roadways, hillshade_9am,
        hillshade_noon, hillshade_3pm, horizontal_distance_to_fire_points, wilderness_area,
        soil_type, cover_type)) STORED,
    is_holdout boolean NOT NULL GENERATED ALWAYS AS (covertype_is_holdout(covertype_row_hash(
        elevation, aspect, slope, horizontal_distance_to_hydrology,
        vertical_distance_to_hydrology, horizontal_distance_to_roadways, hillshade_9am,
        hillshade_noon, hillshade_3pm, horizontal_distance_to_fire_points, wilderness_area,
        soil_type, cover_type))) STORED,
    CONSTRAINT covertype_rows_group_row_hash_key UNIQUE (group_number, row_hash)
);

-- The pipeline loads one split of one group in insertion order.
CREATE INDEX IF NOT EXISTS covertype_rows_split_idx
    ON covertype_rows (group_number, is_holdout, id);
-- batch_statistics and batch_numbers() group by batch.
CREATE INDEX IF NOT EXISTS covertype_rows_batch_idx
    ON covertype_rows (group_number, batch_number);

-- One row per (group, batch); every fetch of the batch adds its counts, so
-- rows_received = rows_new + rows_duplicate + rows_rejected over all fetches.
CREATE TABLE IF NOT EXISTS batch_status (
    group_number   integer     NOT NULL CHECK (group_number >= 1),
    batch_number   integer     NOT NULL CHECK (batch_number >= 0),
    fetch_count    integer     NOT NULL CHECK (fetch_count >= 1),
    rows_received  integer     NOT NULL CHECK (rows_received >= 0),
    rows_new       integer     NOT NULL CHECK (rows_new >= 0),
    rows_duplicate integer     NOT NULL CHECK (rows_duplicate >= 0),
    rows_rejected  integer     NOT NULL CHECK (rows_rejected >= 0),
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    PRIMARY KEY (group_number, batch_number),
    CONSTRAINT batch_status_counts_add_up
        CHECK (rows_received = rows_new + rows_duplicate + rows_rejected),
    CONSTRAINT batch_status_seen_order CHECK (last_seen_at >= first_seen_at)
);

-- Rows that failed validation, exactly as received (JSON), with every reason found.
CREATE TABLE IF NOT EXISTS rejected_rows (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_number integer     NOT NULL,
    batch_number integer     NOT NULL,
    fetched_at   timestamptz NOT NULL,
    row_index    integer     NOT NULL,  -- position in the delivered payload, from 0
    raw_row      jsonb       NOT NULL,
    reason       text        NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_rows_batch_idx
    ON rejected_rows (group_number, batch_number);

-- Per group and batch: the fetch bookkeeping, the rows stored from it (train/holdout) and its
-- class distribution (one column per Cover_Type). Totals per group are in batch_totals.
CREATE OR REPLACE VIEW batch_statistics AS
SELECT
    s.group_number,
    s.batch_number,
    s.fetch_count,
    s.rows_received,
    s.rows_new,
    s.rows_duplicate,
    s.rows_rejected,
    coalesce(r.rows_stored, 0)  AS rows_stored,
    coalesce(r.train_rows, 0)   AS train_rows,
    coalesce(r.holdout_rows, 0) AS holdout_rows,
    coalesce(r.cover_type_1, 0) AS cover_type_1,
    coalesce(r.cover_type_2, 0) AS cover_type_2,
    coalesce(r.cover_type_3, 0) AS cover_type_3,
    coalesce(r.cover_type_4, 0) AS cover_type_4,
    coalesce(r.cover_type_5, 0) AS cover_type_5,
    coalesce(r.cover_type_6, 0) AS cover_type_6,
    coalesce(r.cover_type_7, 0) AS cover_type_7,
    s.first_seen_at,
    s.last_seen_at
FROM batch_status AS s
LEFT JOIN (
    SELECT
        group_number,
        batch_number,
        count(*)                                AS rows_stored,
        count(*) FILTER (WHERE NOT is_holdout)  AS train_rows,
        count(*) FILTER (WHERE is_holdout)      AS holdout_rows,
        count(*) FILTER (WHERE cover_type = 1)  AS cover_type_1,
        count(*) FILTER (WHERE cover_type = 2)  AS cover_type_2,
        count(*) FILTER (WHERE cover_type = 3)  AS cover_type_3,
        count(*) FILTER (WHERE cover_type = 4)  AS cover_type_4,
        count(*) FILTER (WHERE cover_type = 5)  AS cover_type_5,
        count(*) FILTER (WHERE cover_type = 6)  AS cover_type_6,
        count(*) FILTER (WHERE cover_type = 7)  AS cover_type_7
    FROM covertype_rows
    GROUP BY group_number, batch_number
) AS r USING (group_number, batch_number);

-- One row per group: batch_statistics summed over its batches.
CREATE OR REPLACE VIEW batch_totals AS
SELECT
    group_number,
    count(*)                      AS batches,
    sum(fetch_count)::bigint      AS fetch_count,
    sum(rows_received)::bigint    AS rows_received,
    sum(rows_new)::bigint         AS rows_new,
    sum(rows_duplicate)::bigint   AS rows_duplicate,
    sum(rows_rejected)::bigint    AS rows_rejected,
    sum(rows_stored)::bigint      AS rows_stored,
    sum(train_rows)::bigint       AS train_rows,
    sum(holdout_rows)::bigint     AS holdout_rows,
    sum(cover_type_1)::bigint     AS cover_type_1,
    sum(cover_type_2)::bigint     AS cover_type_2,
    sum(cover_type_3)::bigint     AS cover_type_3,
    sum(cover_type_4)::bigint     AS cover_type_4,
    sum(cover_type_5)::bigint     AS cover_type_5,
    sum(cover_type_6)::bigint     AS cover_type_6,
    sum(cover_type_7)::bigint     AS cover_type_7,
    min(first_seen_at)            AS first_seen_at,
    max(last_seen_at)             AS last_seen_at
FROM batch_statistics
GROUP BY group_number;

INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')
ON CONFLICT (version) DO NOTHING;
