-- Trigger functions and triggers that make every write to orders and quotes an
-- event. Re-applied by every `migrate`: keep it idempotent.
--
-- Notification payload on channel 'orders' (internal to orderstream):
--     "<seq> <xid> <watermark> <owner_id> <old_owner_id or -> <frame>"
-- <frame> is the WebSocket text frame for the event but for its "cursor", which the
-- server appends (it depends on what the stream has delivered, see db/position.py);
-- the server routes by the header and never re-encodes the order. <xid> is the
-- writing transaction, <watermark> the xmin of its snapshot: every transaction below
-- it had finished before this one could commit. When the payload would pass
-- NOTIFY's 8000-byte limit the frame is left empty and the server reads it from
-- order_changes by seq. NOTIFY is transactional: a rolled-back write announces
-- nothing, and notifications arrive in commit order.

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

CREATE OR REPLACE FUNCTION orderstream_orders_notify()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    seq          bigint := nextval('order_event_seq');
    r            orders;
    owner_name   text;
    old_owner_id bigint;
    frame        text;
    header       text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.owner_id <> OLD.owner_id THEN
        old_owner_id := OLD.owner_id;
    END IF;
    SELECT u.username INTO owner_name FROM users u WHERE u.id = r.owner_id;
    frame := json_build_object(
        'type', 'order',
        'op', lower(TG_OP),
        'seq', seq,
        'ts', orderstream_now_ms(),
        'order', orderstream_order_json(r, owner_name)
    )::text;
    INSERT INTO order_changes (seq, owner_id, old_owner_id, frame)
    VALUES (seq, r.owner_id, old_owner_id, frame);
    header := seq || ' ' || pg_current_xact_id() || ' '
        || pg_snapshot_xmin(pg_current_snapshot()) || ' '
        || r.owner_id || ' ' || coalesce(old_owner_id::text, '-') || ' ';
    IF octet_length(header) + octet_length(frame) < 8000 THEN
        PERFORM pg_notify('orders', header || frame);
    ELSE
        PERFORM pg_notify('orders', header);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orders_stamp ON orders;
CREATE TRIGGER orders_stamp
    BEFORE INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_stamp();

DROP TRIGGER IF EXISTS orders_notify ON orders;
CREATE TRIGGER orders_notify
    AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION orderstream_orders_notify();

-- TRUNCATE fires no row triggers: tell every session to reload, and expire every cursor
-- taken before it (the change log cannot replay "everything vanished").
CREATE OR REPLACE FUNCTION orderstream_orders_truncated()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_changes_horizon SET pruned_xid = greatest(pruned_xid, pg_current_xact_id());
    PERFORM pg_notify('orders', 'truncate');
    RETURN NULL;
END
$$;

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

-- Quotes: the frame itself is the payload on channel 'quotes'.
CREATE OR REPLACE FUNCTION orderstream_quotes_notify()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('quotes', json_build_object(
        'type', 'quote',
        'instrument', NEW.instrument,
        'bid', NEW.bid::text,
        'ask', NEW.ask::text,
        'last', NEW.last::text,
        'ts', orderstream_now_ms()
    )::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS quotes_notify ON quotes;
CREATE TRIGGER quotes_notify
    AFTER INSERT OR UPDATE ON quotes
    FOR EACH ROW EXECUTE FUNCTION orderstream_quotes_notify();
