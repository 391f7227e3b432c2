-- Browser sessions known to the server, so logging out (or a password reset) ends a
-- session everywhere, not only in the browser that held the cookie.
CREATE TABLE web_sessions (
    -- Random, 256 bits; the signed session cookie carries it.
    sid        text PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX web_sessions_user_id ON web_sessions (user_id);
