//! Which of a search term's trigrams go to the trigram index.
//!
//! The index answers `ILIKE '%term%'` by intersecting the posting lists of
//! all the term's trigrams, and a trigram that most rows share (`cus`,
//! `com`, `gma`) costs a walk through a list as long as the app (see the
//! migration `search_by_rare_trigrams`). So the listing gives
//! `customers_page` the term's rarest windows of three letters or digits
//! only, and the function checks the whole term on each row. How common
//! each trigram is comes from the planner's statistics
//! (`customers_common_trigrams`), loaded by each replica at most once a
//! minute. They choose the windows, never the answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use diesel::{QueryableByName, sql_types};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::time::Instant;

use crate::error::Error;

/// Most windows given to the index per column.
const MOST_WINDOWS: usize = 3;
/// A window found in a larger share of the rows than this is left out.
const RARE: f32 = 0.1;
/// How long loaded statistics are used before they are loaded again.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// The searched columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Email,
    Name,
}

/// Trigrams found in at least 1% of the customers' emails and names (across
/// the table, as the planner's statistics estimate), with that share.
#[derive(Debug, Clone, Default)]
pub struct CommonTrigrams {
    email: HashMap<String, f32>,
    name: HashMap<String, f32>,
}

#[derive(QueryableByName)]
struct CommonTrigram {
    #[diesel(sql_type = sql_types::Text)]
    column_name: String,
    #[diesel(sql_type = sql_types::Text)]
    trigram: String,
    #[diesel(sql_type = sql_types::Float4)]
    frequency: f32,
}

impl CommonTrigrams {
    /// Reads them from the database (empty without statistics: a table
    /// never analysed, or a Citus coordinator's).
    pub async fn load(conn: &mut AsyncPgConnection) -> Result<Self, Error> {
        let rows: Vec<CommonTrigram> =
            diesel::sql_query("SELECT * FROM customers_common_trigrams()")
                .load(conn)
                .await?;
        Ok(Self::from_rows(
            rows.into_iter()
                .map(|row| (row.column_name, row.trigram, row.frequency)),
        ))
    }

    /// From the rows of `customers_common_trigrams()`: column, trigram, share.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String, f32)>) -> Self {
        let mut common = Self::default();
        for (column, trigram, share) in rows {
            let column = match column.as_str() {
                "email" => &mut common.email,
                "name" => &mut common.name,
                _ => continue,
            };
            column.insert(trigram, share);
        }
        common
    }

    /// True when the statistics named no trigram at all.
    pub fn is_empty(&self) -> bool {
        self.email.is_empty() && self.name.is_empty()
    }

    /// The windows of `term` to give the index for `column`: at most three
    /// of three ASCII letters or digits, in lower case, each found in at
    /// most a tenth of the rows, rarest first. Empty when there is none, or
    /// nothing to leave out (a term of three characters): the whole term
    /// goes to the index then.
    pub fn windows(&self, column: Column, term: &str) -> Vec<String> {
        let common = match column {
            Column::Email => &self.email,
            Column::Name => &self.name,
        };
        let chars: Vec<char> = term.chars().map(|c| c.to_ascii_lowercase()).collect();
        if chars.len() <= 3 || self.is_empty() {
            return Vec::new();
        }
        let mut windows: Vec<(f32, String)> = Vec::new();
        for window in chars.windows(3) {
            if !window.iter().all(char::is_ascii_alphanumeric) {
                continue;
            }
            let window: String = window.iter().collect();
            if windows.iter().any(|(_, w)| *w == window) {
                continue;
            }
            let share = common.get(&window).copied().unwrap_or(0.0);
            if share <= RARE {
                windows.push((share, window));
            }
        }
        windows.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        windows
            .into_iter()
            .take(MOST_WINDOWS)
            .map(|(_, w)| w)
            .collect()
    }
}

/// A replica's [`CommonTrigrams`], loaded again once they are a minute old.
#[derive(Default)]
pub(super) struct SearchStatistics {
    /// The statistics and when they were loaded (or last failed to load).
    current: Mutex<Option<(Instant, Arc<CommonTrigrams>)>>,
    /// Held by the one caller loading them, so that the others do not.
    loading: tokio::sync::Mutex<()>,
}

impl SearchStatistics {
    /// The statistics if fresh; else the stale ones, if any were loaded.
    pub(super) fn fresh(&self) -> Result<Arc<CommonTrigrams>, Option<Arc<CommonTrigrams>>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((at, common)) if at.elapsed() < FRESH_FOR => Ok(common.clone()),
            Some((_, common)) => Err(Some(common.clone())),
            None => Err(None),
        }
    }

    /// The right to load them, unless another caller is loading them.
    pub(super) fn try_loading(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.loading.try_lock().ok()
    }

    /// Keeps what was loaded, or on a failure keeps what there was, for
    /// another minute either way (a failing load is not retried on every
    /// search).
    pub(super) fn store(&self, loaded: Option<CommonTrigrams>) -> Arc<CommonTrigrams> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let common = match (loaded, current.take()) {
            (Some(loaded), _) => Arc::new(loaded),
            (None, Some((_, old))) => old,
            (None, None) => Arc::default(),
        };
        *current = Some((Instant::now(), common.clone()));
        common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(pairs: &[(&str, f32)]) -> CommonTrigrams {
        CommonTrigrams {
            email: pairs.iter().map(|(t, f)| (t.to_string(), *f)).collect(),
            name: HashMap::from([("num".to_owned(), 1.0)]),
        }
    }

    #[test]
    fn the_rarest_windows_are_chosen_and_common_ones_left_out() {
        let stats = common(&[
            ("cus", 1.0),
            ("ust", 1.0),
            ("sto", 1.0),
            ("tom", 1.0),
            ("ome", 1.0),
            ("mer", 1.0),
            ("er1", 0.11),
            ("r12", 0.02),
            ("123", 0.05),
            ("234", 0.03),
        ]);
        assert_eq!(
            stats.windows(Column::Email, "Customer12345"),
            ["345", "r12", "234"]
        );
    }

    #[test]
    fn windows_are_ascii_letters_and_digits_only() {
        let stats = common(&[("exa", 1.0)]);
        assert_eq!(
            stats.windows(Column::Email, "a.b@exam-plé"),
            ["xam"] // "exa" is common; ".b@", "m-p", "plé" are not windows
        );
    }

    #[test]
    fn no_window_when_every_one_is_common_or_the_term_is_short() {
        let stats = common(&[("cus", 1.0), ("ust", 0.5)]);
        assert!(stats.windows(Column::Email, "cust").is_empty());
        assert!(stats.windows(Column::Email, "xyz").is_empty());
        assert!(
            CommonTrigrams::default()
                .windows(Column::Email, "customer12345")
                .is_empty(),
            "no statistics: the whole term"
        );
    }

    #[test]
    fn each_column_has_its_own_statistics() {
        let stats = common(&[("num", 0.0)]);
        assert_eq!(
            stats.windows(Column::Email, "number"),
            ["ber", "mbe", "num"]
        );
        assert_eq!(stats.windows(Column::Name, "number"), ["ber", "mbe", "umb"]);
    }
}
