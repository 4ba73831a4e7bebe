DROP FUNCTION append_customer_event;
DROP FUNCTION prune_customer_events;
DROP TABLE customer_events;
DROP TABLE customer_event_heads;
