DROP FUNCTION customers_page(text, text, timestamptz, timestamptz, jsonb, boolean, boolean, timestamptz, uuid, integer, text[], text[]);
DROP FUNCTION customers_common_trigrams;
DROP FUNCTION customers_page_nearest_sql;
CREATE OR REPLACE FUNCTION customers_page_sql(
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

DROP FUNCTION customers_page_sql(boolean, boolean, boolean, boolean, boolean, boolean, boolean, boolean, integer, integer);
