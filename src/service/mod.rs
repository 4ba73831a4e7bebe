//! The gRPC handlers of `customers.v1.CustomerService`. Each one: the
//! call's context (app, deadline), the parse step (`wire::requests`: the
//! request becomes a typed command, or INVALID_ARGUMENT), the storage call,
//! the conversion back. Statuses are chosen in `wire::status`.

mod feed;
mod stream;
mod watch;

use std::{future::Future, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use feed::{EventHub, EventOptions, EventStats};
pub use stream::{CustomerStream, StreamOptions, StreamStats};
pub use watch::EventStream;

use crate::{
    context::RequestContext,
    domain::{
        ChangeState, CreateCustomer, GetCustomer, ListCustomers, UpdateCustomer, WatchEvents,
    },
    error::Error,
    pb::{self, customer_service_server::CustomerService},
    storage::{Pool, customers as store},
};
use stream::StreamsPerApp;

/// The service's state: nothing but shared handles, so any replica can serve
/// any call.
#[derive(Clone)]
pub struct CustomerApi {
    pool: Pool,
    stream: StreamOptions,
    /// `--statement-timeout`: the most any statement may take.
    statement_limit: Duration,
    /// Cancelled when the server shuts down: open streams end.
    shutdown: CancellationToken,
    stats: Arc<StreamStats>,
    per_app: StreamsPerApp,
    /// Change events: this replica's feeds, notifications and pruning.
    events: EventHub,
    watch_stats: Arc<StreamStats>,
    watches_per_app: StreamsPerApp,
}

impl CustomerApi {
    pub fn new(
        pool: Pool,
        stream: StreamOptions,
        statement_limit: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            events: EventHub::new(
                pool.clone(),
                EventOptions::default(),
                statement_limit,
                shutdown.clone(),
            ),
            pool,
            stream,
            statement_limit,
            shutdown,
            stats: Arc::default(),
            per_app: Arc::default(),
            watch_stats: Arc::default(),
            watches_per_app: Arc::default(),
        }
    }

    /// The same API with change events delivered, kept and pruned as
    /// `options` say.
    pub fn with_events(mut self, options: EventOptions) -> Self {
        self.events = EventHub::new(
            self.pool.clone(),
            options,
            self.statement_limit,
            self.shutdown.clone(),
        );
        self
    }

    pub fn events(&self) -> &EventHub {
        &self.events
    }

    pub fn watch_stats(&self) -> Arc<StreamStats> {
        self.watch_stats.clone()
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn stream_stats(&self) -> Arc<StreamStats> {
        self.stats.clone()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// After a write committed: watches learn of it only if it changed
    /// something (a no-op wrote no event, and wakes nobody).
    pub fn wrote(&self, ctx: &RequestContext, written: &store::Written) {
        if written.changed {
            self.events.changed(ctx.app);
        }
    }

    /// `--statement-timeout`: the most any statement may take.
    pub fn statement_limit(&self) -> Duration {
        self.statement_limit
    }

    fn context<T>(&self, request: &Request<T>) -> Result<RequestContext, Error> {
        RequestContext::of(request, self.statement_limit)
    }
}

/// Runs a write in its own task, so that a client that goes away cannot
/// cancel it halfway (a cancelled transaction future leaves its connection
/// in an unknown state).
fn to_completion<T: Send + 'static>(
    write: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> impl Future<Output = Result<T, Status>> + Send {
    let task = run_to_completion(write);
    async move { task.await.map_err(Status::from) }
}

/// [`to_completion`], keeping the typed error (the console's pages choose
/// their own HTTP statuses).
///
/// The task is spawned at once, its future boxed, so that the call's own
/// future holds only the task's handle: a transaction's future takes
/// kilobytes (about 12 for a read), and each future that held it by value
/// would copy it again, to the tune of a tenth of a read's CPU.
pub fn run_to_completion<T: Send + 'static>(
    write: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> impl Future<Output = Result<T, Error>> + Send {
    // In the call's span, so that its database spans are the call's children.
    let task = tokio::spawn(tracing::Instrument::instrument(
        Box::pin(write),
        tracing::Span::current(),
    ));
    async move {
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::internal(e)),
        }
    }
}

/// Runs a read in its own task. If the caller goes away (the returned
/// future is dropped), the read's token fires: the task cancels the query
/// in PostgreSQL and waits for it to stop before its connection goes back to
/// the pool (see [`crate::storage::cancellable`]).
fn read_to_end<T, Fut>(
    read: impl FnOnce(CancellationToken) -> Fut,
) -> impl Future<Output = Result<T, Status>> + Send
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let cancel_on_drop = cancel.clone().drop_guard();
    let task = to_completion(read(cancel));
    async move {
        let _cancel_on_drop = cancel_on_drop;
        task.await
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let ctx = self.context(&request)?;
        let command = CreateCustomer::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let (customer, created) =
            to_completion(async move { store::create(&pool, &ctx, &command.fields).await }).await?;
        if created {
            self.events.changed(ctx.app);
        }
        Ok(Response::new(pb::CreateCustomerResponse {
            customer: Some(customer.into()),
            created,
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let ctx = self.context(&request)?;
        let command = GetCustomer::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let customer = read_to_end(async move |cancel| {
            store::get(&pool, &ctx, &command.lookup, &cancel).await
        })
        .await?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(customer.into()),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::UpdateCustomerResponse>, Status> {
        let ctx = self.context(&request)?;
        let command = UpdateCustomer::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let written =
            to_completion(async move { store::update(&pool, &ctx, &command).await }).await?;
        self.wrote(&ctx, &written);
        Ok(Response::new(pb::UpdateCustomerResponse {
            customer: Some(written.customer.into()),
        }))
    }

    type ListCustomersStream = CustomerStream;

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<Self::ListCustomersStream>, Status> {
        let ctx = self.context(&request)?;
        let ListCustomers { filter } = ListCustomers::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let start = match filter.resume_after {
            Some(id) => match read_to_end(async move |cancel| {
                store::position_of(&pool, &ctx, id, &cancel).await
            })
            .await
            {
                Ok(position) => Some(position),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Err(
                        Error::invalid("resume_after", "names no customer of this app").into(),
                    );
                }
                Err(status) => return Err(status),
            },
            None => None,
        };
        Ok(Response::new(stream::start(self, ctx, filter, start)?))
    }

    type WatchCustomerEventsStream = EventStream;

    async fn watch_customer_events(
        &self,
        request: Request<pb::WatchCustomerEventsRequest>,
    ) -> Result<Response<Self::WatchCustomerEventsStream>, Status> {
        let ctx = self.context(&request)?;
        let command = WatchEvents::try_from(request.into_inner())?;
        Ok(Response::new(watch::start(self, ctx, command).await?))
    }

    async fn archive_customer(
        &self,
        request: Request<pb::ArchiveCustomerRequest>,
    ) -> Result<Response<pb::ArchiveCustomerResponse>, Status> {
        let ctx = self.context(&request)?;
        let command = ChangeState::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let written =
            to_completion(async move { store::archive(&pool, &ctx, &command).await }).await?;
        self.wrote(&ctx, &written);
        Ok(Response::new(pb::ArchiveCustomerResponse {
            customer: Some(written.customer.into()),
        }))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let ctx = self.context(&request)?;
        let command = ChangeState::try_from(request.into_inner())?;
        let pool = self.pool.clone();
        let written =
            to_completion(async move { store::delete(&pool, &ctx, &command).await }).await?;
        self.wrote(&ctx, &written);
        Ok(Response::new(pb::DeleteCustomerResponse {
            customer: Some(written.customer.into()),
        }))
    }
}
