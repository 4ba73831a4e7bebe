//! The SQL of change events: appending one in the transaction of its change,
//! erasing a customer's past, reading an app's log, pruning it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::{dsl, prelude::*, sql_types};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Pool, TxConnection,
    cached::Cached,
    connect,
    models::{CustomerRow, StringMap},
    schema::{customer_event_heads as heads, customer_events as e},
};
use crate::{
    context::RequestContext,
    domain::{AppId, CustomerId, Event, EventFilter, EventId, EventType, KeyId, NewEvent},
    error::Error,
};

#[diesel::declare_sql_function]
extern "SQL" {
    /// See the migration `customer_events`.
    fn sequence_customer_events(app: sql_types::Uuid) -> sql_types::BigInt;

    /// See the migration `customer_events`.
    fn prune_customer_events(
        cutoff: sql_types::Timestamptz,
        max_rows: sql_types::Integer,
    ) -> sql_types::BigInt;
}

/// An event's customer as stored: its row, and its provider ids beside.
#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    #[serde(flatten)]
    row: CustomerRow,
    provider_ids: BTreeMap<String, String>,
}

/// Records `event` in the current transaction, scoped to `ctx`'s app,
/// without a position (the app's sequencer gives it one once committed: see
/// [`sequence`]). Takes no lock that other writes wait for.
pub(super) async fn append(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    event: NewEvent<'_>,
) -> Result<(), Error> {
    let snapshot = serde_json::to_value(Snapshot {
        row: CustomerRow::of(event.customer),
        provider_ids: event.customer.fields.provider_ids.clone(),
    })
    .map_err(Error::internal)?;
    diesel::insert_into(e::table)
        .values((
            e::app_id.eq(ctx.app.0),
            e::id.eq(EventId::generate().0),
            e::kind.eq(event.kind.as_str()),
            e::customer_id.eq(event.customer.id.uuid()),
            e::customer.eq(Some(snapshot)),
            e::changed_fields.eq(event.changed_fields),
            e::key_id.eq(ctx.key.map(|k| k.0)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs `ctx`'s app's sequencer: the app's committed events without a
/// position get the next ones, in the order they were written. Returns the
/// app's head (its last position). One short write transaction; concurrent
/// sequencers of an app take turns on its head row.
pub async fn sequence(pool: &Pool, ctx: &RequestContext) -> Result<u64, Error> {
    let mut conn = TxConnection::new(connect(pool, ctx.deadline).await?);
    let span = super::transaction_span("sequence");
    let head = write_transaction!(pool, &mut conn, ctx, span, |conn, begin| {
        let mut shared: &AsyncPgConnection = conn;
        let head =
            diesel::select(sequence_customer_events(ctx.app.0)).get_result::<i64>(&mut shared);
        let ((), head) =
            futures_util::try_join!(super::begin_shared(conn, begin), async { Ok(head.await?) })?;
        Ok(head)
    })?;
    Ok(head as u64)
}

/// Removes the personal data from a customer's recorded events (their ids,
/// types, positions, times and keys stay). Part of DeleteCustomer's
/// transaction.
pub(super) async fn erase_history(
    conn: &mut AsyncPgConnection,
    app: AppId,
    customer: CustomerId,
) -> Result<(), Error> {
    Cached(
        diesel::update(unerased_history(app.0, customer.uuid()))
            .set(e::customer.eq(None::<serde_json::Value>)),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Where an app's log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// The last position taken (0: no event yet).
    pub position: u64,
    /// Events at or before this position were pruned.
    pub pruned_through: u64,
    /// The newest time among pruned events.
    pub pruned_time: Option<DateTime<Utc>>,
}

/// Events read from a log, and how far the read saw.
#[derive(Debug, Clone)]
pub struct Page {
    /// The matching events, in order.
    pub events: Vec<Event>,
    /// Every event at or before this position was read or filtered out.
    pub through: u64,
    pub head: Head,
}

/// An event as read.
#[derive(Queryable, Selectable)]
#[diesel(table_name = e, check_for_backend(diesel::pg::Pg))]
pub(super) struct EventRow {
    position: Option<i64>,
    id: Uuid,
    kind: String,
    customer_id: Uuid,
    customer: Option<serde_json::Value>,
    changed_fields: Vec<String>,
    key_id: Option<Uuid>,
    create_time: DateTime<Utc>,
}

fn into_event(row: EventRow) -> Result<Event, Error> {
    let EventRow {
        position,
        id,
        kind,
        customer_id,
        customer,
        changed_fields,
        key_id,
        create_time,
    } = row;
    let kind = EventType::from_db(&kind)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown event type {kind:?}")))?;
    let customer = customer
        .map(|json| {
            let Snapshot {
                mut row,
                provider_ids,
            } = serde_json::from_value(json)
                .map_err(|e| Error::internal(anyhow::Error::new(e).context("event snapshot")))?;
            row.provider_ids = StringMap(provider_ids);
            row.into_customer()
        })
        .transpose()?;
    let position = position
        .ok_or_else(|| Error::internal(anyhow::anyhow!("an event read without a position")))?;
    Ok(Event {
        id: EventId(id),
        position: position as u64,
        kind,
        customer_id: CustomerId::from_uuid(customer_id),
        customer,
        changed_fields,
        create_time,
        key_id: key_id.map(KeyId),
    })
}

/// A customer's events that still hold its data.
#[dsl::auto_type]
pub(super) fn unerased_history(app: Uuid, customer: Uuid) -> _ {
    e::table
        .filter(e::app_id.eq(app))
        .filter(e::customer_id.eq(customer))
        .filter(e::customer.is_not_null())
}

/// The position of an app's first event recorded at or after a time.
#[dsl::auto_type]
pub(super) fn first_at(app: Uuid, time: DateTime<Utc>) -> _ {
    e::table
        .filter(e::app_id.eq(app))
        .filter(e::create_time.ge(time))
        .filter(e::position.is_not_null())
        .order(e::create_time)
        .select(e::position)
}

/// The head row of an app.
#[dsl::auto_type]
pub(super) fn head_of(app: Uuid) -> _ {
    heads::table.filter(heads::app_id.eq(app)).select((
        heads::position,
        heads::pruned_through,
        heads::pruned_time,
    ))
}

/// An app's events after a position, of some types, in order.
#[dsl::auto_type]
pub(super) fn events_after(app: Uuid, after: i64, types: Vec<&'static str>, limit: i64) -> _ {
    e::table
        .filter(e::app_id.eq(app))
        .filter(e::position.gt(after))
        .filter(e::kind.eq_any(types))
        .order(e::position)
        .limit(limit)
}

/// One customer's events after a position, of some types, in order.
#[dsl::auto_type]
pub(super) fn customer_events_after(
    app: Uuid,
    customer: Uuid,
    after: i64,
    types: Vec<&'static str>,
    limit: i64,
) -> _ {
    e::table
        .filter(e::app_id.eq(app))
        .filter(e::customer_id.eq(customer))
        .filter(e::position.gt(after))
        .filter(e::kind.eq_any(types))
        .order(e::position)
        .limit(limit)
}

fn to_head(row: Option<(i64, i64, Option<DateTime<Utc>>)>) -> Head {
    row.map(|(position, pruned_through, pruned_time)| Head {
        position: position as u64,
        pruned_through: pruned_through as u64,
        pruned_time,
    })
    .unwrap_or_default()
}

/// Where `ctx`'s app's log stands now.
pub async fn head(
    pool: &Pool,
    ctx: &RequestContext,
    cancel: &CancellationToken,
) -> Result<Head, Error> {
    let app = ctx.app.0;
    read!(pool, ctx, cancel, |conn, scope| {
        let mut shared = &*conn;
        let row = head_of(app).first::<(i64, i64, Option<DateTime<Utc>>)>(&mut shared);
        let ((), row) = futures_util::try_join!(scope, async { Ok(row.await.optional()?) })?;
        Ok(to_head(row))
    })
}

/// The position just before the first event recorded at or after `time`
/// (the head when there is none), with the head.
pub async fn position_at(
    pool: &Pool,
    ctx: &RequestContext,
    time: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<(u64, Head), Error> {
    let app = ctx.app.0;
    read!(pool, ctx, cancel, |conn, scope| {
        let (mut head_conn, mut first_conn) = (&*conn, &*conn);
        let row = head_of(app).first::<(i64, i64, Option<DateTime<Utc>>)>(&mut head_conn);
        let first = first_at(app, time).first::<Option<i64>>(&mut first_conn);
        let ((), row, first) =
            futures_util::try_join!(scope, async { Ok(row.await.optional()?) }, async {
                Ok::<_, Error>(first.await.optional()?)
            })?;
        let head = to_head(row);
        let position = first
            .flatten()
            .map_or(head.position, |p| (p as u64).saturating_sub(1));
        Ok((position, head))
    })
}

/// Up to `limit` events of `ctx`'s app after position `after` that match
/// `filter`, in order, read in one snapshot with the app's head.
pub async fn read_page(
    pool: &Pool,
    ctx: &RequestContext,
    after: u64,
    filter: &EventFilter,
    limit: usize,
    cancel: &CancellationToken,
) -> Result<Page, Error> {
    let app = ctx.app.0;
    let types: Vec<&'static str> = filter.types_or_all().iter().map(|t| t.as_str()).collect();
    let (after_db, limit_db) = (after as i64, limit as i64);
    read!(pool, ctx, cancel, |conn, scope| {
        let (mut head_conn, mut rows_conn) = (&*conn, &*conn);
        let head_row = head_of(app).first::<(i64, i64, Option<DateTime<Utc>>)>(&mut head_conn);
        let rows = async {
            Ok::<Vec<EventRow>, Error>(match filter.customer {
                Some(customer) => {
                    customer_events_after(app, customer.uuid(), after_db, types, limit_db)
                        .select(EventRow::as_select())
                        .load(&mut rows_conn)
                        .await?
                }
                None => {
                    events_after(app, after_db, types, limit_db)
                        .select(EventRow::as_select())
                        .load(&mut rows_conn)
                        .await?
                }
            })
        };
        let ((), head_row, rows) =
            futures_util::try_join!(scope, async { Ok(head_row.await.optional()?) }, rows)?;
        let head = to_head(head_row);
        let full = rows.len() >= limit;
        let events = rows
            .into_iter()
            .map(into_event)
            .collect::<Result<Vec<_>, _>>()?;
        let through = match events.last() {
            Some(last) if full => last.position,
            _ => head.position.max(after),
        };
        Ok(Page {
            events,
            through,
            head,
        })
    })
}

/// One entry of a customer's change history, as the console shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = e, check_for_backend(diesel::pg::Pg))]
pub struct HistoryEntry {
    /// `None` until the app's sequencer numbers the event (moments after it
    /// commits).
    pub position: Option<i64>,
    pub kind: String,
    pub changed_fields: Vec<String>,
    pub key_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
}

impl HistoryEntry {
    pub fn key(&self) -> Option<KeyId> {
        self.key_id.map(KeyId)
    }
}

/// The latest `limit` change events of one customer of `ctx`'s app, newest
/// first (the customer index serves it: a customer has few events).
pub async fn customer_history(
    pool: &Pool,
    ctx: &RequestContext,
    customer: CustomerId,
    limit: i64,
    cancel: &CancellationToken,
) -> Result<Vec<HistoryEntry>, Error> {
    let app = ctx.app.0;
    read!(pool, ctx, cancel, |conn| {
        Ok(e::table
            .filter(e::app_id.eq(app))
            .filter(e::customer_id.eq(customer.uuid()))
            .order(e::seq.desc())
            .limit(limit)
            .select(HistoryEntry::as_select())
            .load(conn)
            .await?)
    })
}

/// Deletes up to `max_rows` events per app recorded before `cutoff`, if no
/// other replica is pruning. Returns how many went.
pub async fn prune(pool: &Pool, cutoff: DateTime<Utc>, max_rows: i32) -> Result<u64, Error> {
    let mut conn = connect(pool, None).await?;
    let deleted = conn
        .transaction::<_, Error, _>(async |conn| {
            Ok(diesel::select(prune_customer_events(cutoff, max_rows))
                .get_result::<i64>(conn)
                .await?)
        })
        .instrument(super::transaction_span("prune"))
        .await?;
    Ok(deleted as u64)
}

/// One simple-query batch that sends `channel` one notification per app
/// (its UUID as the payload); run outside any transaction, each is
/// delivered at once. `channel` is a constant of ours, never caller text.
pub fn notify_sql(channel: &str, apps: &[AppId]) -> String {
    apps.iter()
        .map(|app| format!("SELECT pg_notify('{channel}', '{}')", app.0.hyphenated()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sends [`notify_sql`] on a pooled connection, in one round trip.
pub async fn notify(pool: &Pool, channel: &str, apps: &[AppId]) -> Result<(), Error> {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = connect(pool, None).await?;
    conn.batch_execute(&notify_sql(channel, apps)).await?;
    Ok(())
}
