-- ListCustomers' free-text query, narrowed to the term's rarest trigrams.
--
-- A trigram index answers `email ILIKE '%customer12345%'` by intersecting
-- the posting lists of all the term's trigrams, and PostgreSQL's GIN scan
-- steps through every one of them for each candidate of the rarest: a
-- trigram that most rows share ("cus", "com", "gma") costs a walk through a
-- posting list as long as the app. At 1,000,000 customers that search took
-- 16 ms of one core, against 0.2 ms with only its rare trigrams.
--
-- So the service asks the index for the term's rarest three-letter windows
-- only (at most three, each in at most a tenth of the rows, as the planner's
-- statistics estimate: customers_common_trigrams) and customers_page checks
-- the whole term on each row the index returns. The statistics choose the
-- windows, never the answer: every row returned contains the whole term.

-- The trigrams of three letters or digits found in at least 1% of the
-- customers' emails and names, with that share, as estimated from the
-- planner's statistics (the most common values with their frequencies, and
-- the histogram's values sharing the rest). Only the tables' owner may read
-- those statistics under row-level security, hence SECURITY DEFINER; it
-- returns shares of trigrams across the table, no value.
CREATE FUNCTION customers_common_trigrams()
RETURNS TABLE (column_name text, trigram text, frequency real)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    WITH stats AS (
        SELECT s.attname::text AS column_name,
               coalesce(lower(s.most_common_vals::text)::text[], '{}') AS common,
               coalesce(s.most_common_freqs, '{}') AS frequencies,
               coalesce(lower(s.histogram_bounds::text)::text[], '{}') AS histogram
        FROM pg_stats s
        WHERE s.schemaname = 'public' AND s.tablename = 'customers'
          AND s.attname IN ('email', 'name')
    ),
    sample AS (
        SELECT column_name, v, f::float8 AS weight
        FROM stats, unnest(common, frequencies) AS m(v, f)
        UNION ALL
        SELECT column_name, v,
               (1 - (SELECT coalesce(sum(f), 0) FROM unnest(frequencies) AS f))
               / cardinality(histogram)
        FROM stats, unnest(histogram) AS v
    ),
    -- Each sample value counts once per trigram it contains.
    found AS (
        SELECT DISTINCT column_name, value_number, weight, substr(v, i, 3) AS trigram
        FROM (SELECT *, row_number() OVER () AS value_number FROM sample) AS numbered,
             generate_series(1, length(v) - 2) AS i
    )
    SELECT column_name, trigram, sum(weight)::real
    FROM found
    WHERE trigram ~ '^[[:alnum:]]{3}$'
    GROUP BY column_name, trigram
    HAVING sum(weight) >= 0.01
$$;

REVOKE ALL ON FUNCTION customers_common_trigrams FROM PUBLIC;
GRANT EXECUTE ON FUNCTION customers_common_trigrams TO customers_service;

-- The SQL of customers_page for a set of filters, parameters $1 to $16 as
-- customers_page binds them: $10 to $12 the email's windows, $13 to $15 the
-- name's, $16 the whole pattern in lower case. Apart so that tests can
-- EXPLAIN exactly it.
CREATE FUNCTION customers_page_sql(
    has_email boolean, has_query boolean, has_after boolean, has_before boolean,
    has_metadata boolean, include_archived boolean, descending boolean, has_position boolean,
    email_windows integer, name_windows integer
) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT 'SELECT * FROM public.customers WHERE app_id = $1'
        || CASE WHEN include_archived THEN ' AND state <> ''deleted''' ELSE ' AND state = ''active''' END
        || CASE WHEN has_email THEN ' AND email_lower = $2' ELSE '' END
        -- With windows, the index gets them and each row the whole term, as
        -- an expression the trigram index does not serve (so that its
        -- frequent trigrams stay out of the index scan).
        || CASE WHEN has_query THEN
               ' AND ((' || CASE WHEN email_windows = 0 THEN 'email ILIKE $3'
                             ELSE (SELECT string_agg('email ILIKE $' || (9 + i), ' AND ')
                                   FROM generate_series(1, email_windows) AS i)
                                  || ' AND email_lower LIKE $16' END
               || ') OR (' || CASE WHEN name_windows = 0 THEN 'name ILIKE $3'
                             ELSE (SELECT string_agg('name ILIKE $' || (12 + i), ' AND ')
                                   FROM generate_series(1, name_windows) AS i)
                                  || ' AND lower(name) LIKE $16' END
               || '))'
           ELSE '' END
        || CASE WHEN has_after THEN ' AND create_time > $4' ELSE '' END
        || CASE WHEN has_before THEN ' AND create_time < $5' ELSE '' END
        || CASE WHEN has_metadata THEN ' AND metadata @> $6' ELSE '' END
        || CASE WHEN has_position THEN
               CASE WHEN descending THEN ' AND (create_time, id) < ($7, $8)'
                    ELSE ' AND (create_time, id) > ($7, $8)' END
           ELSE '' END
        || CASE WHEN descending THEN ' ORDER BY create_time DESC, id DESC'
                ELSE ' ORDER BY create_time, id' END
        || ' LIMIT $9'
$$;

-- The previous form, which the previous customers_page (still there for a
-- replica of the previous release during a rolling deploy) calls.
CREATE OR REPLACE FUNCTION customers_page_sql(
    has_email boolean, has_query boolean, has_after boolean, has_before boolean,
    has_metadata boolean, include_archived boolean, descending boolean, has_position boolean
) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT customers_page_sql(has_email, has_query, has_after, has_before, has_metadata,
                              include_archived, descending, has_position, 0, 0)
$$;

-- A query that the index cannot narrow may match many rows, and the planner
-- then walks the keyset order and filters, assuming the matches spread
-- evenly. They need not: at 1,000,000 customers, newest first, "customer1"
-- matches 111,112 rows, all but one among the oldest fifth, and the walk
-- read 800,000 rows (610 ms). So customers_page first filters the nearest
-- rows in the listing's order (ten times the page, at least 1,000, at most
-- 10,000; this SQL: $9 those rows, $10 the page's limit, $16 the whole term
-- in lower case). If they hold the whole page, it is the page. If they hold
-- less than half of it, matches are sparse there, and the page is read
-- through the trigram index, never by walking the order (enable_indexscan
-- and enable_seqscan off for that one statement): its cost follows the
-- number of matches, not where they lie. Otherwise the planner chooses as
-- before: at that density its walk is short.
CREATE FUNCTION customers_page_nearest_sql(
    include_archived boolean, descending boolean, has_after boolean, has_before boolean,
    has_position boolean
) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT 'SELECT * FROM ('
        || customers_page_sql(false, false, has_after, has_before, false, include_archived,
                              descending, has_position, 0, 0)
        || ') AS nearest WHERE email_lower LIKE $16 OR lower(name) LIKE $16'
        || CASE WHEN descending THEN ' ORDER BY create_time DESC, id DESC'
                ELSE ' ORDER BY create_time, id' END
        || ' LIMIT $10'
$$;

-- customers_page with the query's windows for email and for name: at most
-- three trigrams each, of letters or digits, each in the term (any other
-- is left out: a window not in the term could lose rows). No window: the
-- whole term goes to the index.
CREATE FUNCTION customers_page(
    p_email            text,
    p_query            text,
    p_created_after    timestamptz,
    p_created_before   timestamptz,
    p_metadata         jsonb,
    p_include_archived boolean,
    p_descending       boolean,
    p_after_time       timestamptz,
    p_after_id         uuid,
    p_limit            integer,
    p_email_windows    text[],
    p_name_windows     text[]
) RETURNS SETOF customers
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    app uuid := nullif(current_setting('customers.app_id', true), '')::uuid;
    term text := lower(p_query);
    email_windows text[];
    name_windows text[];
    nearest_sql text;
    nearest_limit integer;
    nearest bigint;
    index_scans text;
    sequential_scans text;
BEGIN
    IF app IS NULL THEN
        RETURN;
    END IF;
    IF term IS NOT NULL THEN
        SELECT array_agg('%' || w || '%') INTO email_windows
          FROM (SELECT w FROM unnest(p_email_windows) AS w
                 WHERE w ~ '^[[:alnum:]]{3}$' AND strpos(term, w) > 0 LIMIT 3) AS valid;
        SELECT array_agg('%' || w || '%') INTO name_windows
          FROM (SELECT w FROM unnest(p_name_windows) AS w
                 WHERE w ~ '^[[:alnum:]]{3}$' AND strpos(term, w) > 0 LIMIT 3) AS valid;
    END IF;
    -- A query the index cannot narrow (in email or name), alone or with a
    -- creation range: the nearest rows first (see
    -- customers_page_nearest_sql).
    IF term IS NOT NULL AND (email_windows IS NULL OR name_windows IS NULL)
       AND p_email IS NULL AND p_metadata IS NULL AND p_limit > 0 THEN
        nearest_sql := customers_page_nearest_sql(p_include_archived, p_descending,
                                                  p_created_after IS NOT NULL,
                                                  p_created_before IS NOT NULL,
                                                  p_after_time IS NOT NULL);
        nearest_limit := least(greatest(1000, 10 * p_limit), 10000);
        -- Counted first, then returned: rows returned cannot be taken back.
        EXECUTE 'SELECT count(*) FROM (' || nearest_sql || ') AS page'
        INTO nearest
        USING app, NULL::text, NULL::text, p_created_after, p_created_before, NULL::jsonb,
              p_after_time, p_after_id, nearest_limit, p_limit,
              NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, term;
        IF nearest >= p_limit THEN
            RETURN QUERY EXECUTE nearest_sql
            USING app, NULL::text, NULL::text, p_created_after, p_created_before, NULL::jsonb,
                  p_after_time, p_after_id, nearest_limit, p_limit,
                  NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, term;
            RETURN;
        ELSIF nearest < p_limit / 2.0 THEN
            index_scans := current_setting('enable_indexscan');
            sequential_scans := current_setting('enable_seqscan');
            PERFORM set_config('enable_indexscan', 'off', true),
                    set_config('enable_seqscan', 'off', true);
        END IF;
    END IF;
    RETURN QUERY EXECUTE customers_page_sql(
        p_email IS NOT NULL, term IS NOT NULL, p_created_after IS NOT NULL,
        p_created_before IS NOT NULL, p_metadata IS NOT NULL, p_include_archived,
        p_descending, p_after_time IS NOT NULL,
        coalesce(cardinality(email_windows), 0), coalesce(cardinality(name_windows), 0))
    USING app, lower(p_email), p_query, p_created_after, p_created_before, p_metadata,
          p_after_time, p_after_id, p_limit,
          email_windows[1], email_windows[2], email_windows[3],
          name_windows[1], name_windows[2], name_windows[3], term;
    IF index_scans IS NOT NULL THEN
        PERFORM set_config('enable_indexscan', index_scans, true),
                set_config('enable_seqscan', sequential_scans, true);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION customers_page(text, text, timestamptz, timestamptz, jsonb, boolean,
                                      boolean, timestamptz, uuid, integer, text[], text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION customers_page(text, text, timestamptz, timestamptz, jsonb, boolean,
                                         boolean, timestamptz, uuid, integer, text[], text[])
    TO customers_service;
