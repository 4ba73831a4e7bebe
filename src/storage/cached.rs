//! Statements that diesel would prepare anew on every call, kept prepared
//! ([`Cached`]), and hot statements whose SQL it would render anew on every
//! call, rendered once ([`Rendered`]).
//!
//! diesel 2.3 marks every `UPDATE`, every `sql_query` and every single-row
//! `INSERT` built from a derived `Insertable` with default values as unsafe
//! to cache, because such a statement's SQL may change from one call to the
//! next while its Rust type stays the same (a changeset skips its `None`
//! fields; an insert writes `DEFAULT` for them), and the statement cache is
//! keyed by the Rust type. Each call then costs a `Parse` round trip and a
//! fresh plan in PostgreSQL.
//!
//! [`Cached`] keys such a statement by its SQL text instead (no static query
//! id), and declares it safe to cache: a statement is reused only for the
//! very same SQL, whatever the Rust type, so caching it cannot run the
//! wrong SQL. Use it only for statements whose SQL takes a bounded number of
//! forms (the prepared-statement cache keeps every form it sees).

use std::sync::OnceLock;

use diesel::{
    pg::{Pg, PgQueryBuilder},
    query_builder::{AstPass, Query, QueryBuilder as _, QueryFragment, QueryId},
    result::QueryResult,
};

/// `Q`, prepared once per connection and SQL text (see the module's doc).
#[derive(Debug, Clone, Copy)]
pub struct Cached<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the statement cache keys it by its SQL and bind types.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// `Q`, its SQL text rendered once and kept in `sql`, for a hot statement
/// whose SQL is the same for every value of its binds (a fixed select list
/// and filter, no optional parts).
///
/// diesel-async renders a statement's SQL on every call, even when its
/// prepared statement is cached and the text goes unused: for a customer's
/// row (22 quoted columns, a filter) that is about 5% of a read's CPU in the
/// service. The binds are still collected from `Q` on every call; only the
/// text is kept. Build it with [`rendered!`], which gives each call site a
/// `static` of its own (so not inside a generic function, whose
/// instances would share it). Debug builds (the tests) render the text anew
/// every time and check that it is the one kept.
#[derive(Debug, Clone, Copy)]
pub struct Rendered<Q> {
    query: Q,
    sql: &'static OnceLock<String>,
}

impl<Q> Rendered<Q> {
    pub fn new(query: Q, sql: &'static OnceLock<String>) -> Self {
        Self { query, sql }
    }
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Rendered<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.query.walk_ast(pass)
    }

    fn to_sql(&self, out: &mut PgQueryBuilder, backend: &Pg) -> QueryResult<()> {
        let render = || -> QueryResult<String> {
            let mut own = PgQueryBuilder::default();
            self.query.to_sql(&mut own, backend)?;
            Ok(own.finish())
        };
        let sql = match self.sql.get() {
            Some(sql) => {
                debug_assert_eq!(*sql, render()?, "one text per statement");
                sql
            }
            None => {
                let sql = render()?;
                self.sql.get_or_init(|| sql)
            }
        };
        out.push_sql(sql);
        Ok(())
    }

    fn is_safe_to_cache_prepared(&self, backend: &Pg) -> QueryResult<bool> {
        self.query.is_safe_to_cache_prepared(backend)
    }
}

/// `Rendered::new($query, …)` with a `static` of this call site's own.
macro_rules! rendered {
    ($query:expr) => {{
        static SQL: ::std::sync::OnceLock<String> = ::std::sync::OnceLock::new();
        $crate::storage::cached::Rendered::new($query, &SQL)
    }};
}
pub(crate) use rendered;

impl<Q: QueryId> QueryId for Rendered<Q> {
    type QueryId = Q::QueryId;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q: Query> Query for Rendered<Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use diesel::{debug_query, prelude::*};
    use uuid::Uuid;

    use super::*;
    use crate::storage::schema::customers as c;

    #[test]
    fn a_rendered_statement_keeps_its_text_and_takes_each_calls_binds() {
        static SQL: OnceLock<String> = OnceLock::new();
        let query = |app: Uuid, id: Uuid| {
            c::table
                .filter(c::app_id.eq(app))
                .filter(c::id.eq(id))
                .select((c::id, c::email))
        };
        let (first, second) = (
            query(Uuid::nil(), Uuid::now_v7()),
            query(Uuid::now_v7(), Uuid::now_v7()),
        );
        for plain in [first, second] {
            let rendered = Rendered::new(plain, &SQL);
            assert_eq!(
                debug_query::<Pg, _>(&rendered).to_string(),
                debug_query::<Pg, _>(&plain).to_string()
            );
        }
        let kept = SQL.get().expect("rendered once");
        assert!(kept.contains("$1") && kept.contains("$2"), "{kept}");
        assert!(!kept.contains(&Uuid::nil().to_string()), "{kept}");
    }

    #[test]
    #[should_panic(expected = "one text per statement")]
    fn two_statements_sharing_a_text_are_caught_in_debug_builds() {
        static SQL: OnceLock<String> = OnceLock::new();
        let by_id = c::table.filter(c::id.eq(Uuid::nil())).select(c::id);
        let by_email = c::table.filter(c::email.eq("a@example.com")).select(c::id);
        let _ = debug_query::<Pg, _>(&Rendered::new(by_id, &SQL)).to_string();
        let _ = debug_query::<Pg, _>(&Rendered::new(by_email, &SQL)).to_string();
    }
}
