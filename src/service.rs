//! The gRPC handlers of `customers.v1.CustomerService`. They translate
//! requests into domain calls and results back; validation lives in
//! `domain`, SQL in `storage`, status codes in `error`.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use futures_util::Stream;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    context::RequestContext,
    conversions,
    domain::{self, AppId, CustomerFields, ListFilter, Patch},
    error::Error,
    pb::{self, customer_service_server::CustomerService},
    storage::{
        Pool,
        customers::{self as store, Lookup, Position},
    },
};

/// How ListCustomers reads.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Rows per keyset query; also the depth of the channel to the client.
    pub batch_size: usize,
    /// Streams one app may have open at once in this process.
    pub max_per_app: Option<NonZeroU32>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_per_app: NonZeroU32::new(16),
        }
    }
}

/// Counters of ListCustomers streams in this process.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Streams whose reader task is running.
    pub open: AtomicU64,
    /// Keyset batches read, over all streams.
    pub batches: AtomicU64,
    /// Customers sent, over all streams.
    pub messages: AtomicU64,
}

/// Open streams per app, to hold each app to its limit.
type StreamsPerApp = Arc<Mutex<HashMap<AppId, u32>>>;

/// A stream counted as open (overall and for its app) while it lives.
struct OpenStream {
    stats: Arc<StreamStats>,
    per_app: StreamsPerApp,
    app: AppId,
}

impl OpenStream {
    /// Counts a new stream of `app`, unless the app is at its limit.
    fn open(api: &CustomerApi, app: AppId) -> Result<Self, Error> {
        let mut per_app = api.per_app.lock().unwrap_or_else(|e| e.into_inner());
        let open = per_app.entry(app).or_default();
        if api.stream.max_per_app.is_some_and(|max| *open >= max.get()) {
            return Err(Error::TooManyStreams);
        }
        *open += 1;
        api.stats.open.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            stats: api.stats.clone(),
            per_app: api.per_app.clone(),
            app,
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_app = self.per_app.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = per_app.get_mut(&self.app) {
            *open -= 1;
            if *open == 0 {
                per_app.remove(&self.app);
            }
        }
    }
}

/// The service's state: nothing but shared handles, so any replica can serve
/// any call.
#[derive(Clone)]
pub struct CustomerApi {
    pool: Pool,
    stream: StreamOptions,
    /// Cancelled when the server shuts down: open streams end.
    shutdown: CancellationToken,
    stats: Arc<StreamStats>,
    per_app: StreamsPerApp,
}

impl CustomerApi {
    pub fn new(pool: Pool, stream: StreamOptions, shutdown: CancellationToken) -> Self {
        Self {
            pool,
            stream,
            shutdown,
            stats: Arc::default(),
            per_app: Arc::default(),
        }
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
}

/// Runs a write in its own task, so that a client that goes away cannot
/// cancel it halfway (a cancelled transaction future leaves its connection
/// in an unknown state).
async fn to_completion<T: Send + 'static>(
    write: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(write).await {
        Ok(result) => result.map_err(Status::from),
        Err(e) => Err(Error::Internal(format!("write task failed: {e}")).into()),
    }
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| Error::invalid(field, "is required").into())
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let ctx = RequestContext::of(&request)?;
        let customer = required("customer", request.into_inner().customer)?;
        let fields = CustomerFields::from(customer).validate("customer.")?;
        let pool = self.pool.clone();
        let (customer, created) =
            to_completion(async move { store::create(&pool, &ctx, &fields).await }).await?;
        Ok(Response::new(pb::CreateCustomerResponse {
            customer: Some(customer.into()),
            created,
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        use pb::get_customer_request::Lookup as By;
        let ctx = RequestContext::of(&request)?;
        let lookup = match request.into_inner().lookup {
            Some(By::Id(id)) => Lookup::Id(domain::parse_id("id", &id)?),
            Some(By::ExternalId(id)) if !id.is_empty() => Lookup::ExternalId(id),
            Some(By::ExternalId(_)) => return Err(Error::invalid("external_id", "is empty").into()),
            Some(By::ProviderId(p)) => {
                let mut v = domain::Violations::new("provider_id.");
                if p.provider.is_empty() {
                    v.add("provider", "is required");
                }
                if p.id.is_empty() {
                    v.add("id", "is required");
                }
                v.into_result(Lookup::ProviderId {
                    provider: p.provider,
                    id: p.id,
                })?
            }
            None => {
                return Err(
                    Error::invalid("lookup", "set one of id, external_id or provider_id").into(),
                );
            }
        };
        let customer = store::get(&self.pool, &ctx, &lookup).await?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(customer.into()),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::UpdateCustomerResponse>, Status> {
        let ctx = RequestContext::of(&request)?;
        let request = request.into_inner();
        let customer = required("customer", request.customer)?;
        let id = domain::parse_id("customer.id", &customer.id)?;
        let etag = conversions::etag(&customer.etag).map(str::to_owned);
        let mask = request.update_mask.map(|m| m.paths);
        let patch = Patch::new(mask.as_deref(), customer.into())?;
        if patch.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "names no field, and the customer sets none to write",
            )
            .into());
        }
        let pool = self.pool.clone();
        let customer =
            to_completion(
                async move { store::update(&pool, &ctx, id, etag.as_deref(), &patch).await },
            )
            .await?;
        Ok(Response::new(pb::UpdateCustomerResponse {
            customer: Some(customer.into()),
        }))
    }

    type ListCustomersStream = CustomerStream;

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<Self::ListCustomersStream>, Status> {
        let ctx = RequestContext::of(&request)?;
        let filter = ListFilter::try_from(request.into_inner())?;
        let start = match filter.resume_after {
            Some(id) => match store::position_of(&self.pool, &ctx, id).await {
                Ok(position) => Some(position),
                Err(Error::NotFound) => {
                    return Err(
                        Error::invalid("resume_after", "names no customer of this app").into(),
                    );
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let open = OpenStream::open(self, ctx.app)?;
        let (tx, rx) = mpsc::channel(self.stream.batch_size);
        tokio::spawn(stream_customers(self.clone(), ctx, filter, start, tx, open));
        Ok(Response::new(CustomerStream {
            rx,
            stop: Box::pin(stream_stop(self.shutdown.clone(), ctx.deadline)),
            done: false,
        }))
    }

    async fn archive_customer(
        &self,
        request: Request<pb::ArchiveCustomerRequest>,
    ) -> Result<Response<pb::ArchiveCustomerResponse>, Status> {
        let ctx = RequestContext::of(&request)?;
        let request = request.into_inner();
        let id = domain::parse_id("id", &request.id)?;
        let pool = self.pool.clone();
        let customer = to_completion(async move {
            store::archive(&pool, &ctx, id, conversions::etag(&request.etag)).await
        })
        .await?;
        Ok(Response::new(pb::ArchiveCustomerResponse {
            customer: Some(customer.into()),
        }))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let ctx = RequestContext::of(&request)?;
        let request = request.into_inner();
        let id = domain::parse_id("id", &request.id)?;
        let pool = self.pool.clone();
        let customer = to_completion(async move {
            store::delete(&pool, &ctx, id, conversions::etag(&request.etag)).await
        })
        .await?;
        Ok(Response::new(pb::DeleteCustomerResponse {
            customer: Some(customer.into()),
        }))
    }
}

type StreamItem = Result<pb::ListCustomersResponse, Status>;
type StreamSender = mpsc::Sender<StreamItem>;

/// The response side of ListCustomers: what the reader task sends, until the
/// server shuts down or the deadline passes. Then it ends at once with that
/// error (UNAVAILABLE / SHUTTING_DOWN, or DEADLINE_EXCEEDED), so that the
/// client knows the listing is cut and can resume; merely closing the
/// channel would end the call with OK and make a cut listing look complete.
pub struct CustomerStream {
    rx: mpsc::Receiver<StreamItem>,
    stop: Pin<Box<dyn Future<Output = Error> + Send>>,
    done: bool,
}

/// Resolves to the error that cuts a stream short.
async fn stream_stop(shutdown: CancellationToken, deadline: Option<Instant>) -> Error {
    let expired = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => Error::ShuttingDown,
        _ = expired => Error::DeadlineExceeded,
    }
}

impl Stream for CustomerStream {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(error) = self.stop.as_mut().poll(cx) {
            self.done = true;
            return Poll::Ready(Some(Err(error.into())));
        }
        let item = ready!(self.rx.poll_recv(cx));
        self.done = item.is_none();
        Poll::Ready(item)
    }
}

/// Feeds a ListCustomers stream: one keyset query per batch, each sent
/// through the bounded channel before the next is read, so memory stays at
/// about two batches and a slow client slows the reads down. Stops as soon
/// as the receiving side is gone: the client went away, or the stream was
/// cut by shutdown or deadline (queries are bounded by the deadline too).
async fn stream_customers(
    api: CustomerApi,
    ctx: RequestContext,
    filter: ListFilter,
    mut after: Option<Position>,
    tx: StreamSender,
    _open: OpenStream,
) {
    let batch_size = api.stream.batch_size.max(1) as u64;
    let mut remaining = filter.limit;
    loop {
        let want = remaining.map_or(batch_size, |r| r.min(batch_size));
        let batch = tokio::select! {
            _ = tx.closed() => return,
            _ = api.shutdown.cancelled() => return,
            batch = store::list_batch(&api.pool, &ctx, &filter, after, want as i64) => batch,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        api.stats.batches.fetch_add(1, Ordering::Relaxed);
        let complete = (batch.len() as u64) < want;
        for customer in batch {
            after = Some((customer.create_time, customer.id.uuid()));
            let message = pb::ListCustomersResponse {
                customer: Some(customer.into()),
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            api.stats.messages.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = &mut remaining {
            *r -= want.min(*r);
            if *r == 0 {
                return;
            }
        }
        if complete {
            return;
        }
    }
}
