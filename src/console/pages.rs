//! The console's handlers: each parses its path, query or form, calls
//! storage as the gRPC API does (scoped to the app in the path), and renders
//! a view. Writes answer with a redirect to the page they changed (so a
//! reload does not repeat them); a write that cannot be done renders the
//! page again with the reason, under the fitting HTTP status.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, NaiveDate, Utc};
use cookie::{Cookie, SameSite};
use maud::Markup;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    Console, Session, cookie_value, over_tls, same_origin,
    session::{LOGIN_COOKIE, SESSION_COOKIE},
    views::{self, Chrome, Flash},
};
use crate::{
    admin,
    context::RequestContext,
    domain::{
        AppId, ChangeState, Customer, CustomerId, FieldViolation, Invalid, KeyId, ListFilter,
        Lookup, Order, Target, UpdateCustomer,
    },
    error::Error,
    pb,
    service::run_to_completion,
    storage::{
        apps::{self, App},
        customers::{self as store, Written},
        events,
    },
};

/// How long a page's database work may take.
const PAGE_DEADLINE: Duration = Duration::from_secs(10);
/// Most events a detail page shows.
const HISTORY_LIMIT: i64 = 50;

/// Why a page cannot be shown.
pub enum PageError {
    NotFound,
    Invalid(Vec<FieldViolation>),
    Unavailable,
    Internal(Error),
}

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound => PageError::NotFound,
            Error::InvalidArgument(invalid) => PageError::Invalid(invalid.violations),
            Error::Unavailable(_) | Error::DeadlineExceeded | Error::ShuttingDown => {
                PageError::Unavailable
            }
            e => PageError::Internal(e),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
            PageError::Invalid(violations) => (
                StatusCode::BAD_REQUEST,
                violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            PageError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable; try again shortly.".to_owned(),
            ),
            PageError::Internal(e) => {
                tracing::error!(error = %e, "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on our side; it was logged.".to_owned(),
                )
            }
        };
        (status, views::message_page(status, &message)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

pub async fn not_found() -> Response {
    PageError::NotFound.into_response()
}

/// 403 with a reason.
pub fn refuse(message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        views::message_page(StatusCode::FORBIDDEN, message),
    )
        .into_response()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

// --- Signing in and out ---

#[derive(Deserialize)]
pub struct LoginQuery {
    token: Option<String>,
}

/// The login page; `?token=` (the start-up log's link) signs in at once.
pub async fn login_form(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    match query.token {
        Some(token) if console.sessions().token_matches(&token) => {
            signed_in_response(&console, &headers)
        }
        Some(_) => login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid.")),
        None => login_page(StatusCode::OK, None),
    }
}

/// The login form, with a fresh double-submit value in a cookie and in the
/// form: a post without both is no form of ours.
fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let nonce = super::generate_token();
    let cookie = Cookie::build((LOGIN_COOKIE, nonce.clone()))
        .path("/admin/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::hours(1))
        .build();
    (
        status,
        [(header::SET_COOKIE, cookie.to_string())],
        views::login(&nonce, error),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

pub async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let nonce = cookie_value(&headers, LOGIN_COOKIE);
    let genuine = nonce
        .is_some_and(|n| subtle::ConstantTimeEq::ct_eq(n.as_bytes(), form.csrf.as_bytes()).into());
    if !genuine || !same_origin(&headers) {
        return refuse("The login form is stale or came from another site: reload it.");
    }
    if !console.sessions().token_matches(&form.token) {
        return login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid."));
    }
    signed_in_response(&console, &headers)
}

fn signed_in_response(console: &Console, headers: &HeaderMap) -> Response {
    let ttl = console.sessions().ttl();
    let cookie = Cookie::build((SESSION_COOKIE, console.sessions().issue()))
        .path("/admin")
        .http_only(true)
        .secure(over_tls(headers))
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/admin/apps".to_owned()),
            (header::SET_COOKIE, cookie.to_string()),
        ],
    )
        .into_response()
}

pub async fn logout() -> Response {
    let cookie = Cookie::build((SESSION_COOKIE, ""))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/admin/login".to_owned()),
            (header::SET_COOKIE, cookie.to_string()),
        ],
    )
        .into_response()
}

// --- Apps ---

fn chrome<'a>(console: &Console, session: &Session, app: Option<&'a App>) -> Chrome<'a> {
    Chrome {
        csrf: Some(console.sessions().csrf(session)),
        app,
    }
}

pub async fn apps(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let apps = apps::list_apps(console.inner.api.pool()).await?;
    Ok(html(
        StatusCode::OK,
        views::apps(&chrome(&console, &session, None), &apps),
    ))
}

/// The app of a path, if it exists; anything else is NOT_FOUND.
async fn app_of(console: &Console, app: &str) -> Result<(App, RequestContext), PageError> {
    let id: AppId = app.parse().map_err(|_| PageError::NotFound)?;
    let app = apps::get_app(console.inner.api.pool(), id)
        .await?
        .ok_or(PageError::NotFound)?;
    let mut ctx = RequestContext::new(id, console.inner.statement_limit);
    ctx.deadline = Some(tokio::time::Instant::now() + PAGE_DEADLINE);
    Ok((app, ctx))
}

// --- Customers ---

/// The customers page's query: the search box, the filters, and where the
/// page starts.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct CustomersQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub email: String,
    /// First creation day, `YYYY-MM-DD` (UTC), inclusive.
    #[serde(default)]
    pub from: String,
    /// Last creation day, inclusive.
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub meta_key: String,
    #[serde(default)]
    pub meta_value: String,
    /// `all`: archived customers too.
    #[serde(default)]
    pub state: String,
    /// `oldest`: oldest first; otherwise newest first.
    #[serde(default)]
    pub order: String,
    /// The page starts after this customer (the stream's keyset position).
    #[serde(default)]
    pub after: String,
}

impl CustomersQuery {
    /// The ListCustomers filter it stands for, validated as the API
    /// validates one.
    fn filter(&self) -> Result<ListFilter, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let mut day = |field: &str, text: &str| -> Option<NaiveDate> {
            let text = text.trim();
            if text.is_empty() {
                return None;
            }
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| {
                    violations.push(FieldViolation {
                        field: field.to_owned(),
                        description: "must be a date like 2026-11-22".to_owned(),
                    })
                })
                .ok()
        };
        let start_of = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        let created_after = day("from", &self.from).and_then(start_of);
        let created_before = day("to", &self.to)
            .and_then(|d| d.succ_opt())
            .and_then(start_of);
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let mut metadata = BTreeMap::new();
        if let Some(key) = some(&self.meta_key) {
            metadata.insert(key, self.meta_value.clone());
        }
        let filter = ListFilter {
            email: some(&self.email),
            query: some(&self.q),
            created_after,
            created_before,
            metadata,
            include_archived: self.state == "all",
            order: if self.order == "oldest" {
                Order::Ascending
            } else {
                Order::Descending
            },
            limit: None,
            resume_after: None,
        };
        let filter = filter.validate().map_err(|invalid| {
            let mut all = violations.clone();
            all.extend(invalid.violations);
            all
        })?;
        if violations.is_empty() {
            Ok(filter)
        } else {
            Err(violations)
        }
    }

    /// This query starting after another customer.
    pub fn after(&self, id: CustomerId) -> String {
        let mut next = self.clone();
        next.after = id.to_string();
        next.encode()
    }

    /// The query string (without `after` if empty).
    pub fn encode(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("q", self.q.as_str()),
            ("email", &self.email),
            ("from", &self.from),
            ("to", &self.to),
            ("meta_key", &self.meta_key),
            ("meta_value", &self.meta_value),
            ("state", &self.state),
            ("order", &self.order),
            ("after", &self.after),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

pub async fn customers(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(app): Path<String>,
    Query(query): Query<CustomersQuery>,
) -> PageResult {
    let (app, ctx) = app_of(&console, &app).await?;
    let chrome = chrome(&console, &session, Some(&app));
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(violations) => {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                views::customers(&chrome, &query, &[], None, &violations),
            ));
        }
    };
    let pool = console.inner.api.pool().clone();
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let after = match query.after.trim() {
        "" => None,
        after => {
            let position = match after.parse::<CustomerId>() {
                Ok(id) => match store::position_of(&pool, &ctx, id, &cancel).await {
                    Ok(position) => Some(position),
                    Err(Error::NotFound) => None,
                    Err(e) => return Err(e.into()),
                },
                Err(_) => None,
            };
            match position {
                Some(position) => Some(position),
                None => {
                    let violation = FieldViolation {
                        field: "after".to_owned(),
                        description: "names no customer of this app".to_owned(),
                    };
                    return Ok(html(
                        StatusCode::BAD_REQUEST,
                        views::customers(&chrome, &query, &[], None, &[violation]),
                    ));
                }
            }
        }
    };
    let page_size = console.inner.page_size;
    let mut rows =
        store::list_batch::<Customer>(&pool, &ctx, &filter, after, page_size as i64 + 1, &cancel)
            .await?;
    let next = (rows.len() > page_size).then(|| {
        rows.truncate(page_size);
        query.after(rows[page_size - 1].id)
    });
    Ok(html(
        StatusCode::OK,
        views::customers(&chrome, &query, &rows, next.as_deref(), &[]),
    ))
}

#[derive(Deserialize)]
pub struct DetailQuery {
    done: Option<String>,
}

/// What a detail page shows besides the customer: a notice, and errors.
#[derive(Default)]
pub struct Outcome<'a> {
    pub flash: Option<Flash<'a>>,
    pub violations: Vec<FieldViolation>,
    /// Edits that were not saved, to show again in the form.
    pub unsaved: Option<&'a EditForm>,
}

async fn detail_page(
    console: &Console,
    session: &Session,
    app: &App,
    ctx: &RequestContext,
    id: CustomerId,
    status: StatusCode,
    outcome: Outcome<'_>,
) -> PageResult {
    let pool = console.inner.api.pool();
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let customer = store::get(pool, ctx, &Lookup::Id(id), &cancel).await?;
    let history = events::customer_history(pool, ctx, id, HISTORY_LIMIT, &cancel).await?;
    Ok(html(
        status,
        views::customer(
            &chrome(console, session, Some(app)),
            &customer,
            &history,
            outcome,
        ),
    ))
}

fn customer_id(id: &str) -> Result<CustomerId, PageError> {
    id.parse().map_err(|_| PageError::NotFound)
}

pub async fn customer(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<DetailQuery>,
) -> PageResult {
    let (app, ctx) = app_of(&console, &app).await?;
    let id = customer_id(&id)?;
    let flash = match query.done.as_deref() {
        Some("updated") => Some(Flash::Done("Saved.")),
        Some("archived") => Some(Flash::Done("Archived.")),
        Some("erased") => Some(Flash::Done(
            "Erased: personal data removed; the tombstone and the event history remain.",
        )),
        _ => None,
    };
    detail_page(
        &console,
        &session,
        &app,
        &ctx,
        id,
        StatusCode::OK,
        Outcome {
            flash,
            ..Outcome::default()
        },
    )
    .await
}

/// The edit form: every writable field, and the etag the page was rendered
/// with. Metadata and provider ids are one `key=value` per line.
#[derive(Debug, Deserialize)]
pub struct EditForm {
    pub etag: String,
    #[serde(default)]
    pub external_id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub line1: String,
    #[serde(default)]
    pub line2: String,
    #[serde(default)]
    pub city: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub postal_code: String,
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub provider_ids: String,
}

impl EditForm {
    /// The form as a customer's page first shows it: the customer's values
    /// and etag.
    pub fn of(c: &Customer) -> Self {
        let f = &c.fields;
        let a = &f.address;
        let text = |o: &Option<String>| o.clone().unwrap_or_default();
        let lines = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        Self {
            etag: c.etag(),
            external_id: text(&f.external_id),
            email: f.email.clone(),
            name: text(&f.name),
            phone: text(&f.phone),
            timezone: text(&f.timezone),
            line1: text(&a.line1),
            line2: text(&a.line2),
            city: text(&a.city),
            state: text(&a.state),
            postal_code: text(&a.postal_code),
            country: text(&a.country),
            metadata: lines(&f.metadata),
            provider_ids: lines(&f.provider_ids),
        }
    }
}

/// `key=value` lines; a line without `=` is a violation of `field`.
fn pairs(
    field: &str,
    text: &str,
    violations: &mut Vec<FieldViolation>,
) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                map.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            None => violations.push(FieldViolation {
                field: field.to_owned(),
                description: format!("line {} is not key=value", n + 1),
            }),
        }
    }
    map
}

impl EditForm {
    /// The UpdateCustomer it stands for: every writable field replaced
    /// (`update_mask: "*"`), conditional on the etag; parsed by the API's
    /// own parse step, so the same rules apply.
    fn command(&self, id: CustomerId) -> Result<UpdateCustomer, Error> {
        let mut violations = Vec::new();
        let metadata = pairs("metadata", &self.metadata, &mut violations);
        let provider_ids = pairs("provider_ids", &self.provider_ids, &mut violations);
        let t = |s: &str| s.trim().to_owned();
        let customer = pb::Customer {
            id: id.to_string(),
            external_id: Some(t(&self.external_id)).filter(|s| !s.is_empty()),
            email: t(&self.email),
            name: t(&self.name),
            phone: t(&self.phone),
            timezone: t(&self.timezone),
            address: Some(pb::Address {
                line1: t(&self.line1),
                line2: t(&self.line2),
                city: t(&self.city),
                state: t(&self.state),
                postal_code: t(&self.postal_code),
                country: t(&self.country),
            }),
            metadata,
            provider_ids,
            etag: self.etag.clone(),
            ..Default::default()
        };
        let request = pb::UpdateCustomerRequest {
            customer: Some(customer),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["*".to_owned()],
            }),
            external_id: String::new(),
        };
        match UpdateCustomer::try_from(request) {
            Ok(command) if violations.is_empty() => Ok(command),
            Ok(_) => Err(Error::InvalidArgument(Invalid {
                violations,
                omitted: 0,
            })),
            Err(mut invalid) => {
                violations.append(&mut invalid.violations);
                invalid.violations = violations;
                Err(Error::InvalidArgument(invalid))
            }
        }
    }
}

/// After a write: on success, watches are told and the browser goes back to
/// the customer's page, saying what was `done`; otherwise the page again,
/// saying why nothing was saved, with the operator's `unsaved` edits.
#[allow(clippy::too_many_arguments)]
async fn after_write(
    console: &Console,
    session: &Session,
    app: &App,
    ctx: &RequestContext,
    id: CustomerId,
    result: Result<Written, Error>,
    done: &str,
    unsaved: Option<&EditForm>,
) -> PageResult {
    let error = match result {
        Ok(written) => {
            console.inner.api.wrote(ctx, &written);
            return Ok(see_other(&detail_path(app, id, done)));
        }
        Err(error) => error,
    };
    let (status, message, violations) = match error {
        Error::InvalidArgument(invalid) => (
            StatusCode::BAD_REQUEST,
            "Not saved: some fields are invalid.",
            invalid.violations,
        ),
        Error::EtagMismatch => (
            StatusCode::CONFLICT,
            "Not saved: someone changed this customer after you opened this page. \
             The page now shows the current values; your edits are kept in the form below.",
            Vec::new(),
        ),
        Error::AlreadyExists { .. } => (
            StatusCode::CONFLICT,
            "Not saved: another active customer already holds that email, external id or provider id.",
            Vec::new(),
        ),
        Error::Archived => (
            StatusCode::CONFLICT,
            "Not saved: the customer is archived, and archived customers cannot be edited.",
            Vec::new(),
        ),
        Error::Deleted => (
            StatusCode::CONFLICT,
            "Not saved: the customer is erased.",
            Vec::new(),
        ),
        Error::Contention => (
            StatusCode::CONFLICT,
            "Not saved: a concurrent write got in the way; try again.",
            Vec::new(),
        ),
        error => return Err(error.into()),
    };
    detail_page(
        console,
        session,
        app,
        ctx,
        id,
        status,
        Outcome {
            flash: Some(Flash::Refused(message)),
            violations,
            unsaved,
        },
    )
    .await
}

fn detail_path(app: &App, id: CustomerId, done: &str) -> String {
    format!("/admin/apps/{}/customers/{id}?done={done}", app.app_id())
}

pub async fn edit(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((app, id)): Path<(String, String)>,
    Form(form): Form<EditForm>,
) -> PageResult {
    let (app, ctx) = app_of(&console, &app).await?;
    let id = customer_id(&id)?;
    let result = match form.command(id) {
        Ok(command) => {
            let pool = console.inner.api.pool().clone();
            run_to_completion(async move { store::update(&pool, &ctx, &command).await }).await
        }
        Err(invalid) => Err(invalid),
    };
    after_write(
        &console,
        &session,
        &app,
        &ctx,
        id,
        result,
        "updated",
        Some(&form),
    )
    .await
}

#[derive(Deserialize)]
pub struct StateForm {
    etag: String,
    #[serde(default)]
    confirm_email: String,
}

pub async fn archive(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((app, id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> PageResult {
    let (app, ctx) = app_of(&console, &app).await?;
    let id = customer_id(&id)?;
    let command = ChangeState {
        target: Target::Id(id),
        etag: Some(form.etag),
    };
    let pool = console.inner.api.pool().clone();
    let result =
        run_to_completion(async move { store::archive(&pool, &ctx, &command).await }).await;
    after_write(&console, &session, &app, &ctx, id, result, "archived", None).await
}

/// Erasure (DeleteCustomer): only when the form repeats the customer's
/// email, so that nobody erases the wrong customer by a slip.
pub async fn erase(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((app, id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> PageResult {
    let (app, ctx) = app_of(&console, &app).await?;
    let id = customer_id(&id)?;
    let pool = console.inner.api.pool().clone();
    let current = store::get(&pool, &ctx, &Lookup::Id(id), &CancellationToken::new()).await?;
    let typed = form.confirm_email.trim();
    if typed.is_empty() || !typed.eq_ignore_ascii_case(current.fields.email.trim()) {
        return detail_page(
            &console,
            &session,
            &app,
            &ctx,
            id,
            StatusCode::BAD_REQUEST,
            Outcome {
                flash: Some(Flash::Refused(
                    "Not erased: type the customer's email exactly to confirm.",
                )),
                ..Outcome::default()
            },
        )
        .await;
    }
    let command = ChangeState {
        target: Target::Id(id),
        etag: Some(form.etag),
    };
    let result = run_to_completion(async move { store::delete(&pool, &ctx, &command).await }).await;
    after_write(&console, &session, &app, &ctx, id, result, "erased", None).await
}

// --- API keys ---

#[derive(Deserialize)]
pub struct KeysQuery {
    done: Option<String>,
}

async fn keys_page(
    console: &Console,
    session: &Session,
    app: &App,
    status: StatusCode,
    flash: Option<Flash<'_>>,
    new_key: Option<&str>,
) -> PageResult {
    let keys = apps::list_keys(console.inner.api.pool(), app.app_id()).await?;
    let now: DateTime<Utc> = Utc::now();
    Ok(html(
        status,
        views::keys(
            &chrome(console, session, Some(app)),
            &keys,
            now,
            flash,
            new_key,
        ),
    ))
}

pub async fn keys(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(app): Path<String>,
    Query(query): Query<KeysQuery>,
) -> PageResult {
    let (app, _) = app_of(&console, &app).await?;
    let flash = match query.done.as_deref() {
        Some("revoked") => Some(Flash::Done(
            "Revoked: the key stops working within seconds.",
        )),
        _ => None,
    };
    keys_page(&console, &session, &app, StatusCode::OK, flash, None).await
}

pub async fn create_key(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(app): Path<String>,
) -> PageResult {
    let (app, _) = app_of(&console, &app).await?;
    let key = admin::create_key(&console.inner.key_pool, app.app_id()).await?;
    keys_page(
        &console,
        &session,
        &app,
        StatusCode::OK,
        Some(Flash::Done(
            "Created. Copy the key now: it is shown only this once.",
        )),
        Some(&key.reveal()),
    )
    .await
}

fn key_id(key: &str) -> Result<KeyId, PageError> {
    key.parse().map_err(|_| PageError::NotFound)
}

pub async fn revoke_key(
    State(console): State<Console>,
    Path((app, key)): Path<(String, String)>,
) -> PageResult {
    let (app, _) = app_of(&console, &app).await?;
    apps::expire_key(
        &console.inner.key_pool,
        app.app_id(),
        key_id(&key)?,
        Duration::ZERO,
    )
    .await?;
    Ok(see_other(&format!(
        "/admin/apps/{}/keys?done=revoked",
        app.app_id()
    )))
}

#[derive(Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    overlap: String,
}

/// A new key, and the old one expiring after the overlap (default 24h).
pub async fn rotate_key(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((app, key)): Path<(String, String)>,
    Form(form): Form<RotateForm>,
) -> PageResult {
    let (app, _) = app_of(&console, &app).await?;
    let old = key_id(&key)?;
    let overlap = match form.overlap.trim() {
        "" => Duration::from_secs(24 * 3600),
        text => humantime::parse_duration(text).map_err(|_| {
            PageError::Invalid(vec![FieldViolation {
                field: "overlap".to_owned(),
                description: "must be a duration like 24h or 30m".to_owned(),
            }])
        })?,
    };
    apps::expire_key(&console.inner.key_pool, app.app_id(), old, overlap).await?;
    let new = admin::create_key(&console.inner.key_pool, app.app_id()).await?;
    keys_page(
        &console,
        &session,
        &app,
        StatusCode::OK,
        Some(Flash::Done(
            "Rotated. Copy the new key now: it is shown only this once. The old key keeps working until its expiry below.",
        )),
        Some(&new.reveal()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_filters_parse_like_the_api() {
        let query = CustomersQuery {
            q: " ada ".into(),
            from: "2026-11-01".into(),
            to: "2026-11-30".into(),
            meta_key: "plan".into(),
            meta_value: "pro".into(),
            state: "all".into(),
            ..Default::default()
        };
        let filter = query.filter().unwrap();
        assert_eq!(filter.query.as_deref(), Some("ada"));
        assert_eq!(
            filter.created_before.unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert!(filter.include_archived);
        assert_eq!(filter.order, Order::Descending);
        let bad = CustomersQuery {
            from: "yesterday".into(),
            q: "a\u{0}".into(),
            ..Default::default()
        };
        let fields: Vec<String> = bad
            .filter()
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(fields.contains(&"from".to_owned()), "{fields:?}");
        assert!(fields.contains(&"query".to_owned()), "{fields:?}");
    }

    #[test]
    fn next_page_links_keep_the_filters() {
        let query = CustomersQuery {
            q: "a&b".into(),
            ..Default::default()
        };
        let id = CustomerId::generate();
        assert_eq!(query.after(id), format!("q=a%26b&after={id}"));
    }
}
