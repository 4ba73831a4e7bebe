//! The operator's console: server-rendered pages to browse, search and
//! manage each app's customers and API keys, on a listener of its own
//! (`--admin-listen`), behind the operator token.
//!
//! Every customer read and write goes through the same storage calls as the
//! gRPC API, scoped to the app in the URL under the same row-level security,
//! and writes record the same change events. No page needs JavaScript; every
//! response carries a strict Content-Security-Policy that allows no script
//! at all; every form that changes something carries the session's CSRF
//! token, checked here before any handler runs.

mod pages;
mod session;
mod views;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use cookie::Cookie;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

pub use session::{MIN_TOKEN_CHARS, Session, Sessions, generate_token};

use crate::{service::CustomerApi, storage::Pool};

/// Most bytes a console form may send.
const MAX_FORM_BYTES: usize = 64 << 10;

/// Everything the console's pages share.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    api: CustomerApi,
    /// Writes API keys: a login that may (the tables' owner), where the
    /// service's own role only reads them.
    key_pool: Pool,
    sessions: Sessions,
    page_size: usize,
    statement_limit: Duration,
}

/// How the console behaves.
pub struct ConsoleOptions {
    /// The operator token: the one credential that opens the console.
    pub token: String,
    /// How long a session lasts after login.
    pub session_ttl: Duration,
    /// Customers per page.
    pub page_size: usize,
}

impl Console {
    /// Errors if the token is too short.
    pub fn new(api: CustomerApi, key_pool: Pool, options: ConsoleOptions) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(Inner {
                statement_limit: api.statement_limit(),
                api,
                key_pool,
                sessions: Sessions::new(&options.token, options.session_ttl)?,
                page_size: options.page_size.clamp(1, 500),
            }),
        })
    }

    /// The console's routes, under `/admin`.
    pub fn router(self) -> Router {
        let signed_in = Router::new()
            .route("/admin/apps", get(pages::apps))
            .route("/admin/apps/{app}/customers", get(pages::customers))
            .route("/admin/apps/{app}/customers/{id}", get(pages::customer))
            .route("/admin/apps/{app}/customers/{id}/edit", post(pages::edit))
            .route(
                "/admin/apps/{app}/customers/{id}/archive",
                post(pages::archive),
            )
            .route("/admin/apps/{app}/customers/{id}/erase", post(pages::erase))
            .route("/admin/apps/{app}/keys", get(pages::keys))
            .route("/admin/apps/{app}/keys", post(pages::create_key))
            .route(
                "/admin/apps/{app}/keys/{key}/revoke",
                post(pages::revoke_key),
            )
            .route(
                "/admin/apps/{app}/keys/{key}/rotate",
                post(pages::rotate_key),
            )
            .route("/admin/logout", post(pages::logout))
            .route_layer(middleware::from_fn_with_state(self.clone(), signed_in));
        Router::new()
            .route("/admin", get(|| async { Redirect::to("/admin/apps") }))
            .route("/admin/", get(|| async { Redirect::to("/admin/apps") }))
            .route("/admin/login", get(pages::login_form).post(pages::login))
            .route("/admin/static/console.css", get(views::stylesheet))
            .merge(signed_in)
            .fallback(pages::not_found)
            .layer(middleware::from_fn(headers_and_access_log))
            .with_state(self)
    }

    fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
}

/// Serves the console until `shutdown` fires.
pub async fn serve(listener: TcpListener, console: Console, shutdown: CancellationToken) {
    if let Err(e) = axum::serve(listener, console.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "console failed");
    }
}

/// What every response carries, and the access log: method, route pattern
/// (never the path itself, nor the query: they can hold emails and search
/// terms), status and time. `Server-Timing` tells a browser or a benchmark
/// how long the server took.
async fn headers_and_access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: under it, browsers send `Origin: null` with a
        // same-origin form post, which the origin check must refuse.
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if let Ok(timing) =
        HeaderValue::from_str(&format!("app;dur={:.3}", elapsed.as_secs_f64() * 1000.0))
    {
        headers.insert("server-timing", timing);
    }
    tracing::info!(
        target: "customers::console::access",
        %method,
        route,
        status = response.status().as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
        "console request"
    );
    response
}

/// The signed-in part of the console: a valid session cookie, else the
/// login page (or 403 for a form post); on a post, the same origin and the
/// session's CSRF token, else 403. Handlers find the [`Session`] in the
/// request's extensions.
async fn signed_in(State(console): State<Console>, request: Request, next: Next) -> Response {
    let session = cookie_value(request.headers(), session::SESSION_COOKIE)
        .and_then(|value| console.sessions().verify(&value));
    let is_post = request.method() == Method::POST;
    let Some(session) = session else {
        if is_post {
            return pages::refuse("Your session has ended: sign in again.").into_response();
        }
        return Redirect::to("/admin/login").into_response();
    };
    let mut request = if is_post {
        if !same_origin(request.headers()) {
            return pages::refuse("The form came from another site.").into_response();
        }
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
        };
        let csrf = form_urlencoded_value(&bytes, "csrf");
        if !csrf.is_some_and(|token| console.sessions().csrf_matches(&session, &token)) {
            return pages::refuse(
                "The form's security token is missing or stale: reload the page and try again.",
            )
            .into_response();
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    request.extensions_mut().insert(session);
    next.run(request).await
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A post's `Origin` (or, without one, its `Referer`) names this host. A
/// browser always sends `Origin` with a form post (under the pages'
/// `Referrer-Policy: same-origin`); a request with neither header is no
/// browser's form, and is refused too.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    source.is_some_and(|source| {
        let rest = source
            .strip_prefix("https://")
            .or_else(|| source.strip_prefix("http://"));
        rest.is_some_and(|rest| rest.split('/').next() == Some(host))
    })
}

fn form_urlencoded_value(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Whether the browser reached us over TLS (directly, or through a proxy
/// that says so): the session cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn posts_must_come_from_this_host() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "https://127.0.0.1:8080/admin/apps")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080.evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])));
    }

    #[test]
    fn form_values_are_found() {
        assert_eq!(
            form_urlencoded_value(b"a=1&csrf=x%2By&b=2", "csrf").as_deref(),
            Some("x+y")
        );
        assert_eq!(form_urlencoded_value(b"a=1", "csrf"), None);
    }
}
