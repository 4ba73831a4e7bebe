//! ListCustomers' filters.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    ids::CustomerId,
    validation::{Invalid, MAX_EMAIL_CHARS, MAX_METADATA_KEYS, MAX_QUERY_CHARS, Violations, echo},
};

/// Sort order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

/// Filters of ListCustomers, validated.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub email: Option<String>,
    pub query: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
    pub include_archived: bool,
    pub order: Order,
    pub limit: Option<u64>,
    pub resume_after: Option<CustomerId>,
}

impl ListFilter {
    /// Whether nothing but the state (`include_archived`) narrows the
    /// listing: no email, query, creation range or metadata.
    pub fn is_unfiltered(&self) -> bool {
        // Every field, named: a new filter is not ignored here unnoticed.
        let ListFilter {
            email,
            query,
            created_after,
            created_before,
            metadata,
            include_archived: _,
            order: _,
            limit: _,
            resume_after: _,
        } = self;
        email.is_none()
            && query.is_none()
            && created_after.is_none()
            && created_before.is_none()
            && metadata.is_empty()
    }

    /// Checks the filter's free-form parts.
    pub fn validate(self) -> Result<ListFilter, Invalid> {
        let mut v = Violations::new("");
        if let Some(email) = &self.email {
            v.max_chars("email", email, MAX_EMAIL_CHARS);
            v.no_control("email", email);
        }
        if let Some(query) = &self.query {
            v.max_chars("query", query, MAX_QUERY_CHARS);
            v.no_control("query", query);
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            v.add(
                "metadata",
                format!("must have at most {MAX_METADATA_KEYS} pairs"),
            );
        }
        for (key, value) in &self.metadata {
            let path = format!("metadata[{}]", echo(key));
            v.no_control(&path, key);
            v.no_nul(&path, value);
        }
        v.into_result(self)
    }
}
