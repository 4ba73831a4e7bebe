DROP FUNCTION customers_page;
DROP FUNCTION customers_page_sql;
DROP INDEX customers_email_key;
DROP INDEX customers_email_idx;
ALTER TABLE customers DROP COLUMN email_lower;
CREATE UNIQUE INDEX customers_email_key
    ON customers (app_id, lower(email)) WHERE state = 'active';
CREATE INDEX customers_email_idx ON customers (app_id, lower(email));
