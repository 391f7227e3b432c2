-- Cheaper writes (docs/benchmarks.md, "Writer cost").
-- The change log is UNLOGGED: writers no longer pay WAL for it (its rows and indexes were
-- more than half of a single-row UPDATE's WAL). The price: after a crash, on a promoted
-- standby, or in a base backup, PostgreSQL starts it empty. The log only serves replays
-- (resumes, listener gaps, bulk statements), so losing it loses nothing committed, provided
-- every cursor older than the loss gets `resync`: order_changes_alive, unlogged too, is
-- emptied with it, and the first server to find it empty moves the horizon past everything
-- before (orderstream_change_log_recover() in db/triggers.sql; docs/guarantees.md).
-- Rewrites the table once, and writers of orders wait for it: 2.5 s for 450,000 rows (204 MB)
-- on the 2-CPU development machine.
ALTER TABLE order_changes SET UNLOGGED;

-- Frames are read by (xid, seq), which order_changes_xid serves (the listener knows both);
-- seq is unique by construction (a sequence). One B-tree less for every change.
ALTER TABLE order_changes DROP CONSTRAINT order_changes_pkey;

-- updated_at changes on every write (the stamp trigger), so while it was indexed no update of
-- an order could be HOT: each one inserted into all three of orders' indexes. Without it,
-- an update that keeps id and owner_id stays on its page and touches no index. The list's
-- sort=updated_at becomes a top-N sort over the rows the list counts anyway.
DROP INDEX orders_updated_at;

CREATE UNLOGGED TABLE order_changes_alive (
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT order_changes_alive_one_row
              CHECK (singleton)
);
COMMENT ON TABLE order_changes_alive IS
    'One row while the unlogged change log holds everything since its horizon; a crash empties both.';
INSERT INTO order_changes_alive DEFAULT VALUES;
