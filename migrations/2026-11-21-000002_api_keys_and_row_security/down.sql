DROP POLICY app_isolation ON customer_provider_ids;
DROP POLICY app_isolation ON customers;
ALTER TABLE customer_provider_ids DISABLE ROW LEVEL SECURITY;
ALTER TABLE customers DISABLE ROW LEVEL SECURITY;
REVOKE ALL ON apps, api_keys, customers, customer_provider_ids FROM customers_service;
-- The role is shared by every database of the server; it is left in place.
DROP TABLE api_keys;
