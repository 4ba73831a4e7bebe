ALTER TABLE customers DROP COLUMN provider_ids;
