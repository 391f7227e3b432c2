-- A read of the change log for one owner (a user's own stream, or staff watching one owner)
-- walks that owner's changes in (xid, seq) order and stops at the page's limit
-- (db/changelog.py). On (owner_id, xid) the rows of one transaction come in no useful order:
-- a page either read and sorted all of the owner's changes in the transaction, or walked
-- everyone's changes and dropped the others'.
-- The price is on the writer of a big statement: its rows of one owner were one key
-- (owner_id, xid), which PostgreSQL stores once with all their row pointers; now each row is
-- a key of its own. A 50,000-row UPDATE costs 2-3% more, and 13-17% more in one comparison
-- on logs of 1.4 million rows grown by big statements (docs/benchmarks.md, session 7).
-- Single-row writes had a key per row before too.
-- The indexes are built under a lock that holds order writes back while it lasts: about
-- half a second per million rows in the log (its retention window) on the bench machine.
CREATE INDEX order_changes_owner_xid_seq ON order_changes (owner_id, xid, seq);
CREATE INDEX order_changes_old_owner_xid_seq ON order_changes (old_owner_id, xid, seq)
    WHERE old_owner_id IS NOT NULL;
DROP INDEX order_changes_owner_xid;
DROP INDEX order_changes_old_owner_xid;
