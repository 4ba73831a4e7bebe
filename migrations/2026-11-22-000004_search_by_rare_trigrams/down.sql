DROP FUNCTION customers_page_sql(boolean, boolean, boolean, boolean, boolean, boolean, boolean, boolean, integer, integer);
CREATE FUNCTION customers_page_sql(
    has_email boolean, has_query boolean, has_after boolean, has_before boolean,
    has_metadata boolean, include_archived boolean, descending boolean, has_position boolean
) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT 'SELECT * FROM public.customers WHERE app_id = $1'
        || CASE WHEN include_archived THEN ' AND state <> ''deleted''' ELSE ' AND state = ''active''' END
        || CASE WHEN has_email THEN ' AND email_lower = $2' ELSE '' END
        || CASE WHEN has_query THEN ' AND (email ILIKE $3 OR name ILIKE $3)' ELSE '' END
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

CREATE OR REPLACE FUNCTION customers_page(
    p_email            text,
    p_query            text,
    p_created_after    timestamptz,
    p_created_before   timestamptz,
    p_metadata         jsonb,
    p_include_archived boolean,
    p_descending       boolean,
    p_after_time       timestamptz,
    p_after_id         uuid,
    p_limit            integer
) RETURNS SETOF customers
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    app uuid := nullif(current_setting('customers.app_id', true), '')::uuid;
BEGIN
    IF app IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE customers_page_sql(
        p_email IS NOT NULL, p_query IS NOT NULL, p_created_after IS NOT NULL,
        p_created_before IS NOT NULL, p_metadata IS NOT NULL, p_include_archived,
        p_descending, p_after_time IS NOT NULL)
    USING app, lower(p_email), p_query, p_created_after, p_created_before, p_metadata,
          p_after_time, p_after_id, p_limit;
END
$$;

DROP FUNCTION customers_search_windows;
