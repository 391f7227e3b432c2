-- Trigger functions and triggers that make every write to orders and quotes an
-- event. Re-applied by `migrate` whenever this file changes (its sha256 is kept in
-- schema_state): keep it idempotent.
--
-- Every statement that changes orders logs its changes in order_changes with one
-- set-based INSERT (statement-level triggers with transition tables: a 100,000-row
-- UPDATE is one insert, not 100,000 trigger calls) and announces them on channel
-- 'orders' (internal to orderstream), one notification per change:
--     "<seq> <xid> <snapshot> <owner_id> <old_owner_id or -> <frame>"
-- or, for a statement of more than 100 rows, one notification for all of them:
--     "<seq> <xid> <snapshot> bulk"
-- which the server answers by reading that transaction's changes from the log.
-- <frame> is the WebSocket text frame for the event but for its "cursor", which the
-- server appends (db/position.py); the server routes by the header and never re-encodes
-- the order. <xid> is the writing transaction, <snapshot> what it saw finished
-- (pg_current_snapshot()): since notifications arrive in commit order, every change of
-- those transactions was announced before this one. When a change would pass NOTIFY's
-- 8000-byte limit the frame is left empty and the server reads it from the log.
-- NOTIFY is transactional: a rolled-back write announces nothing.
-- Every notification on 'orders' (and 'quotes') is signed: "<tag> <payload>" with the
-- tag an HMAC of the payload under notification_key (db/signing.py). The functions that
-- sign run as their owner (SECURITY DEFINER), so writers need no access to the key nor to
-- order_changes, and cannot forge an event.

-- "<tag> <body>": the tag is the first 16 bytes of HMAC-SHA256(key, "<channel> <body>") in
-- hex (RFC 2104, from the key's inner and outer pads), so a payload signed for one channel
-- is refused on another. orderstream_tag is the rule; its callers join notification_key
-- and pass the pads as columns (k.inner_pad), so the planner inlines it with no call per
-- notification. The pads are never passed as values: a value in a planned statement shows
-- in plan dumps (debug_print_plan) a writer may turn on in its own session.
DROP FUNCTION IF EXISTS orderstream_signed(bytea, bytea, text);
CREATE OR REPLACE FUNCTION orderstream_tag(inner_pad bytea, outer_pad bytea, message text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT encode(substr(sha256(outer_pad || sha256(inner_pad || convert_to(message, 'UTF8'))),
                         1, 16), 'hex')
$$;
REVOKE ALL ON FUNCTION orderstream_tag(bytea, bytea, text) FROM PUBLIC;

-- One notification's "<tag> <body>", for the statements that send one (bulk, truncate,
-- quotes). Only the owner's functions call it (they run as the owner: the key is theirs).
CREATE OR REPLACE FUNCTION orderstream_sign(channel text, body text)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    signed text;
BEGIN
    SELECT orderstream_tag(k.inner_pad, k.outer_pad, channel || ' ' || body) || ' ' || body
    INTO signed FROM public.notification_key k;
    IF signed IS NULL THEN
        RAISE EXCEPTION 'orderstream: notification_key is empty; run `python server.py migrate`';
    END IF;
    RETURN signed;
END
$$;
REVOKE ALL ON FUNCTION orderstream_sign(text, text) FROM PUBLIC;

-- One order as the JSON the API and the stream share (numbers as decimal strings,
-- timestamps in UTC), as text: byte for byte what json_build_object makes ("key" : value,
-- ", " between), built by concatenation, because json_build_object looks its arguments'
-- types up in the catalog on every call (most of a 50,000-row UPDATE's frame cost).
-- Escaped (to_json) only where needed: usernames (users_username_format), side and status
-- are constrained to characters JSON leaves alone, numbers and timestamps need nothing.
-- Columns, not the row: a bulk statement passes a transition table's columns without
-- building a row value per change.
CREATE OR REPLACE FUNCTION orderstream_order_text(
    id bigint, owner_id bigint, owner_name text, instrument text, side text,
    quantity numeric, price numeric, status text, note text, version bigint,
    created_at timestamptz, updated_at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT '{"id" : ' || id || ', "owner_id" : ' || owner_id
        || ', "owner" : ' || coalesce('"' || owner_name || '"', 'null')
        || ', "instrument" : ' || to_json(instrument)::text
        || ', "side" : "' || side || '", "quantity" : "' || quantity
        || '", "price" : "' || price || '", "status" : "' || status || '", "note" : '
        || CASE WHEN note = '' THEN '""' ELSE to_json(note)::text END
        || ', "version" : ' || version || ', "created_at" : "'
        || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '", "updated_at" : "'
        || to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}'
$$;

CREATE OR REPLACE FUNCTION orderstream_order_json(o orders, owner_name text)
RETURNS json LANGUAGE sql STABLE AS $$
    SELECT orderstream_order_text(o.id, o.owner_id, owner_name, o.instrument, o.side,
                                  o.quantity, o.price, o.status, o.note, o.version,
                                  o.created_at, o.updated_at)::json
$$;

-- Epoch milliseconds with microsecond fraction: the `ts` of events.
CREATE OR REPLACE FUNCTION orderstream_now_ms()
RETURNS numeric LANGUAGE sql VOLATILE AS $$
    SELECT round(extract(epoch FROM clock_timestamp()) * 1000, 3)
$$;

-- The event frame of one change (without its cursor), around the order's text. op is one
-- of insert/update/delete: no escaping.
DROP FUNCTION IF EXISTS orderstream_event_frame(text, bigint, numeric, orders, text);
CREATE OR REPLACE FUNCTION orderstream_event_frame(op text, seq bigint, ts numeric,
                                                   order_text text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT '{"type" : "order", "op" : "' || op || '", "seq" : ' || seq || ', "ts" : ' || ts
        || ', "order" : ' || order_text || '}'
$$;

-- The version stamp, one function per event (no TG_OP test per row). A row trigger runs
-- once per changed row: these run for every row of a 100,000-row UPDATE, so they hold no
-- more than the assignments.
CREATE OR REPLACE FUNCTION orderstream_orders_stamp_insert()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := 1;
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.updated_at := NEW.created_at;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION orderstream_orders_stamp_update()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.created_at := OLD.created_at;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

-- Called only when an UPDATE changes an id (the trigger's WHEN clause tests it without a
-- function call): ids are immutable.
CREATE OR REPLACE FUNCTION orderstream_orders_id_fixed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'orders.id cannot be changed (order %)', OLD.id
        USING ERRCODE = 'check_violation';
END
$$;

-- "<xid> <snapshot> ": the header every notification of this transaction starts with.
-- With hundreds of transactions running, the snapshot text would crowd out the frame:
-- then it says only "everything below xmin finished" ("xmin:xmin:"), which is as true.
-- SQL without a FROM, so the planner inlines it (pg_current_snapshot() is the statement's
-- snapshot, the same on each call).
DROP FUNCTION IF EXISTS orderstream_change_header();
CREATE FUNCTION orderstream_change_header()
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT pg_current_xact_id() || ' '
        || CASE WHEN octet_length(pg_current_snapshot()::text) > 1000
                THEN pg_snapshot_xmin(pg_current_snapshot()) || ':'
                     || pg_snapshot_xmin(pg_current_snapshot()) || ':'
                ELSE pg_current_snapshot()::text END || ' '
$$;

-- The body of one change's notification, "<seq> <header><owner_id> <old_owner_id or -> <frame>",
-- the frame left out if the notification would pass NOTIFY's 8000 bytes (seq and owner ids
-- add at most 61 bytes to header and frame, the tag 33). Plain SQL: the planner inlines it.
CREATE OR REPLACE FUNCTION orderstream_change_body(header text, seq bigint, owner_id bigint,
                                                   old_owner_id bigint, frame text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT seq || ' ' || header || owner_id || ' ' || coalesce(old_owner_id::text, '-') || ' '
        || CASE WHEN octet_length(header) + octet_length(frame) < 7850 THEN frame ELSE '' END
$$;

-- A statement of more than 100 rows: one notification for all of them.
DROP FUNCTION IF EXISTS orderstream_announce_bulk(bytea, bytea, text);
CREATE OR REPLACE FUNCTION orderstream_announce_bulk(header text)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('orders', orderstream_sign('orders',
        currval('order_event_seq') || ' ' || header || 'bulk'))
$$;

-- Names used by earlier versions of this file: a PL/pgSQL call per change (log_one), and a
-- signing call per notification (announce).
DROP FUNCTION IF EXISTS orderstream_announce(bigint, text, bigint, bigint, bigint, text);
DROP FUNCTION IF EXISTS orderstream_announce_bulk(bigint, text);
DROP FUNCTION IF EXISTS orderstream_announce(text, bigint, bigint, bigint, text);
DROP FUNCTION IF EXISTS orderstream_log_one(text, orders, bigint, text, numeric, bytea, bytea);
DROP FUNCTION IF EXISTS orderstream_log_one(text, orders, bigint, text, numeric);

-- Every statement that changes orders: log its changes and announce them. As its owner,
-- with a fixed search_path: the writer needs no right to order_changes or the key.
-- Changes are numbered (nextval) in the order they are inserted and returned, so one
-- transaction's notifications arrive in seq order.
-- jit = off: the planner cannot estimate a join of two transition tables (it guessed
-- 12,500,000 rows for 50,000), so a big statement's insert passed jit_above_cost and spent
-- 0.5 s compiling, a third of the statement; no merge join for the same reason (it sorted
-- both transition tables, on disk, where a hash join reads each once).
CREATE OR REPLACE FUNCTION orderstream_orders_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET jit = off SET enable_mergejoin = off AS $$
DECLARE
    op        text := lower(TG_OP);
    header    text := orderstream_change_header();
    ts        numeric := orderstream_now_ms();
    first     record;
    announced bigint;
    changed   text;
    insert_changes text;
BEGIN
    -- How many rows changed, and the first of them (with the owner it had before an
    -- update), in one read of the transition table. Transition tables exist per event:
    -- each branch names only its own.
    IF TG_OP = 'UPDATE' THEN
        SELECT (SELECT count(*) FROM new_rows) AS changes, r.*,
               (SELECT was.owner_id FROM old_rows was LIMIT 1) AS was_owner_id
        INTO first FROM new_rows r LIMIT 1;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT (SELECT count(*) FROM new_rows) AS changes, r.*, NULL::bigint AS was_owner_id
        INTO first FROM new_rows r LIMIT 1;
    ELSE
        SELECT (SELECT count(*) FROM old_rows) AS changes, r.*, NULL::bigint AS was_owner_id
        INTO first FROM old_rows r LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF first.changes = 1 THEN
        -- One change on its own: most writes (the API, a psql UPDATE ... WHERE id = 1).
        -- One static statement (its plan cached, where the EXECUTE below plans on every
        -- call) logs, signs and announces it, the key's pads read as columns.
        WITH logged AS (
            INSERT INTO order_changes (seq, owner_id, old_owner_id, frame)
            SELECT s.seq, first.owner_id, nullif(first.was_owner_id, first.owner_id),
                   orderstream_event_frame(op, s.seq, ts, orderstream_order_text(
                       first.id, first.owner_id,
                       (SELECT u.username FROM users u WHERE u.id = first.owner_id),
                       first.instrument, first.side, first.quantity, first.price,
                       first.status, first.note, first.version, first.created_at,
                       first.updated_at))
            FROM (SELECT nextval('order_event_seq') AS seq) s
            RETURNING orderstream_change_body(header, seq, owner_id, old_owner_id, frame) AS body)
        SELECT count(pg_notify('orders', orderstream_tag(k.inner_pad, k.outer_pad,
                                                         'orders ' || l.body) || ' ' || l.body))
        INTO announced FROM logged l CROSS JOIN notification_key k;
    ELSE
        -- The changed rows (a delete carries the version it deleted), the owner they had
        -- before an update, and the owner's name, from one join with users.
        changed := CASE TG_OP
            WHEN 'INSERT' THEN 'SELECT r.*, NULL::bigint AS was_owner_id,'
                ' u.username AS owner_name FROM new_rows r LEFT JOIN users u ON u.id = r.owner_id'
            WHEN 'UPDATE' THEN 'SELECT r.*, was.owner_id AS was_owner_id,'
                ' u.username AS owner_name FROM new_rows r JOIN old_rows was ON was.id = r.id'
                ' LEFT JOIN users u ON u.id = r.owner_id'
            ELSE 'SELECT r.*, NULL::bigint AS was_owner_id,'
                ' u.username AS owner_name FROM old_rows r LEFT JOIN users u ON u.id = r.owner_id'
        END;
        -- A few rows are numbered in id order: a multi-row INSERT then streams as written,
        -- not in the hash join's order (which reversed it). For a big statement the sort is
        -- not worth its cost: its changes are read back in seq order whatever that is.
        IF first.changes <= 100 THEN
            changed := changed || ' ORDER BY r.id';
        END IF;
        -- EXECUTE: planned for this statement's row count. A cached plan made for a few
        -- rows (a nested loop over old and new rows) would be quadratic for 100,000.
        -- Changes are numbered after the join; the frame takes the rows' columns as they
        -- are (no row value per change).
        insert_changes := format(
            'INSERT INTO order_changes (seq, owner_id, old_owner_id, frame)'
            ' SELECT c.seq, c.owner_id, nullif(c.was_owner_id, c.owner_id),'
            '  orderstream_event_frame($1, c.seq, $2, orderstream_order_text(c.id, c.owner_id,'
            '   c.owner_name, c.instrument, c.side, c.quantity, c.price, c.status, c.note,'
            '   c.version, c.created_at, c.updated_at))'
            ' FROM (SELECT nextval(''order_event_seq'') AS seq, j.* FROM (%s) j) c', changed);
        IF first.changes > 100 THEN
            EXECUTE insert_changes USING op, ts;
            PERFORM orderstream_announce_bulk(header);
            RETURN NULL;
        END IF;
        EXECUTE 'WITH logged AS (' || insert_changes
            || ' RETURNING orderstream_change_body($3, seq, owner_id, old_owner_id, frame) AS body)'
            ' SELECT count(pg_notify(''orders'', orderstream_tag(k.inner_pad, k.outer_pad,'
            '  ''orders '' || l.body) || '' '' || l.body)) FROM logged l CROSS JOIN notification_key k'
        INTO announced USING op, ts, header;
    END IF;
    IF announced <> first.changes THEN
        RAISE EXCEPTION 'orderstream: notification_key is empty; run `python server.py migrate`';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orders_stamp ON orders;
DROP TRIGGER IF EXISTS orders_stamp_insert ON orders;
CREATE TRIGGER orders_stamp_insert
    BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_stamp_insert();
-- BEFORE triggers fire in name order: the id check comes before the stamp.
DROP TRIGGER IF EXISTS orders_id_fixed ON orders;
CREATE TRIGGER orders_id_fixed
    BEFORE UPDATE ON orders
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION orderstream_orders_id_fixed();
DROP TRIGGER IF EXISTS orders_stamp_update ON orders;
CREATE TRIGGER orders_stamp_update
    BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_stamp_update();
-- One function for both events in an earlier version of this file.
DROP FUNCTION IF EXISTS orderstream_orders_stamp();

-- Names used by earlier versions of this file (one row trigger per change).
DROP TRIGGER IF EXISTS orders_notify ON orders;
DROP FUNCTION IF EXISTS orderstream_orders_notify();

-- Transition tables allow one event per trigger: three triggers, one function.
DROP TRIGGER IF EXISTS orders_inserted ON orders;
CREATE TRIGGER orders_inserted
    AFTER INSERT ON orders REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orderstream_orders_changed();

DROP TRIGGER IF EXISTS orders_updated ON orders;
CREATE TRIGGER orders_updated
    AFTER UPDATE ON orders REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orderstream_orders_changed();

DROP TRIGGER IF EXISTS orders_deleted ON orders;
CREATE TRIGGER orders_deleted
    AFTER DELETE ON orders REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orderstream_orders_changed();

-- One function per event in an earlier version of this file.
DROP FUNCTION IF EXISTS orderstream_orders_inserted();
DROP FUNCTION IF EXISTS orderstream_orders_updated();
DROP FUNCTION IF EXISTS orderstream_orders_deleted();

-- TRUNCATE fires no row triggers: tell every session to reload, and expire every cursor
-- taken before it (the change log cannot replay "everything vanished").
CREATE OR REPLACE FUNCTION orderstream_orders_truncated()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    UPDATE order_changes_horizon
    SET truncated_xid = greatest(truncated_xid, pg_current_xact_id());
    -- The xid makes a replayed copy recognisable (the listener acts on each truncate once).
    PERFORM pg_notify('orders', orderstream_sign('orders', 'truncate ' || pg_current_xact_id()));
    RETURN NULL;
END
$$;
-- Only as triggers: a role that may create a trigger elsewhere must not borrow these to
-- sign rows of its own.
REVOKE ALL ON FUNCTION orderstream_orders_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION orderstream_orders_truncated() FROM PUBLIC;

DROP TRIGGER IF EXISTS orders_truncate ON orders;
CREATE TRIGGER orders_truncate
    AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION orderstream_orders_truncated();

-- The change log is unlogged (migration 0009): a crash, a failover to a standby or a restore
-- of a base backup leaves it empty, and order_changes_alive with it, while the horizon
-- (logged) still covers every old cursor. Each server calls this when its listener
-- connects and before it reads the log after a gap: the first to find the sentinel gone
-- marks everything up to now as pruned (so every older cursor gets `resync`, reason
-- "cursor expired") and puts the sentinel back, in one transaction. True if it did.
-- Until then, readers treat a missing sentinel as an expired position (db/changelog.py).
CREATE OR REPLACE FUNCTION orderstream_change_log_recover()
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    previous bigint;
    fresh bigint;
BEGIN
    IF EXISTS (SELECT FROM order_changes_alive) THEN
        RETURN false;
    END IF;
    -- Two servers at once: the second waits on the first's row, then inserts nothing.
    INSERT INTO order_changes_alive DEFAULT VALUES ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- A new generation expires every older cursor, even one naming xids above the horizon
    -- (lost with a promoted standby's old primary, reused here). Random, not a counter: a
    -- failover or a crash may lose this very commit after servers handed out cursors of
    -- it, and the next recovery would count to the same value again over reused xids.
    -- 62 bits of gen_random_uuid()'s strong random source (the rest are fixed bits).
    SELECT generation INTO previous FROM order_changes_horizon;
    LOOP
        fresh := ('x' || right(replace(gen_random_uuid()::text, '-', ''), 16))::bit(64)::bigint
                 & 4611686018427387903;
        EXIT WHEN fresh NOT IN (0, previous);  -- 0: the generation before any loss
    END LOOP;
    UPDATE order_changes_horizon
       SET pruned_xid = greatest(pruned_xid, pg_current_xact_id()), generation = fresh;
    RETURN true;
END
$$;
-- The runtime role gets EXECUTE (docs/deploy.md); writers have no use for it.
REVOKE ALL ON FUNCTION orderstream_change_log_recover() FROM PUBLIC;

-- Rights: a change to who may read what reaches every open socket in commit order, on
-- channel 'auth'. The payload only names the user: anyone who can connect may NOTIFY, so
-- the server re-reads that user's rights from the tables instead of trusting it.
CREATE OR REPLACE FUNCTION orderstream_rights_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
BEGIN
    -- users carry the id itself; api_tokens and web_sessions their user_id.
    PERFORM pg_notify('auth', json_build_object(
        'user_id', coalesce(r -> 'user_id', r -> 'id'))::text);
    RETURN NULL;
END
$$;

-- A new password ends every browser session of the user (each end notifies in turn).
CREATE OR REPLACE FUNCTION orderstream_password_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM web_sessions WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

-- Names used by earlier versions of this file.
DROP TRIGGER IF EXISTS users_notify ON users;
DROP TRIGGER IF EXISTS api_tokens_notify ON api_tokens;
DROP TRIGGER IF EXISTS web_sessions_notify ON web_sessions;
DROP FUNCTION IF EXISTS orderstream_users_notify();
DROP FUNCTION IF EXISTS orderstream_tokens_notify();
DROP FUNCTION IF EXISTS orderstream_web_sessions_notify();

DROP TRIGGER IF EXISTS users_rights_changed ON users;
CREATE TRIGGER users_rights_changed
    AFTER UPDATE OF is_staff, password_hash ON users
    FOR EACH ROW
    WHEN (OLD.is_staff IS DISTINCT FROM NEW.is_staff
          OR OLD.password_hash IS DISTINCT FROM NEW.password_hash)
    EXECUTE FUNCTION orderstream_rights_changed();

DROP TRIGGER IF EXISTS users_deleted ON users;
CREATE TRIGGER users_deleted
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION orderstream_rights_changed();

DROP TRIGGER IF EXISTS users_password_changed ON users;
CREATE TRIGGER users_password_changed
    AFTER UPDATE OF password_hash ON users
    FOR EACH ROW WHEN (OLD.password_hash IS DISTINCT FROM NEW.password_hash)
    EXECUTE FUNCTION orderstream_password_changed();

DROP TRIGGER IF EXISTS api_tokens_revoked ON api_tokens;
CREATE TRIGGER api_tokens_revoked
    AFTER UPDATE OF revoked_at ON api_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION orderstream_rights_changed();

DROP TRIGGER IF EXISTS api_tokens_deleted ON api_tokens;
CREATE TRIGGER api_tokens_deleted
    AFTER DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION orderstream_rights_changed();

DROP TRIGGER IF EXISTS web_sessions_ended ON web_sessions;
CREATE TRIGGER web_sessions_ended
    AFTER DELETE ON web_sessions
    FOR EACH ROW EXECUTE FUNCTION orderstream_rights_changed();

-- Quotes: the frame itself is the payload on channel 'quotes'. One function shapes a quote
-- frame, for the trigger and for the snapshot a subscription or GET /api/quotes reads.
CREATE OR REPLACE FUNCTION orderstream_quote_json(q quotes, ts numeric)
RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'type', 'quote',
        'instrument', q.instrument,
        'bid', q.bid::text,
        'ask', q.ask::text,
        'last', q.last::text,
        'version', q.version,
        'ts', ts)
$$;

-- A new version on every write, taken once the row is locked (so versions of one
-- instrument rise in commit order); whatever a writer put in `version` is replaced.
CREATE OR REPLACE FUNCTION orderstream_quotes_version()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('public.quote_version_seq');  -- qualified: runs as the writer
    IF TG_OP = 'UPDATE' AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS quotes_version ON quotes;
CREATE TRIGGER quotes_version
    BEFORE INSERT OR UPDATE ON quotes
    FOR EACH ROW EXECUTE FUNCTION orderstream_quotes_version();

-- Signed like the orders' notifications, as the owner (the writer cannot read the key).
CREATE OR REPLACE FUNCTION orderstream_quotes_notify()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('quotes', orderstream_sign('quotes',
                      orderstream_quote_json(NEW, orderstream_now_ms())::text));
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION orderstream_quotes_notify() FROM PUBLIC;

DROP TRIGGER IF EXISTS quotes_notify ON quotes;
CREATE TRIGGER quotes_notify
    AFTER INSERT OR UPDATE ON quotes
    FOR EACH ROW EXECUTE FUNCTION orderstream_quotes_notify();

-- Replication roles. A writer with `SET session_replication_role = replica` (a superuser, a
-- logical replication apply worker, a restore) skips triggers that fire only in the
-- default role: its changes would reach no dashboard and no log. So every trigger that
-- announces, guards or numbers fires ALWAYS. The version stamps do not: a replicated or
-- restored row carries the version and times it had where it came from, and must keep them
-- (on INSERT, the columns' defaults fill in what such a writer leaves out). An UPDATE in the
-- replica role that leaves the version as it was (a person's, not a replicated row's)
-- still gets a new one, from a trigger of that role only.
CREATE OR REPLACE FUNCTION orderstream_orders_stamp_update_replica()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version IS NOT DISTINCT FROM OLD.version THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS orders_stamp_update_replica ON orders;
CREATE TRIGGER orders_stamp_update_replica
    BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_stamp_update_replica();
ALTER TABLE orders ENABLE REPLICA TRIGGER orders_stamp_update_replica;

ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_id_fixed;
ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_inserted;
ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_updated;
ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_deleted;
ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_truncate;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_rights_changed;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_deleted;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_password_changed;
ALTER TABLE api_tokens ENABLE ALWAYS TRIGGER api_tokens_revoked;
ALTER TABLE api_tokens ENABLE ALWAYS TRIGGER api_tokens_deleted;
ALTER TABLE web_sessions ENABLE ALWAYS TRIGGER web_sessions_ended;
ALTER TABLE quotes ENABLE ALWAYS TRIGGER quotes_version;
ALTER TABLE quotes ENABLE ALWAYS TRIGGER quotes_notify;
