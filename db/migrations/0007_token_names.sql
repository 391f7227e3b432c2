-- API tokens get a name, so a person can tell them apart in GET /api/tokens and the
-- dashboard's tokens panel. Tokens made before (or by `server.py token`) have none ('').
ALTER TABLE api_tokens ADD COLUMN name text NOT NULL DEFAULT ''
    CONSTRAINT api_tokens_name_length CHECK (length(name) <= 100);
