//! The plans of the service's query shapes, for the tests and benchmarks
//! that check that every one of them uses an index under row-level
//! security. The shapes are built by the very functions the service uses.

use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    sql_types,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::{
    customers::{
        active_by_email, active_by_external_id, archived_by_external_id, customer_by_id,
        like_pattern, provider_id_holder_query, unfiltered_page,
    },
    events::{EventRow, customer_events_after, events_after, first_at, head_of, unerased_history},
    models::CustomerRow,
    schema::customers as c,
    search::{Column, CommonTrigrams},
};
use crate::{
    domain::{AppId, CustomerId},
    error::Error,
};

/// Keys of existing rows, for [`explain_query_shapes`].
#[derive(Debug, Clone)]
pub struct SampleKeys {
    pub id: CustomerId,
    pub email: String,
    pub external_id: String,
    pub provider: String,
    pub provider_id: String,
}

/// `EXPLAIN` of a query, run with the query's own binds.
#[derive(Debug, Clone, Copy)]
struct Explain<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("EXPLAIN ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> Query for Explain<Q> {
    type SqlType = sql_types::Text;
}

async fn explain<Q: QueryFragment<Pg> + Send>(
    conn: &mut AsyncPgConnection,
    query: Q,
) -> Result<String, Error> {
    let lines: Vec<String> = Explain(query).load(conn).await?;
    Ok(lines.join("\n"))
}

/// The plan of every query shape the service runs, for tests and
/// benchmarks that check them. The point lookups are built by the same
/// functions the service uses and explained on `conn` as it stands: scope it
/// exactly as the service scopes its transactions ([`super::scope`]) so that
/// the plans are the service's, row-level security included. The list pages
/// run inside `customers_page` with the tables' owner's rights: their SQL is
/// explained after `RESET ROLE`, the way the function runs it (so call this
/// on a connection of the tables' owner).
#[doc(hidden)]
pub async fn explain_query_shapes(
    conn: &mut AsyncPgConnection,
    app: AppId,
    sample: &SampleKeys,
) -> Result<Vec<(String, String)>, Error> {
    let app_id = app.0;
    let mut plans = vec![
        (
            "customer by id".to_owned(),
            explain(
                conn,
                customer_by_id(app_id, sample.id.uuid()).select(CustomerRow::as_select()),
            )
            .await?,
        ),
        (
            "active customer by external id".to_owned(),
            explain(
                conn,
                active_by_external_id(app_id, &sample.external_id).select(CustomerRow::as_select()),
            )
            .await?,
        ),
        (
            "archived customers by external id".to_owned(),
            explain(
                conn,
                archived_by_external_id(app_id, &sample.external_id)
                    .select(CustomerRow::as_select()),
            )
            .await?,
        ),
        (
            "holder of an email".to_owned(),
            explain(conn, active_by_email(app_id, &sample.email).select(c::id)).await?,
        ),
        (
            "holder of a provider id".to_owned(),
            explain(
                conn,
                provider_id_holder_query(app_id, &sample.provider, &sample.provider_id),
            )
            .await?,
        ),
        (
            "events after a position".to_owned(),
            explain(
                conn,
                events_after(app_id, 1_000, vec!["created", "updated"], 500)
                    .select(EventRow::as_select()),
            )
            .await?,
        ),
        (
            "a customer's events after a position".to_owned(),
            explain(
                conn,
                customer_events_after(app_id, sample.id.uuid(), 0, vec!["updated"], 500)
                    .select(EventRow::as_select()),
            )
            .await?,
        ),
        (
            "first event at a time".to_owned(),
            explain(conn, first_at(app_id, chrono::Utc::now()).limit(1)).await?,
        ),
        (
            "head of an app's events".to_owned(),
            explain(conn, head_of(app_id)).await?,
        ),
        (
            "a customer's events to erase".to_owned(),
            explain(
                conn,
                diesel::update(unerased_history(app_id, sample.id.uuid())).set(
                    crate::storage::schema::customer_events::customer.eq(None::<serde_json::Value>),
                ),
            )
            .await?,
        ),
    ];
    // Listings with no filter but the state, read directly (not through the
    // page function): as the service's role.
    let resumed = Some((
        chrono::Utc::now() - chrono::Duration::minutes(1),
        sample.id.uuid(),
    ));
    for (name, archived, descending, after) in [
        ("page, no filter, oldest first", false, false, None),
        (
            "page, no filter, newest first, resumed",
            false,
            true,
            resumed,
        ),
        (
            "page, no filter, archived too, resumed",
            true,
            false,
            resumed,
        ),
    ] {
        let page = unfiltered_page(app, archived, descending, after, 2_000);
        plans.push((name.to_owned(), explain(conn, page).await?));
    }

    conn.batch_execute("RESET ROLE").await?;
    let query = &sample.email[..sample.email.len().min(8)];
    let pattern = like_pattern(query);
    let trigrams = CommonTrigrams::load(conn).await?;
    let metadata = serde_json::json!({ "parity": "1" }).to_string();
    let position = "now() - interval '1 minute'";
    // (name, filters as customers_page_sql takes them, how the page
    // function runs a query's page).
    let pages = [
        (
            "page, oldest first",
            "false, false, false, false, false, false, false, false",
            Search::WholeTerm,
        ),
        (
            "page, newest first, resumed",
            "false, false, false, false, false, false, true, true",
            Search::WholeTerm,
        ),
        (
            "page by email",
            "true, false, false, false, false, false, false, false",
            Search::WholeTerm,
        ),
        (
            "page by email, archived too",
            "true, false, false, false, false, true, false, false",
            Search::WholeTerm,
        ),
        (
            "page by query, whole term",
            "false, true, false, false, false, false, false, false",
            Search::WholeTerm,
        ),
        (
            "page by query, rarest windows",
            "false, true, false, false, false, false, false, false",
            Search::RarestWindows,
        ),
        (
            "page by query, rarest windows, resumed",
            "false, true, false, false, false, false, false, true",
            Search::RarestWindows,
        ),
        (
            "page by query, the nearest rows, newest first, resumed",
            "false, true, false, false, false, false, true, true",
            Search::NearestRows,
        ),
        (
            "page by query, past the nearest rows",
            "false, true, false, false, false, false, false, false",
            Search::PastTheNearestRows,
        ),
        (
            "page by metadata",
            "false, false, false, false, true, false, false, false",
            Search::WholeTerm,
        ),
        (
            "page by creation range",
            "false, false, true, true, false, false, false, false",
            Search::WholeTerm,
        ),
    ];
    for (name, filters, search) in pages {
        #[derive(QueryableByName)]
        struct Sql {
            #[diesel(sql_type = sql_types::Text)]
            sql: String,
        }
        // The windows as the listing chooses them.
        let (email_windows, name_windows) = if search == Search::RarestWindows {
            (
                trigrams.windows(Column::Email, query),
                trigrams.windows(Column::Name, query),
            )
        } else {
            Default::default()
        };
        let window = |windows: &[String], i: usize| {
            windows
                .get(i)
                .map_or("NULL".to_owned(), |w| quote(&format!("%{w}%")))
        };
        let windows = [&email_windows, &name_windows]
            .iter()
            .flat_map(|windows| (0..3).map(|i| window(windows, i)))
            .collect::<Vec<_>>()
            .join(", ");
        // The SQL, and the parameters from $9 to $15 (see the migration
        // `search_by_rare_trigrams`).
        let (sql, rest_types, rest) = if search == Search::NearestRows {
            let [_, _, after, before, _, archived, descending, position] =
                filters.split(", ").collect::<Vec<_>>()[..]
            else {
                unreachable!("eight filters")
            };
            (
                format!(
                    "SELECT customers_page_nearest_sql({archived}, {descending}, {after}, \
                     {before}, {position}) AS sql"
                ),
                "integer, integer, text, text, text, text, text",
                "1000, 20, NULL, NULL, NULL, NULL, NULL".to_owned(),
            )
        } else {
            (
                format!(
                    "SELECT customers_page_sql({filters}, {}, {}) AS sql",
                    email_windows.len(),
                    name_windows.len()
                ),
                "integer, text, text, text, text, text, text",
                format!("500, {windows}"),
            )
        };
        let Sql { sql } = diesel::sql_query(sql).get_result(conn).await?;
        conn.batch_execute(&format!(
            "PREPARE page_shape (uuid, text, text, timestamptz, timestamptz, jsonb, \
             timestamptz, uuid, {rest_types}, text) AS {sql}"
        ))
        .await?;
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        // As the page function plans a page past the nearest rows.
        let forced = search == Search::PastTheNearestRows;
        if forced {
            conn.batch_execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_seqscan = off")
                .await?;
        }
        let plan: Vec<Line> = diesel::sql_query(format!(
            "EXPLAIN EXECUTE page_shape('{app_id}', lower({email}), {pattern}, \
             {position}, now(), {metadata}, {position}, '{id}', {rest}, lower({pattern}))",
            email = quote(&sample.email),
            pattern = quote(&pattern),
            metadata = quote(&metadata),
            id = sample.id.uuid(),
        ))
        .load(conn)
        .await?;
        if forced {
            conn.batch_execute("SET LOCAL enable_indexscan = on; SET LOCAL enable_seqscan = on")
                .await?;
        }
        conn.batch_execute("DEALLOCATE page_shape").await?;
        let plan = plan.into_iter().map(|l| l.line).collect::<Vec<_>>();
        plans.push((format!("{name}: {sql}"), plan.join("\n")));
    }
    Ok(plans)
}

/// How `customers_page` runs a listing's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// With its query's whole term (if any) for the trigram indexes.
    WholeTerm,
    /// With the query's rarest windows for them.
    RarestWindows,
    /// Filtering the nearest rows in order (a query it cannot narrow).
    NearestRows,
    /// Past those: by the trigram index, never walking the order.
    PastTheNearestRows,
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
