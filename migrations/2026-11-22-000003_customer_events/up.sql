-- Customer change events: a transactional outbox, one ordered log per app.
--
-- Each write to a customer appends its event in the same transaction, as its
-- last statement: it takes the next position of its app from
-- customer_event_heads (an upsert, so the head row stays locked until the
-- transaction ends). Writes of one app therefore commit in position order,
-- positions have no holes (a rolled-back write gives its position back),
-- and a reader that has seen position n has seen every position before it.
-- Both tables are keyed by app first, so they distribute with the rest.

CREATE TABLE customer_event_heads (
    app_id         uuid        PRIMARY KEY REFERENCES apps (id),
    -- The last position taken (0: none yet).
    position       bigint      NOT NULL DEFAULT 0,
    -- Events at or before this position were pruned (0: none).
    pruned_through bigint      NOT NULL DEFAULT 0,
    -- The newest create_time among pruned events.
    pruned_time    timestamptz
);

CREATE TABLE customer_events (
    app_id         uuid        NOT NULL,
    position       bigint      NOT NULL,
    id             uuid        NOT NULL,
    type           text        NOT NULL,
    customer_id    uuid        NOT NULL,
    -- The customer right after the change (columns and provider ids); NULL
    -- once the customer is erased.
    customer       jsonb,
    -- Update-mask paths whose values the change changed (updates only).
    changed_fields text[]      NOT NULL DEFAULT '{}',
    -- The API key of the call that made the change.
    key_id         uuid,
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (app_id, position),
    CONSTRAINT customer_events_type_check
        CHECK (type IN ('created', 'updated', 'archived', 'deleted'))
);

-- A watch of one customer; erasure of a customer's past events.
CREATE INDEX customer_events_customer_idx ON customer_events (app_id, customer_id, position);
-- start_time: the first event at or after a time; pruning by age.
CREATE INDEX customer_events_time_idx ON customer_events (app_id, create_time);

GRANT SELECT, INSERT, UPDATE ON customer_event_heads TO customers_service;
-- Events are appended, and erased (the snapshot only); pruning runs as the
-- owner (prune_customer_events).
GRANT SELECT, INSERT ON customer_events TO customers_service;
GRANT UPDATE (customer) ON customer_events TO customers_service;

ALTER TABLE customer_event_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE customer_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_isolation ON customer_event_heads
    USING (app_id = nullif(current_setting('customers.app_id', true), '')::uuid)
    WITH CHECK (app_id = nullif(current_setting('customers.app_id', true), '')::uuid);
CREATE POLICY app_isolation ON customer_events
    USING (app_id = nullif(current_setting('customers.app_id', true), '')::uuid)
    WITH CHECK (app_id = nullif(current_setting('customers.app_id', true), '')::uuid);

-- Deletes, for each app, up to `max_rows` of its events recorded before
-- `cutoff`, oldest first, always a prefix of its log (so a position either
-- is retained or is before `pruned_through`), and records what went. Runs
-- as the owner: pruning crosses apps. Returns how many events were deleted.
CREATE FUNCTION prune_customer_events(cutoff timestamptz, max_rows integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    head record;
    last_position bigint;
    last_time timestamptz;
    deleted bigint;
    total bigint := 0;
BEGIN
    -- One pruner at a time, whichever replica it runs in.
    IF NOT pg_try_advisory_xact_lock(905661957370675202) THEN
        RETURN 0;
    END IF;
    FOR head IN SELECT app_id FROM customer_event_heads LOOP
        SELECT max(e.position), max(e.create_time) INTO last_position, last_time
        FROM (
            SELECT position, create_time FROM customer_events
            WHERE app_id = head.app_id AND create_time < cutoff
            ORDER BY app_id, create_time
            LIMIT max_rows
        ) e;
        CONTINUE WHEN last_position IS NULL;
        DELETE FROM customer_events
        WHERE app_id = head.app_id AND position <= last_position;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        UPDATE customer_event_heads h
        SET pruned_through = greatest(h.pruned_through, last_position),
            pruned_time = greatest(h.pruned_time, last_time)
        WHERE h.app_id = head.app_id;
        total := total + deleted;
    END LOOP;
    RETURN total;
END
$$;

-- Appends an event to its app's log and returns its position: the next
-- position of the app, taken by an upsert of the app's head row, which
-- stays locked until the transaction ends. The last statement of every
-- write transaction. Runs as the caller: row-level security applies.
CREATE FUNCTION append_customer_event(
    p_app uuid, p_id uuid, p_type text, p_customer_id uuid, p_customer jsonb,
    p_changed_fields text[], p_key_id uuid
) RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, public
AS $$
    WITH head AS (
        INSERT INTO customer_event_heads AS h (app_id, position) VALUES (p_app, 1)
        ON CONFLICT (app_id) DO UPDATE SET position = h.position + 1
        RETURNING h.position
    )
    INSERT INTO customer_events
        (app_id, position, id, type, customer_id, customer, changed_fields, key_id, create_time)
    SELECT p_app, head.position, p_id, p_type, p_customer_id, p_customer, p_changed_fields,
           p_key_id, clock_timestamp()
    FROM head
    RETURNING position
$$;

REVOKE ALL ON FUNCTION prune_customer_events FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_customer_events TO customers_service;
