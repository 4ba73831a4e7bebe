-- API keys, and row-level security on the customer tables.

-- An app's API keys. The key itself is never stored: only the SHA-256 of its
-- secret part. The key string carries its app and key ids, so that
-- authentication is a primary-key lookup that starts with the app.
CREATE TABLE api_keys (
    app_id      uuid        NOT NULL REFERENCES apps (id),
    id          uuid        NOT NULL,
    -- The start of the key, shown in listings to tell keys apart.
    prefix      text        NOT NULL,
    secret_hash bytea       NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    -- Set when the key stops working: at once (revoke) or later (rotation
    -- with overlap).
    expire_time timestamptz,
    PRIMARY KEY (app_id, id)
);

-- The role the service acts as in every transaction. It is not the tables'
-- owner and not a superuser, so row-level security applies to it.
DO $$
BEGIN
    CREATE ROLE customers_service NOLOGIN;
EXCEPTION
    -- Roles are shared by all databases of a server: another database (or a
    -- concurrent migration) may have created it.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT customers_service TO CURRENT_USER;
GRANT SELECT ON apps, api_keys TO customers_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, customer_provider_ids TO customers_service;

-- Rows are visible only to the app of the transaction's `customers.app_id`
-- setting; unset, nothing is visible. A query that forgot its app filter
-- returns nothing rather than another app's rows. (Once set in a session,
-- an out-of-scope setting reads as '' rather than NULL: hence nullif.)
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customer_provider_ids ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_isolation ON customers
    USING (app_id = nullif(current_setting('customers.app_id', true), '')::uuid)
    WITH CHECK (app_id = nullif(current_setting('customers.app_id', true), '')::uuid);
CREATE POLICY app_isolation ON customer_provider_ids
    USING (app_id = nullif(current_setting('customers.app_id', true), '')::uuid)
    WITH CHECK (app_id = nullif(current_setting('customers.app_id', true), '')::uuid);
