-- The change log's generation, carried in every cursor (db/position.py; docs/guarantees.md,
-- "A crash empties the change log").
-- Moving the horizon past the recovering transaction (0009) expires every cursor below it,
-- but not one that names xids above it: xids the lost primary had handed out and the new
-- one had not (an asynchronous standby promoted, a crash with synchronous_commit = off).
-- Once the new primary's xids pass such a cursor, they belong to other transactions, and
-- its holder would silently miss them. orderstream_change_log_recover() now also draws a new
-- random generation, and a cursor of any other generation is expired, whatever its xids.
-- 0 is the log's generation until its first loss: cursors from before generations had it.
-- A constant default: no rewrite of the (one-row) table.
ALTER TABLE order_changes_horizon
    ADD COLUMN generation bigint NOT NULL DEFAULT 0
    CONSTRAINT order_changes_horizon_generation_check CHECK (generation >= 0);
COMMENT ON COLUMN order_changes_horizon.generation IS
    'The change log''s generation: random, drawn anew each time the log is recovered after a loss (0 before the first).';
