//! Statements that diesel would prepare anew on every call, kept prepared.
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

use diesel::{
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
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
