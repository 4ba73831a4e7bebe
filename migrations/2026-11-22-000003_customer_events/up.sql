-- Customer change events: a transactional outbox, one ordered log per app.
--
-- Each write to a customer inserts its event in the same transaction, so an
-- event exists if and only if its change committed. Writes take no shared
-- lock for it: an event is born without a position. Positions are given
-- after commit by the app's sequencer (sequence_customer_events), which
-- runs under the app's head row lock, so one runs at a time per app: it
-- numbers the committed events that have none, in the order they were
-- written, continuing from the head. So positions have no holes, a change
-- that committed before another began has the lower position (each
-- customer's events are in the order of its writes), and a reader that has
-- seen position n has seen every position before it. Every table is keyed
-- by app first, so it distributes with the rest.

CREATE TABLE customer_event_heads (
    app_id         uuid        PRIMARY KEY REFERENCES apps (id),
    -- The last position given (0: none yet).
    position       bigint      NOT NULL DEFAULT 0,
    -- Events at or before this position were pruned (0: none).
    pruned_through bigint      NOT NULL DEFAULT 0,
    -- The newest create_time among pruned events.
    pruned_time    timestamptz
);

CREATE TABLE customer_events (
    app_id         uuid        NOT NULL,
    -- Insertion order, across apps: the order the sequencer follows.
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    -- The event's place in its app's log: 1, 2, 3... NULL until sequenced.
    position       bigint,
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
    PRIMARY KEY (app_id, seq),
    CONSTRAINT customer_events_type_check
        CHECK (type IN ('created', 'updated', 'archived', 'deleted'))
);

-- Reading a log in order.
CREATE UNIQUE INDEX customer_events_position_key ON customer_events (app_id, position);
-- The sequencer's work.
CREATE INDEX customer_events_pending_idx ON customer_events (app_id, seq)
    WHERE position IS NULL;
-- A watch of one customer; erasure of a customer's past events.
CREATE INDEX customer_events_customer_idx ON customer_events (app_id, customer_id, position);
-- start_time: the first event at or after a time; pruning by age.
CREATE INDEX customer_events_time_idx ON customer_events (app_id, create_time);

GRANT SELECT, INSERT, UPDATE ON customer_event_heads TO customers_service;
-- Events are appended, and erased (the snapshot only); pruning runs as the
-- owner (prune_customer_events).
GRANT SELECT, INSERT ON customer_events TO customers_service;
GRANT UPDATE (customer, position) ON customer_events TO customers_service;

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
-- is retained or is before `pruned_through`), and records what went; events
-- not yet sequenced are sequenced first. Runs as the owner: pruning crosses
-- apps. Returns how many events were deleted.
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
    -- Events nobody watched may never have been sequenced.
    FOR head IN SELECT DISTINCT app_id FROM customer_events WHERE position IS NULL LOOP
        PERFORM sequence_customer_events(head.app_id);
    END LOOP;
    FOR head IN SELECT app_id FROM customer_event_heads LOOP
        SELECT max(e.position), max(e.create_time) INTO last_position, last_time
        FROM (
            SELECT position, create_time FROM customer_events
            WHERE app_id = head.app_id AND create_time < cutoff AND position IS NOT NULL
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

-- The app's sequencer: numbers the app's committed events that have no
-- position yet, in insertion order, after the head; returns the new head.
-- The head row's lock makes it one at a time per app; each statement of a
-- READ COMMITTED transaction sees what the previous sequencer committed.
-- Runs as the caller: row-level security applies.
CREATE FUNCTION sequence_customer_events(p_app uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, public
AS $$
DECLARE
    head bigint;
    numbered bigint;
BEGIN
    INSERT INTO customer_event_heads (app_id) VALUES (p_app)
    ON CONFLICT (app_id) DO NOTHING;
    SELECT h.position INTO head FROM customer_event_heads h
    WHERE h.app_id = p_app FOR UPDATE;
    WITH pending AS (
        SELECT e.seq, row_number() OVER (ORDER BY e.seq) AS n
        FROM customer_events e
        WHERE e.app_id = p_app AND e.position IS NULL
    ), numbered_rows AS (
        UPDATE customer_events e SET position = head + pending.n
        FROM pending
        WHERE e.app_id = p_app AND e.seq = pending.seq
        RETURNING 1
    )
    SELECT count(*) INTO numbered FROM numbered_rows;
    IF numbered > 0 THEN
        head := head + numbered;
        UPDATE customer_event_heads h SET position = head WHERE h.app_id = p_app;
    END IF;
    RETURN head;
END
$$;

REVOKE ALL ON FUNCTION prune_customer_events FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_customer_events TO customers_service;
REVOKE ALL ON FUNCTION sequence_customer_events FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sequence_customer_events TO customers_service;
