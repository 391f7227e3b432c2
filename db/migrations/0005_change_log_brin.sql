-- Every order write inserts into order_changes; only the pruner, once a minute, looks rows
-- up by age. A BRIN index (rows arrive in created_at order) serves it at a fraction of a
-- btree's cost to each writer.
DROP INDEX order_changes_created_at;
CREATE INDEX order_changes_created_at ON order_changes USING brin (created_at);
