DROP FUNCTION sequence_customer_events;
DROP FUNCTION prune_customer_events;
DROP TABLE customer_events;
DROP TABLE customer_event_heads;
