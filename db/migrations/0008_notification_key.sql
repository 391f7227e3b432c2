-- The key that signs every notification the triggers send on 'orders' and 'quotes'.
-- Any role that can connect may NOTIFY; only a notification whose tag is
-- HMAC-SHA256(key, payload) is believed (db/signing.py). The key stays with the owner
-- role and the runtime role (GRANT SELECT, docs/deploy.md); writers never see it: the
-- trigger functions that sign run as their owner (SECURITY DEFINER).
-- inner_pad and outer_pad are key XOR 0x36.. and key XOR 0x5c.. (RFC 2104), kept so the
-- triggers hash without recomputing them.
CREATE TABLE notification_key (
    only_row  boolean PRIMARY KEY DEFAULT true CONSTRAINT notification_key_one_row CHECK (only_row),
    key       bytea NOT NULL CONSTRAINT notification_key_length CHECK (octet_length(key) = 64),
    inner_pad bytea NOT NULL,
    outer_pad bytea NOT NULL
);
REVOKE ALL ON notification_key FROM PUBLIC;

DO $$
DECLARE
    -- gen_random_uuid() draws from the server's strong random source: 4 x 122 random bits.
    key  bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                                 || gen_random_uuid()::text || gen_random_uuid()::text,
                                 '-', ''), 'hex');
    ipad bytea := key;
    opad bytea := key;
BEGIN
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(key, i) # 54);
        opad := set_byte(opad, i, get_byte(key, i) # 92);
    END LOOP;
    INSERT INTO notification_key (key, inner_pad, outer_pad) VALUES (key, ipad, opad);
END
$$;
