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
-- 8000-byte limit the frame is left empty and the server reads it from the log by seq.
-- NOTIFY is transactional: a rolled-back write announces nothing.
-- Every notification on 'orders' (and 'quotes') is signed: "<tag> <payload>" with the
-- tag an HMAC of the payload under notification_key (db/signing.py). The functions that
-- sign run as their owner (SECURITY DEFINER), so writers need no access to the key nor to
-- order_changes, and cannot forge an event.

-- "<tag> <body>": the tag is the first 16 bytes of HMAC-SHA256(key, "<channel> <body>") in
-- hex (RFC 2104, from the key's inner and outer pads), so a payload signed for one channel
-- is refused on another. The pads are read here, inside the function, and never passed as
-- values: a value in a planned statement shows in plan dumps (debug_print_plan) a writer
-- may turn on in its own session. Only the owner's functions call it.
DROP FUNCTION IF EXISTS orderstream_signed(bytea, bytea, text);
CREATE OR REPLACE FUNCTION orderstream_sign(channel text, body text)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    signed text;
BEGIN
    SELECT encode(substr(sha256(k.outer_pad || sha256(k.inner_pad
                  || convert_to(channel || ' ' || body, 'UTF8'))), 1, 16), 'hex') || ' ' || body
    INTO signed FROM public.notification_key k;
    IF signed IS NULL THEN
        RAISE EXCEPTION 'orderstream: notification_key is empty; run `python server.py migrate`';
    END IF;
    RETURN signed;
END
$$;
REVOKE ALL ON FUNCTION orderstream_sign(text, text) FROM PUBLIC;

-- One order as the JSON the API and the stream share (numbers as decimal strings,
-- timestamps in UTC).
CREATE OR REPLACE FUNCTION orderstream_order_json(o orders, owner_name text)
RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', o.id,
        'owner_id', o.owner_id,
        'owner', owner_name,
        'instrument', o.instrument,
        'side', o.side,
        'quantity', o.quantity::text,
        'price', o.price::text,
        'status', o.status,
        'note', o.note,
        'version', o.version,
        'created_at', to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(o.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )
$$;

-- Epoch milliseconds with microsecond fraction: the `ts` of events.
CREATE OR REPLACE FUNCTION orderstream_now_ms()
RETURNS numeric LANGUAGE sql VOLATILE AS $$
    SELECT round(extract(epoch FROM clock_timestamp()) * 1000, 3)
$$;

-- The event frame of one change (without its cursor).
CREATE OR REPLACE FUNCTION orderstream_event_frame(op text, seq bigint, ts numeric, o orders,
                                                   owner_name text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object('type', 'order', 'op', op, 'seq', seq, 'ts', ts,
                             'order', orderstream_order_json(o, owner_name))::text
$$;

CREATE OR REPLACE FUNCTION orderstream_orders_stamp()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
        NEW.created_at := coalesce(NEW.created_at, now());
        NEW.updated_at := NEW.created_at;
    ELSE
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'orders.id cannot be changed (order %)', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.version := OLD.version + 1;
        NEW.created_at := OLD.created_at;
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

-- "<xid> <snapshot> ": the header every notification of this transaction starts with.
-- With hundreds of transactions running, the snapshot text would crowd out the frame:
-- then it says only "everything below xmin finished" ("xmin:xmin:"), which is as true.
-- (PL/pgSQL, not SQL: a SQL function with a FROM is planned again on every call.)
DROP FUNCTION IF EXISTS orderstream_change_header();
CREATE FUNCTION orderstream_change_header()
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
BEGIN
    IF octet_length(snap::text) > 1000 THEN
        snap := (pg_snapshot_xmin(snap) || ':' || pg_snapshot_xmin(snap) || ':')::pg_snapshot;
    END IF;
    RETURN pg_current_xact_id() || ' ' || snap || ' ';
END
$$;

-- Announce one logged change, frame included if the notification stays under NOTIFY's
-- 8000 bytes (seq and owner ids add at most 61 bytes to header and frame, the tag 33).
-- The triggers number changes (nextval) in the order they are inserted and returned, so
-- one transaction's notifications arrive in seq order. Plain SQL, so the planner inlines
-- it: a PL/pgSQL call per row cost writers more than the notification itself.
DROP FUNCTION IF EXISTS orderstream_announce(bytea, bytea, text, bigint, bigint, bigint, text);
CREATE OR REPLACE FUNCTION orderstream_announce(header text, seq bigint, owner_id bigint,
                                                old_owner_id bigint, frame text)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('orders', orderstream_sign('orders',
        seq || ' ' || header || owner_id || ' ' || coalesce(old_owner_id::text, '-') || ' '
        || CASE WHEN octet_length(header) + octet_length(frame) < 7850 THEN frame ELSE '' END))
$$;

-- A statement of more than 100 rows: one notification for all of them.
DROP FUNCTION IF EXISTS orderstream_announce_bulk(bytea, bytea, text);
CREATE OR REPLACE FUNCTION orderstream_announce_bulk(header text)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('orders', orderstream_sign('orders',
        currval('order_event_seq') || ' ' || header || 'bulk'))
$$;

DROP FUNCTION IF EXISTS orderstream_announce(bigint, text, bigint, bigint, bigint, text);
DROP FUNCTION IF EXISTS orderstream_announce_bulk(bigint, text);

-- One change on its own: most writes (the API, a psql UPDATE ... WHERE id = 1) change one
-- row. The set-based statements below reference transition tables, which PostgreSQL plans
-- anew on every call (about 0.4 ms); these statements use plain variables, so their plans
-- are cached and a single-row write pays what a row trigger would.
DROP FUNCTION IF EXISTS orderstream_log_one(text, orders, bigint, text, numeric, bytea, bytea);
CREATE OR REPLACE FUNCTION orderstream_log_one(op text, o orders, old_owner_id bigint,
                                               header text, ts numeric)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    seq   bigint := nextval('order_event_seq');
    frame text := orderstream_event_frame(
        op, seq, ts, o, (SELECT username FROM users WHERE id = o.owner_id));
    moved bigint := nullif(old_owner_id, o.owner_id);
BEGIN
    INSERT INTO order_changes (seq, owner_id, old_owner_id, frame)
    VALUES (seq, o.owner_id, moved, frame);
    PERFORM orderstream_announce(header, seq, o.owner_id, moved, frame);
END
$$;

-- Every statement that changes orders: log its changes and announce them. As its owner,
-- with a fixed search_path: the writer needs no right to order_changes or the key.
CREATE OR REPLACE FUNCTION orderstream_orders_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    op        text := lower(TG_OP);
    n         bigint;
    announced bigint;
    header    text := orderstream_change_header();
    ts        numeric := orderstream_now_ms();
    changed   text;
BEGIN
    -- Transition tables exist per event: each branch names only its own.
    IF TG_OP = 'DELETE' THEN
        SELECT count(*) INTO n FROM old_rows;
    ELSE
        SELECT count(*) INTO n FROM new_rows;
    END IF;
    IF n = 0 THEN
        RETURN NULL;
    ELSIF n = 1 THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM orderstream_log_one(op, r::orders, NULL, header, ts) FROM new_rows r;
        ELSIF TG_OP = 'UPDATE' THEN
            PERFORM orderstream_log_one(op, r::orders, (SELECT owner_id FROM old_rows),
                                        header, ts) FROM new_rows r;
        ELSE
            PERFORM orderstream_log_one(op, r::orders, NULL, header, ts) FROM old_rows r;
        END IF;
        RETURN NULL;
    END IF;
    -- The changed rows (a delete carries the version it deleted), the owner they had
    -- before an update, and the owner's name.
    changed := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT r::orders AS o, NULL::bigint AS old_owner_id,'
            ' u.username AS owner_name FROM new_rows r LEFT JOIN users u ON u.id = r.owner_id'
        WHEN 'UPDATE' THEN 'SELECT r::orders AS o, was.owner_id AS old_owner_id,'
            ' u.username AS owner_name FROM new_rows r JOIN old_rows was ON was.id = r.id'
            ' LEFT JOIN users u ON u.id = r.owner_id'
        ELSE 'SELECT r::orders AS o, NULL::bigint AS old_owner_id,'
            ' u.username AS owner_name FROM old_rows r LEFT JOIN users u ON u.id = r.owner_id'
    END;
    -- EXECUTE: planned for this statement's row count. A cached plan made for a few rows
    -- (a nested loop over old and new rows) would be quadratic for 100,000. Changes are
    -- numbered after the join, so they are inserted, returned and announced in seq order.
    EXECUTE format(
        'WITH logged AS ('
        '  INSERT INTO order_changes (seq, owner_id, old_owner_id, frame)'
        '  SELECT c.seq, (c.o).owner_id, nullif(c.old_owner_id, (c.o).owner_id),'
        '         orderstream_event_frame($1, c.seq, $2, c.o, c.owner_name)'
        '  FROM (SELECT nextval(''order_event_seq'') AS seq, j.* FROM (%s) j) c'
        '  RETURNING seq, owner_id, old_owner_id, frame)'
        ' SELECT count(orderstream_announce($3, seq, owner_id, old_owner_id, frame))'
        ' FROM logged WHERE $4 <= 100', changed)
    INTO announced USING op, ts, header, n;
    IF n > 100 THEN
        PERFORM orderstream_announce_bulk(header);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orders_stamp ON orders;
CREATE TRIGGER orders_stamp
    BEFORE INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_stamp();

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
