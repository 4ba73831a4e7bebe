-- Each customer's provider ids, copied into its own row: a read of a
-- customer (GetCustomer, a repeated CreateCustomer, a listing batch) is then
-- one index probe of `customers`, not a second one of
-- `customer_provider_ids` beside it, which cost PostgreSQL about as much as
-- the row's own (measured with pgbench on the service's read at 1,000,000
-- customers, each with a provider id).
--
-- `customer_provider_ids` stays the source of the keys: its unique index
-- settles who holds a provider's id, and lookups by provider id use it. The
-- service writes both in the same transaction (CreateCustomer,
-- UpdateCustomer, DeleteCustomer); the column is not indexed, so it costs
-- an update nothing more in index upkeep.
ALTER TABLE customers ADD COLUMN provider_ids jsonb NOT NULL DEFAULT '{}';

UPDATE customers AS c
SET provider_ids = p.ids
FROM (
    SELECT app_id, customer_id, jsonb_object_agg(provider, provider_customer_id) AS ids
    FROM customer_provider_ids
    GROUP BY app_id, customer_id
) AS p
WHERE c.app_id = p.app_id AND c.id = p.customer_id;
