-- A quote's frame must fit in one NOTIFY (8000 bytes): numbers of absurd length are
-- refused here with a clear constraint error instead of failing inside the trigger.
ALTER TABLE quotes ADD CONSTRAINT quotes_numbers_fit CHECK (
    length(bid::text) <= 40 AND length(ask::text) <= 40 AND length(last::text) <= 40);
