-- Writes may name their customer by external id, falling back to the most
-- recently created archived customer that held it: an index for that lookup
-- (the unique index covers active customers only).
CREATE INDEX customers_external_id_idx ON customers (app_id, external_id, create_time);
