//! The SQL of every customer operation. Each write is one transaction, and
//! every query is scoped by the app.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::{
    dsl::{self, Eq, Filter, now},
    pg::Pg,
    prelude::*,
    query_builder::{BoxedSqlQuery, SqlQuery},
    sql_types,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Begin, HotRead, Pool, TxConnection, begin_shared,
    cached::{Cached, rendered},
    connect, events,
    listed::Listed,
    models::{CustomerColumns, CustomerRow, NewCustomer, NewProviderId},
    schema::{customer_provider_ids as pids, customers as c},
};
use crate::{
    context::RequestContext,
    domain::{
        AppId, ChangeState, Customer, CustomerId, EventType, FromCustomerRef, ListFilter, Lookup,
        NewEvent, Order, State, Target, UpdateCustomer, ValidFields, changed_fields,
    },
    error::{Error, Key},
};

#[diesel::declare_sql_function]
extern "SQL" {
    fn lower(x: sql_types::Nullable<sql_types::Text>) -> sql_types::Nullable<sql_types::Text>;
}

/// How often CreateCustomer retries when the customer holding its key
/// vanishes (is archived) between the insert and the lookup.
const CREATE_ATTEMPTS: usize = 3;

// The queries, as functions of their parameters. Each is a typed query, so
// diesel prepares it once per connection and reuses it, and each filters by
// its app explicitly (row-level security is the second wall, not the first).
// Every condition on `customers` is leakproof, so the indexes serve them
// under row-level security; `super::plans` checks the plans.

/// One customer by id, whatever its state.
#[dsl::auto_type]
pub(super) fn customer_by_id(app: Uuid, id: Uuid) -> _ {
    c::table.filter(c::app_id.eq(app)).filter(c::id.eq(id))
}

/// The active customer holding an email, case-insensitively: plain equality
/// on the stored lower-case email, which the unique index serves.
#[dsl::auto_type]
pub(super) fn active_by_email<'a>(app: Uuid, email: &'a str) -> _ {
    let active: &'static str = State::Active.as_str();
    let lowered: lower<&'a str> = lower(email);
    c::table
        .filter(c::app_id.eq(app))
        .filter(c::state.eq(active))
        .filter(c::email_lower.eq(lowered))
}

/// The active customer holding an external id.
#[dsl::auto_type]
pub(super) fn active_by_external_id<'a>(app: Uuid, external_id: &'a str) -> _ {
    let active: &'static str = State::Active.as_str();
    c::table
        .filter(c::app_id.eq(app))
        .filter(c::state.eq(active))
        .filter(c::external_id.eq(external_id))
}

/// Archived customers that held an external id, newest first.
#[dsl::auto_type]
pub(super) fn archived_by_external_id<'a>(app: Uuid, external_id: &'a str) -> _ {
    let archived: &'static str = State::Archived.as_str();
    c::table
        .filter(c::app_id.eq(app))
        .filter(c::state.eq(archived))
        .filter(c::external_id.eq(external_id))
        .order((c::create_time.desc(), c::id.desc()))
}

/// The active holder of a provider's id.
#[dsl::auto_type]
pub(super) fn provider_id_holder_query<'a>(app: Uuid, provider: &'a str, id: &'a str) -> _ {
    pids::table
        .filter(pids::app_id.eq(app))
        .filter(pids::provider.eq(provider))
        .filter(pids::provider_customer_id.eq(id))
        .filter(pids::active)
        .select(pids::customer_id)
}

/// The provider-id rows of one customer.
fn provider_ids_of(
    app: AppId,
    id: CustomerId,
) -> Filter<Filter<pids::table, Eq<pids::app_id, Uuid>>, Eq<pids::customer_id, Uuid>> {
    pids::table
        .filter(pids::app_id.eq(app.0))
        .filter(pids::customer_id.eq(id.uuid()))
}

/// The customer of `row`, if any.
fn customer_of(row: Option<CustomerRow>) -> Result<Option<Customer>, Error> {
    row.map(CustomerRow::into_customer).transpose()
}

/// Loads the customer a write names, locking its row until the transaction
/// ends so that the checks and the write see the same row. By external id:
/// the active customer holding it, else the most recently created archived
/// customer that held it.
async fn lock_target(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    begin: &Begin,
    target: &Target,
) -> Result<Customer, Error> {
    let app = ctx.app;
    let row = match target {
        // Begin and locked row in one round trip.
        Target::Id(id) => {
            let row = first_row(
                conn,
                rendered!(
                    customer_by_id(app.0, id.uuid())
                        .select(CustomerRow::as_select())
                        .for_update()
                ),
            );
            let ((), row) = futures_util::try_join!(begin_shared(conn, begin), row)?;
            return found(row);
        }
        Target::ExternalId(external_id) => {
            begin_shared(conn, begin).await?;
            let active = active_by_external_id(app.0, external_id)
                .select(CustomerRow::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?;
            match active {
                Some(row) => Some(row),
                None => archived_by_external_id(app.0, external_id)
                    .select(CustomerRow::as_select())
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?,
            }
        }
    };
    customer_of(row)?.ok_or(Error::NotFound)
}

/// The active customer holding an email, as an id.
async fn email_holder(
    conn: &mut AsyncPgConnection,
    app: AppId,
    email: &str,
) -> Result<Option<CustomerId>, Error> {
    Ok(active_by_email(app.0, email)
        .select(c::id)
        .first::<Uuid>(conn)
        .await
        .optional()?
        .map(CustomerId::from_uuid))
}

/// The active customer holding an external id, as an id.
async fn external_id_holder(
    conn: &mut AsyncPgConnection,
    app: AppId,
    external_id: &str,
) -> Result<Option<CustomerId>, Error> {
    Ok(active_by_external_id(app.0, external_id)
        .select(c::id)
        .first::<Uuid>(conn)
        .await
        .optional()?
        .map(CustomerId::from_uuid))
}

/// Inserts provider id pairs; a pair held by another active customer is
/// ALREADY_EXISTS naming that customer.
async fn insert_provider_ids(
    conn: &mut AsyncPgConnection,
    app: AppId,
    customer: CustomerId,
    pairs: &BTreeMap<String, String>,
) -> Result<(), Error> {
    if pairs.is_empty() {
        return Ok(());
    }
    let inserted: Vec<String> = diesel::insert_into(pids::table)
        .values(NewProviderId::all(app, customer, pairs))
        .on_conflict_do_nothing()
        .returning(pids::provider)
        .get_results(conn)
        .await?;
    if inserted.len() == pairs.len() {
        return Ok(());
    }
    let Some((provider, id)) = pairs.iter().find(|(p, _)| !inserted.contains(p)) else {
        return Err(Error::internal(anyhow::anyhow!(
            "provider ids: insert count mismatch"
        )));
    };
    Err(Error::AlreadyExists {
        key: Key::ProviderId,
        holder: provider_id_holder(conn, app, provider, id).await?,
    })
}

/// The active customer holding a provider's id, if any.
async fn provider_id_holder(
    conn: &mut AsyncPgConnection,
    app: AppId,
    provider: &str,
    id: &str,
) -> Result<Option<CustomerId>, Error> {
    Ok(provider_id_holder_query(app.0, provider, id)
        .first::<Uuid>(conn)
        .await
        .optional()?
        .map(CustomerId::from_uuid))
}

/// Creates a customer, or returns the active customer that already holds the
/// idempotency key (`external_id` if set, else `email`). Returns whether it
/// was created.
///
/// The insert is `ON CONFLICT DO NOTHING` against the partial unique indexes,
/// so concurrent identical creates cannot both insert: the losers wait for
/// the winner's commit, then find its row.
pub async fn create(
    pool: &Pool,
    ctx: &RequestContext,
    fields: &ValidFields,
) -> Result<(Customer, bool), Error> {
    let app = ctx.app;
    // The idempotent hit first, as a read: a repeated create (a retried
    // signup) costs what a GetCustomer costs, one round trip with nothing
    // written. A miss goes on to the insert, which settles races.
    if let Some(holder) = key_holder(pool, ctx, fields).await? {
        return Ok((holder, false));
    }
    let mut conn = TxConnection::new(connect(pool, ctx.deadline).await?);
    for _ in 0..CREATE_ATTEMPTS {
        let id = CustomerId::generate();
        let span = super::transaction_span("create");
        let outcome = write_transaction!(pool, &mut conn, ctx, span, |conn, begin| {
            // Begin and insert in one round trip.
            let mut shared: &AsyncPgConnection = conn;
            let insert = diesel::insert_into(c::table)
                .values(NewCustomer {
                    app_id: app.0,
                    id: id.uuid(),
                    columns: CustomerColumns::new(fields),
                })
                .on_conflict_do_nothing()
                .returning(CustomerRow::as_returning())
                .get_result::<CustomerRow>(&mut shared);
            let ((), inserted) = futures_util::try_join!(begin_shared(conn, begin), async {
                Ok(insert.await.optional()?)
            },)?;
            if let Some(row) = inserted {
                insert_provider_ids(conn, app, id, &fields.provider_ids).await?;
                let created = row.into_customer()?;
                record(conn, ctx, EventType::Created, &created, Vec::new()).await?;
                return Ok(Some((created, true)));
            }
            // Some active customer holds the email or the external id: one
            // that committed after the read above (a concurrent create),
            // or, keyed by external id, another customer holding the email.
            let Some(external_id) = &fields.external_id else {
                let row = active_by_email(app.0, &fields.email)
                    .select(CustomerRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let holder = customer_of(row)?;
                return Ok(holder.map(|c| (c, false)));
            };
            // Keyed by external id: its active holder is the answer,
            // whatever that customer's email is now.
            let row = active_by_external_id(app.0, external_id)
                .select(CustomerRow::as_select())
                .first(conn)
                .await
                .optional()?;
            if let Some(holder) = customer_of(row)? {
                return Ok(Some((holder, false)));
            }
            // Nobody holds the external id, so the email's holder
            // stopped the insert.
            match email_holder(conn, app, &fields.email).await? {
                Some(other) => Err(Error::AlreadyExists {
                    key: Key::Email,
                    holder: Some(other),
                }),
                // The holder was archived meanwhile: try again.
                None => Ok(None),
            }
        })?;
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
    Err(Error::Contention)
}

/// The active customer holding a create's idempotency key (its external id
/// if set, else its email), if any: a read whose `COMMIT` is pipelined like
/// a GetCustomer's.
async fn key_holder(
    pool: &Pool,
    ctx: &RequestContext,
    fields: &ValidFields,
) -> Result<Option<Customer>, Error> {
    // A create runs to completion: nothing calls this read off.
    let cancel = CancellationToken::new();
    let read = match fields.external_id {
        Some(_) => HotRead::CustomerByExternalId,
        None => HotRead::CustomerByEmail,
    };
    read!(pool, ctx, &cancel, |conn, scope, commit| {
        let row = key_holder_read(conn, ctx.app.0, fields);
        let commit = commit.send(conn, read);
        let ((), row, ()) = futures_util::try_join!(scope, row, commit)?;
        customer_of(row)
    })
}

/// A customer's row, as a future to pipeline on a shared connection: it
/// sends its query when first polled. Every caller's query is a unique
/// lookup (the primary key, or an active customer's key), so it carries no
/// `LIMIT`: a `Limit` node is one more plan node for PostgreSQL to set up
/// and run on every call.
// Not an `async fn`: its future's `Send` would have to be proved for every
// lifetime of the query's borrows, which the callers' spawned futures cannot.
#[allow(clippy::manual_async_fn)]
fn first_row<'c, R>(
    conn: &'c AsyncPgConnection,
    row: R,
) -> impl Future<Output = Result<Option<CustomerRow>, Error>> + Send + 'c
where
    R: diesel_async::methods::LoadQuery<'c, &'c AsyncPgConnection, CustomerRow> + Send + 'c,
{
    async move {
        let mut shared = conn;
        Ok(row
            .get_result::<CustomerRow>(&mut shared)
            .await
            .optional()?)
    }
}

/// The query that finds the active holder of a create's idempotency key
/// (its external id if set, else its email; see [`first_row`]).
fn key_holder_read<'c>(
    conn: &'c AsyncPgConnection,
    app: Uuid,
    fields: &'c ValidFields,
) -> impl Future<Output = Result<Option<CustomerRow>, Error>> + Send + 'c {
    use futures_util::future::Either::{Left, Right};
    match &fields.external_id {
        Some(external_id) => Left(by_external_id_read(conn, app, external_id)),
        None => Right(first_row(
            conn,
            rendered!(active_by_email(app, &fields.email).select(CustomerRow::as_select())),
        )),
    }
}

/// GetCustomer by id's query (see [`first_row`]).
fn by_id_read(
    conn: &AsyncPgConnection,
    app: Uuid,
    id: Uuid,
) -> impl Future<Output = Result<Option<CustomerRow>, Error>> + Send + '_ {
    first_row(
        conn,
        rendered!(customer_by_id(app, id).select(CustomerRow::as_select())),
    )
}

/// GetCustomer by external id's query (see [`first_row`]).
fn by_external_id_read<'c>(
    conn: &'c AsyncPgConnection,
    app: Uuid,
    external_id: &'c str,
) -> impl Future<Output = Result<Option<CustomerRow>, Error>> + Send + 'c {
    first_row(
        conn,
        rendered!(active_by_external_id(app, external_id).select(CustomerRow::as_select())),
    )
}

/// Reads one customer. `cancel` calls the read off (see [`cancellable`]).
/// By id or external id, the whole read is one round trip: the scope, the
/// row (its provider ids in it) and the `COMMIT`, pipelined.
pub async fn get(
    pool: &Pool,
    ctx: &RequestContext,
    lookup: &Lookup,
    cancel: &CancellationToken,
) -> Result<Customer, Error> {
    let app = ctx.app;
    read!(pool, ctx, cancel, |conn, scope, commit| {
        let row = match lookup {
            Lookup::Id(id) => by_id_read(conn, app.0, id.uuid()),
            Lookup::ExternalId(external_id) => {
                let row = by_external_id_read(conn, app.0, external_id);
                let commit = commit.send(conn, HotRead::CustomerByExternalId);
                let ((), row, ()) = futures_util::try_join!(scope, row, commit)?;
                return found(row);
            }
            Lookup::ProviderId { provider, id } => {
                scope.await?;
                let holder = provider_id_holder(conn, app, provider, id)
                    .await?
                    .ok_or(Error::NotFound)?;
                let row = customer_by_id(app.0, holder.uuid())
                    .select(CustomerRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                return customer_of(row)?.ok_or(Error::NotFound);
            }
        };
        let commit = commit.send(conn, HotRead::CustomerById);
        let ((), row, ()) = futures_util::try_join!(scope, row, commit)?;
        found(row)
    })
}

/// The customer of a row read, if there was a row.
fn found(row: Option<CustomerRow>) -> Result<Customer, Error> {
    customer_of(row)?.ok_or(Error::NotFound)
}

/// A write to an existing customer.
#[derive(Debug, Clone, Copy)]
enum Write<'a> {
    Update(&'a UpdateCustomer),
    Archive,
    Delete,
}

/// What a write finds once it holds the customer's row.
enum Opened {
    /// The write goes ahead from this customer.
    Proceed(Customer),
    /// The customer is already where the write would take it (a retried
    /// archive or delete): it is the answer, unchanged.
    AlreadyDone(Customer),
}

/// The opening of every write to an existing customer: scope the
/// transaction and lock the customer's row (pipelined), then check, in this
/// order, (1) its state, then (2) the caller's etag.
///
/// State comes first so that a retried archive or delete, whose etag went
/// stale through its own first attempt, returns the customer unchanged, and
/// so that every RPC answers a stale request about an archived or deleted
/// customer the same way (FAILED_PRECONDITION, not ABORTED).
async fn open_write(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    begin: &Begin,
    target: &Target,
    etag: Option<&str>,
    write: Write<'_>,
) -> Result<Opened, Error> {
    let current = lock_target(conn, ctx, begin, target).await?;
    match (write, current.state) {
        (_, State::Active) | (Write::Delete, State::Archived) => {}
        (Write::Archive, State::Archived) | (Write::Delete, State::Deleted) => {
            return Ok(Opened::AlreadyDone(current));
        }
        (_, State::Archived) => return Err(Error::Archived),
        (_, State::Deleted) => return Err(Error::Deleted),
    }
    if !current.etag_matches(etag) {
        return Err(Error::EtagMismatch);
    }
    Ok(Opened::Proceed(current))
}

/// How often a write retries after a unique violation whose holder
/// committed during its transaction, so that the retry can name it.
const WRITE_ATTEMPTS: usize = 3;

/// What a write to an existing customer left.
#[derive(Debug)]
pub struct Written {
    pub customer: Customer,
    /// Whether it changed anything (and so recorded an event); a retried
    /// archive or delete, or an update that changes nothing, did not.
    pub changed: bool,
}

impl Written {
    fn changed(customer: Customer) -> Self {
        Self {
            customer,
            changed: true,
        }
    }

    fn unchanged(customer: Customer) -> Self {
        Self {
            customer,
            changed: false,
        }
    }
}

/// The one path of every write to an existing customer (Update, Archive,
/// Delete): a pooled connection, a transaction scoped to the call, the
/// customer's row locked and its state then etag checked ([`open_write`]),
/// then the write itself. A customer already where the write would take it
/// is returned unchanged.
async fn write_existing(
    pool: &Pool,
    ctx: &RequestContext,
    target: &Target,
    etag: Option<&str>,
    write: Write<'_>,
) -> Result<Written, Error> {
    let mut conn = TxConnection::new(connect(pool, ctx.deadline).await?);
    let mut attempt = 1;
    loop {
        let span = super::transaction_span(match write {
            Write::Update(_) => "update",
            Write::Archive => "archive",
            Write::Delete => "delete",
        });
        let result = write_transaction!(pool, &mut conn, ctx, span, |conn, begin| {
            let current = match open_write(conn, ctx, begin, target, etag, write).await? {
                Opened::Proceed(current) => current,
                Opened::AlreadyDone(current) => return Ok(Written::unchanged(current)),
            };
            match write {
                Write::Update(command) => update_row(conn, ctx, current, command).await,
                Write::Archive => archive_row(conn, ctx, current).await.map(Written::changed),
                Write::Delete => delete_row(conn, ctx, current).await.map(Written::changed),
            }
        });
        if conn.in_transaction {
            // Lost (its end failed): no retry on it.
            return result;
        }
        match result {
            // A key taken by a transaction that committed after our check:
            // the next attempt's check sees, and names, its holder.
            Err(Error::AlreadyExists { holder: None, .. }) if attempt < WRITE_ATTEMPTS => {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Applies an update's patch to an active customer.
pub async fn update(
    pool: &Pool,
    ctx: &RequestContext,
    command: &UpdateCustomer,
) -> Result<Written, Error> {
    let etag = command.etag.as_deref();
    write_existing(pool, ctx, &command.target, etag, Write::Update(command)).await
}

/// Archives an active customer: its data stays, its keys are released.
pub async fn archive(
    pool: &Pool,
    ctx: &RequestContext,
    command: &ChangeState,
) -> Result<Written, Error> {
    let etag = command.etag.as_deref();
    write_existing(pool, ctx, &command.target, etag, Write::Archive).await
}

/// Erases a customer's personal data, leaving a tombstone.
pub async fn delete(
    pool: &Pool,
    ctx: &RequestContext,
    command: &ChangeState,
) -> Result<Written, Error> {
    let etag = command.etag.as_deref();
    write_existing(pool, ctx, &command.target, etag, Write::Delete).await
}

/// Records a change as the transaction's last statement (see
/// [`events::append`]).
async fn record(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    kind: EventType,
    customer: &Customer,
    changed_fields: Vec<String>,
) -> Result<(), Error> {
    let event = NewEvent {
        kind,
        customer,
        changed_fields,
    };
    events::append(conn, ctx, event).await
}

async fn update_row(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    current: Customer,
    command: &UpdateCustomer,
) -> Result<Written, Error> {
    let (app, id) = (ctx.app, current.id);
    let old = current.fields.clone();
    let new = command.patch.apply(old.clone())?;
    if *new == old {
        return Ok(Written::unchanged(current));
    }

    // Name the holder of a taken key; the unique indexes still decide.
    if !new.email.eq_ignore_ascii_case(&old.email)
        && let Some(holder) = email_holder(conn, app, &new.email).await?
        && holder != id
    {
        return Err(Error::AlreadyExists {
            key: Key::Email,
            holder: Some(holder),
        });
    }
    if let Some(external_id) = &new.external_id
        && new.external_id != old.external_id
        && let Some(holder) = external_id_holder(conn, app, external_id).await?
    {
        return Err(Error::AlreadyExists {
            key: Key::ExternalId,
            holder: Some(holder),
        });
    }

    let row = Cached(
        diesel::update(c::table.find((app.0, id.uuid())))
            .set((
                CustomerColumns::new(&new),
                c::revision.eq(c::revision + 1),
                c::update_time.eq(now),
            ))
            .returning(CustomerRow::as_returning()),
    )
    .get_result(conn)
    .await?;

    if new.provider_ids != old.provider_ids {
        let gone: Vec<&String> = old
            .provider_ids
            .iter()
            .filter(|(p, v)| new.provider_ids.get(*p) != Some(*v))
            .map(|(p, _)| p)
            .collect();
        diesel::delete(provider_ids_of(app, id).filter(pids::provider.eq_any(gone)))
            .execute(conn)
            .await?;
        let added: BTreeMap<String, String> = new
            .provider_ids
            .iter()
            .filter(|(p, v)| old.provider_ids.get(*p) != Some(*v))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        insert_provider_ids(conn, app, id, &added).await?;
    }
    let updated = row.into_customer()?;
    let changed = changed_fields(&old, &new);
    record(conn, ctx, EventType::Updated, &updated, changed).await?;
    Ok(Written::changed(updated))
}

async fn archive_row(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    current: Customer,
) -> Result<Customer, Error> {
    let (app, id) = (ctx.app, current.id);
    let row = Cached(
        diesel::update(c::table.find((app.0, id.uuid())))
            .set((
                c::state.eq(State::Archived.as_str()),
                c::archive_time.eq(now),
                c::update_time.eq(now),
                c::revision.eq(c::revision + 1),
            ))
            .returning(CustomerRow::as_returning()),
    )
    .get_result(conn)
    .await?;
    Cached(diesel::update(provider_ids_of(app, id)).set(pids::active.eq(false)))
        .execute(conn)
        .await?;
    let archived = row.into_customer()?;
    record(conn, ctx, EventType::Archived, &archived, Vec::new()).await?;
    Ok(archived)
}

async fn delete_row(
    conn: &mut AsyncPgConnection,
    ctx: &RequestContext,
    current: Customer,
) -> Result<Customer, Error> {
    let (app, id) = (ctx.app, current.id);
    diesel::delete(provider_ids_of(app, id))
        .execute(conn)
        .await?;
    let row = Cached(
        diesel::update(c::table.find((app.0, id.uuid())))
            .set((
                CustomerColumns::erased(),
                c::state.eq(State::Deleted.as_str()),
                c::delete_time.eq(now),
                c::update_time.eq(now),
                c::revision.eq(c::revision + 1),
            ))
            .returning(CustomerRow::as_returning()),
    )
    .get_result(conn)
    .await?;
    // The customer's past events lose its personal data in this same
    // transaction; the deleted event carries only the tombstone.
    events::erase_history(conn, app, id).await?;
    let tombstone = row.into_customer()?;
    record(conn, ctx, EventType::Deleted, &tombstone, Vec::new()).await?;
    Ok(tombstone)
}

/// A position in the (create_time, id) order of a listing.
pub type Position = (DateTime<Utc>, Uuid);

/// Where a customer stands in the listing order: the resume point of a
/// stream that last received it.
pub async fn position_of(
    pool: &Pool,
    ctx: &RequestContext,
    id: CustomerId,
    cancel: &CancellationToken,
) -> Result<Position, Error> {
    read!(pool, ctx, cancel, |conn| {
        Ok(customer_by_id(ctx.app.0, id.uuid())
            .select((c::create_time, c::id))
            .first(conn)
            .await?)
    })
}

/// Escapes LIKE's wildcards so that a query matches literally.
pub(super) fn like_pattern(query: &str) -> String {
    let mut pattern = String::with_capacity(query.len() + 2);
    pattern.push('%');
    for ch in query.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

/// One keyset batch of a listing: at most `limit` customers strictly after
/// `after` in the filter's order. A short read-only transaction of its own:
/// nothing is held between batches. `cancel` calls the read off (see
/// [`cancellable`]). Each customer is read in place into a `T` (see
/// [`Listed`]): an owned [`Customer`], or for the gRPC stream its message,
/// encoded straight from the row.
pub async fn list_batch<T: FromCustomerRef>(
    pool: &Pool,
    ctx: &RequestContext,
    filter: &ListFilter,
    after: Option<Position>,
    limit: i64,
    cancel: &CancellationToken,
) -> Result<Vec<T>, Error> {
    let query = if filter.is_unfiltered() {
        unfiltered_page(
            ctx.app,
            filter.include_archived,
            filter.order == Order::Descending,
            after,
            limit,
        )
    } else {
        filtered_page(pool, ctx, filter, after, limit, cancel).await?
    };
    // The scope and the page in one round trip, then `COMMIT`.
    read!(pool, ctx, cancel, |conn, scope| {
        let mut shared: &AsyncPgConnection = conn;
        let page = query.load::<Listed<T>>(&mut shared);
        let ((), rows) = futures_util::try_join!(scope, async { Ok(page.await?) })?;
        Ok(rows.into_iter().map(|Listed(item)| item).collect())
    })
}

/// A listing's page, as one prepared statement of a few forms.
type Page<'f> = Cached<BoxedSqlQuery<'f, Pg, SqlQuery>>;

/// The page of a listing with filters: through the page function (see its
/// migrations), which builds the keyset query for these filters and runs
/// it for the transaction's app: the trigram and jsonb indexes serve it,
/// which they cannot under row-level security.
async fn filtered_page<'f>(
    pool: &Pool,
    ctx: &RequestContext,
    filter: &'f ListFilter,
    after: Option<Position>,
    limit: i64,
    cancel: &CancellationToken,
) -> Result<Page<'f>, Error> {
    use super::search::Column;
    use sql_types::{Array, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    let metadata = (!filter.metadata.is_empty())
        .then(|| serde_json::to_value(&filter.metadata))
        .transpose()
        .map_err(Error::internal)?;
    // A query's rarest windows for the trigram indexes (see `search`).
    let (email_windows, name_windows) = match &filter.query {
        Some(query) => {
            let trigrams = pool.common_trigrams(ctx, cancel).await;
            (
                Some(trigrams.windows(Column::Email, query)),
                Some(trigrams.windows(Column::Name, query)),
            )
        }
        None => (None, None),
    };
    // The page function (see its migrations) builds the keyset query for
    // these filters and runs it for the transaction's app: the trigram and
    // jsonb indexes serve it, which they cannot under row-level security.
    Ok(Cached(
        diesel::sql_query(
            "SELECT * FROM customers_page($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .into_boxed()
        .bind::<Nullable<Text>, _>(filter.email.as_deref())
        .bind::<Nullable<Text>, _>(filter.query.as_deref().map(like_pattern))
        .bind::<Nullable<Timestamptz>, _>(filter.created_after)
        .bind::<Nullable<Timestamptz>, _>(filter.created_before)
        .bind::<Nullable<Jsonb>, _>(metadata)
        .bind::<Bool, _>(filter.include_archived)
        .bind::<Bool, _>(filter.order == Order::Descending)
        .bind::<Nullable<Timestamptz>, _>(after.map(|(time, _)| time))
        .bind::<Nullable<SqlUuid>, _>(after.map(|(_, id)| id))
        .bind::<Integer, _>(i32::try_from(limit).unwrap_or(i32::MAX))
        .bind::<Nullable<Array<Text>>, _>(email_windows)
        .bind::<Nullable<Array<Text>>, _>(name_windows),
    ))
}

/// The page of a listing filtered by state alone (the default request): a
/// plain keyset query on `(app_id, create_time, id)`, run as the service's
/// role (row-level security applies; every operator in it is leakproof, so
/// the index serves it), which spares PostgreSQL the page function's work
/// per row (its `RETURN QUERY` stores every row before sending it). One of
/// eight statements, each prepared once per connection.
pub(super) fn unfiltered_page(
    app: AppId,
    include_archived: bool,
    descending: bool,
    after: Option<Position>,
    limit: i64,
) -> Page<'static> {
    use sql_types::{Integer, Timestamptz, Uuid as SqlUuid};
    let states = if include_archived {
        "state <> 'deleted'"
    } else {
        "state = 'active'"
    };
    let (beyond, order) = if descending {
        ("<", "create_time DESC, id DESC")
    } else {
        (">", "create_time, id")
    };
    let (position, limit_at) = match after {
        Some(_) => (format!(" AND (create_time, id) {beyond} ($2, $3)"), 4),
        None => (String::new(), 2),
    };
    let sql = format!(
        "SELECT * FROM customers WHERE app_id = $1 AND {states}{position} \
         ORDER BY {order} LIMIT ${limit_at}"
    );
    let mut query = diesel::sql_query(sql)
        .into_boxed()
        .bind::<SqlUuid, _>(app.0);
    if let Some((time, id)) = after {
        query = query.bind::<Timestamptz, _>(time).bind::<SqlUuid, _>(id);
    }
    Cached(query.bind::<Integer, _>(i32::try_from(limit).unwrap_or(i32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
    }
}
