-- Customers and their payment-provider ids, scoped by app.
--
-- Every primary and unique key starts with app_id, so each table can be
-- distributed by app_id on Citus without a redesign.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The tenants. Authentication (keys per app) comes later; until then every
-- request acts on the default app inserted here.
CREATE TABLE apps (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);

INSERT INTO apps (id, name) VALUES ('00000000-0000-0000-0000-000000000000', 'default');

CREATE TABLE customers (
    app_id              uuid        NOT NULL REFERENCES apps (id),
    id                  uuid        NOT NULL,
    external_id         text,
    email               text,
    name                text,
    phone               text,
    address_line1       text,
    address_line2       text,
    address_city        text,
    address_state       text,
    address_postal_code text,
    address_country     text,
    timezone            text,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    state               text        NOT NULL DEFAULT 'active',
    -- Bumped by every write; the etag is derived from it.
    revision            bigint      NOT NULL DEFAULT 1,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    archive_time        timestamptz,
    delete_time         timestamptz,
    PRIMARY KEY (app_id, id),
    CONSTRAINT customers_state_check CHECK (state IN ('active', 'archived', 'deleted')),
    CONSTRAINT customers_email_check CHECK (state = 'deleted' OR email IS NOT NULL),
    CONSTRAINT customers_archive_time_check CHECK (state <> 'active' OR archive_time IS NULL),
    CONSTRAINT customers_delete_time_check CHECK ((state = 'deleted') = (delete_time IS NOT NULL)),
    -- A deleted customer is a tombstone: no personal data may remain.
    CONSTRAINT customers_erased_check CHECK (
        state <> 'deleted' OR (
            external_id IS NULL AND email IS NULL AND name IS NULL AND phone IS NULL
            AND address_line1 IS NULL AND address_line2 IS NULL AND address_city IS NULL
            AND address_state IS NULL AND address_postal_code IS NULL
            AND address_country IS NULL AND timezone IS NULL AND metadata = '{}'
        )
    )
);

-- Active customers hold their email (case-insensitively) and external id.
CREATE UNIQUE INDEX customers_email_key
    ON customers (app_id, lower(email)) WHERE state = 'active';
CREATE UNIQUE INDEX customers_external_id_key
    ON customers (app_id, external_id) WHERE state = 'active';

-- ListCustomers' exact email filter, archived customers included.
CREATE INDEX customers_email_idx ON customers (app_id, lower(email));

-- Keyset order of ListCustomers.
CREATE INDEX customers_create_time_idx ON customers (app_id, create_time, id);

-- ListCustomers' free-text query (ILIKE '%...%') and metadata filter (@>).
CREATE INDEX customers_email_trgm_idx ON customers USING gin (email gin_trgm_ops);
CREATE INDEX customers_name_trgm_idx ON customers USING gin (name gin_trgm_ops);
CREATE INDEX customers_metadata_idx ON customers USING gin (metadata jsonb_path_ops);

-- A customer's id at each payment provider. Kept apart from customers so that
-- "one customer per (provider, id) among active customers" is a unique index.
CREATE TABLE customer_provider_ids (
    app_id               uuid    NOT NULL,
    customer_id          uuid    NOT NULL,
    provider             text    NOT NULL,
    provider_customer_id text    NOT NULL,
    -- False once the customer is archived: the pair is kept but released.
    active               boolean NOT NULL DEFAULT true,
    PRIMARY KEY (app_id, customer_id, provider),
    FOREIGN KEY (app_id, customer_id) REFERENCES customers (app_id, id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX customer_provider_ids_key
    ON customer_provider_ids (app_id, provider, provider_customer_id) WHERE active;
