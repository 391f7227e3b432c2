-- TRUNCATE orders expires the cursors that did not see it; retention pruning expires the
-- cursors behind what it deleted. Two facts, kept apart: an idle transaction older than a
-- TRUNCATE must not make every later cursor look pruned.
ALTER TABLE order_changes_horizon ADD COLUMN truncated_xid xid8 NOT NULL DEFAULT '0';
COMMENT ON COLUMN order_changes_horizon.pruned_xid IS
    'The newest transaction whose changes retention pruned.';
COMMENT ON COLUMN order_changes_horizon.truncated_xid IS
    'The last transaction that ran TRUNCATE orders.';
