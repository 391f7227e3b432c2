-- Instruments (symbol, name, tick size). Quotes reference them, never cross (bid <= ask)
-- and carry a version, so the newest quote of an instrument wins everywhere.
-- Orders keep their free-text instrument: no foreign key from orders.

CREATE TABLE instruments (
    symbol    text PRIMARY KEY
              CONSTRAINT instruments_symbol_format CHECK (length(symbol) BETWEEN 1 AND 64),
    name      text NOT NULL DEFAULT '',
    -- Prices move in multiples of it (the simulator keeps to it; psql writers may not).
    tick_size numeric NOT NULL DEFAULT 0.01
              CONSTRAINT instruments_tick_size_positive
              CHECK (tick_size > 0 AND tick_size < 'Infinity')
);

-- Every instrument that has a quote already becomes an instrument, so the key holds.
INSERT INTO instruments (symbol, name)
    SELECT instrument, instrument FROM quotes ON CONFLICT DO NOTHING;

-- Quote versions come from one sequence, taken by the BEFORE trigger (db/triggers.sql)
-- once the row is locked: increasing per instrument in commit order, and never reused,
-- even after a delete and a new insert.
CREATE SEQUENCE quote_version_seq AS bigint;
ALTER TABLE quotes ADD COLUMN version bigint NOT NULL DEFAULT nextval('quote_version_seq');

ALTER TABLE quotes ADD CONSTRAINT quotes_instrument_known
    FOREIGN KEY (instrument) REFERENCES instruments (symbol) ON UPDATE CASCADE;

-- A crossed quote already stored is swapped rather than refused, so the check holds for
-- every row from here on.
UPDATE quotes SET bid = ask, ask = bid WHERE bid > ask;
ALTER TABLE quotes ADD CONSTRAINT quotes_bid_not_above_ask CHECK (bid <= ask);
