DROP TABLE customer_provider_ids;
DROP TABLE customers;
DROP TABLE apps;
