-- A read of the change log for one owner (a user's own stream, or staff watching one owner)
-- walks that owner's changes in (xid, seq) order and stops at the page's limit
-- (db/changelog.py). On (owner_id, xid) the rows of one transaction come in no useful order:
-- a page either read and sorted all of the owner's changes in the transaction, or walked
-- everyone's changes and dropped the others'.
-- The wider keys cost a 50,000-row UPDATE about 2% (docs/benchmarks.md, session 7).
-- The indexes are built under a lock that holds order writes back while it lasts: about
-- half a second per million rows in the log (its retention window) on the bench machine.
CREATE INDEX order_changes_owner_xid_seq ON order_changes (owner_id, xid, seq);
CREATE INDEX order_changes_old_owner_xid_seq ON order_changes (old_owner_id, xid, seq)
    WHERE old_owner_id IS NOT NULL;
DROP INDEX order_changes_owner_xid;
DROP INDEX order_changes_old_owner_xid;
