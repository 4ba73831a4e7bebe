//! Who is calling: API keys, their verification, and per-app limits.
//!
//! A key is `ck_` + its key id + its app id (26 base32 characters each) +
//! a 160-bit random secret (40 hex). Only the SHA-256 of the secret is
//! stored, and since the key names its app and id, checking it is one
//! primary-key lookup and a constant-time comparison. Successful checks are
//! cached for `cache_ttl`, so a revocation takes effect within that time.
//!
//! A key whose id is not among the known key ids (all of them, loaded at
//! most once per [`KEY_IDS_REFRESH`]) is refused without a lookup: a flood
//! of random well-formed keys costs the database one query per second, not
//! one per key. A key created since the last load waits for the next one.
//!
//! A tower layer checks every `customers.v1` call before any handler runs
//! and puts the caller's [`AppId`] in the request's extensions; health and
//! reflection stay open.

use std::{
    fmt,
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::{
    domain::{AppId, KeyId},
    error::{AuthFailure, Error},
    metrics::Metrics,
    storage::{Pool, apps},
};

const KEY_PREFIX: &str = "ck_";
/// The known key ids are loaded again at most this often.
pub const KEY_IDS_REFRESH: Duration = Duration::from_secs(1);
const ID_CHARS: usize = 26;
const SECRET_BYTES: usize = 20;

/// An API key, secret included. Shown once, when created.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub app: AppId,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({} of {}, secret hidden)", self.id, self.app)
    }
}

/// The base32 part of a TypeID (`key_01h...` → `01h...`).
fn suffix(typeid: String) -> String {
    typeid
        .split_once('_')
        .map(|(_, s)| s.to_owned())
        .unwrap_or(typeid)
}

impl ApiKey {
    pub fn generate(app: AppId) -> Self {
        let mut secret = [0; SECRET_BYTES];
        rand::rng().fill(&mut secret);
        Self {
            id: KeyId::generate(),
            app,
            secret,
        }
    }

    /// The whole key, for the one time it is shown.
    pub fn reveal(&self) -> String {
        let mut key = format!(
            "{KEY_PREFIX}{}{}",
            suffix(self.id.to_string()),
            suffix(self.app.to_string())
        );
        for byte in self.secret {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }

    /// Parses a key in its one canonical spelling (the one [`reveal`]
    /// prints): any other spelling of the same key is not a key, so that
    /// each key has one cache entry.
    ///
    /// [`reveal`]: ApiKey::reveal
    pub fn parse(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(KEY_PREFIX)?;
        if rest.len() != 2 * ID_CHARS + 2 * SECRET_BYTES || !rest.is_ascii() {
            return None;
        }
        let (id, rest) = rest.split_at(ID_CHARS);
        let (app, hex) = rest.split_at(ID_CHARS);
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut secret = [0; SECRET_BYTES];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        let parsed = Self {
            id: format!("key_{id}").parse().ok()?,
            app: format!("app_{app}").parse().ok()?,
            secret,
        };
        (parsed.reveal() == key).then_some(parsed)
    }

    /// What is stored of the key.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }

    /// The start of the key, stored to tell keys apart in listings.
    pub fn prefix(&self) -> String {
        self.reveal()[..KEY_PREFIX.len() + 16].to_owned()
    }
}

/// How callers are checked and limited.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// How long a successful check is trusted without asking the database.
    pub cache_ttl: Duration,
    /// Sustained calls per second per app (per replica); `None`: unlimited.
    pub rate_per_second: Option<NonZeroU32>,
    /// Calls an app may make in a burst above the sustained rate.
    pub rate_burst: NonZeroU32,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(10),
            rate_per_second: NonZeroU32::new(1000),
            rate_burst: NonZeroU32::new(2000).expect("non-zero"),
        }
    }
}

/// Checks API keys and per-app call rates. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    pool: Pool,
    /// SHA-256 of a whole key → its app and id.
    cache: moka::future::Cache<[u8; 32], (AppId, KeyId)>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<AppId>>>,
    metrics: Metrics,
    known: Arc<KnownKeys>,
}

/// The ids of every key, as last loaded.
#[derive(Default)]
struct KnownKeys {
    ids: std::sync::RwLock<std::collections::HashSet<(AppId, KeyId)>>,
    /// When the ids were last loaded (`None`: never); held across a load, so
    /// that concurrent misses share one.
    loaded: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl KnownKeys {
    fn contains(&self, app: AppId, id: KeyId) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(app, id))
    }

    /// Whether `(app, id)` is a key's id, loading the ids again if it is
    /// not known, but no sooner than [`KEY_IDS_REFRESH`] after the last load
    /// (waiting for that).
    async fn check(
        &self,
        pool: &Pool,
        metrics: &Metrics,
        app: AppId,
        id: KeyId,
    ) -> Result<bool, Error> {
        if self.contains(app, id) {
            return Ok(true);
        }
        let asked = tokio::time::Instant::now();
        let mut loaded = self.loaded.lock().await;
        // Loaded by another caller while this one waited: that load counts.
        if loaded.is_some_and(|at| at >= asked) {
            return Ok(self.contains(app, id));
        }
        if let Some(at) = *loaded {
            tokio::time::sleep_until(at + KEY_IDS_REFRESH).await;
        }
        metrics.auth_lookup("key_ids");
        let ids = apps::all_key_ids(pool).await?;
        *self.ids.write().unwrap_or_else(|e| e.into_inner()) = ids.into_iter().collect();
        *loaded = Some(tokio::time::Instant::now());
        Ok(self.contains(app, id))
    }
}

impl Authenticator {
    pub fn new(pool: Pool, options: &AuthOptions, metrics: Metrics) -> Self {
        Self {
            pool,
            cache: moka::future::Cache::builder()
                .time_to_live(options.cache_ttl)
                .max_capacity(100_000)
                .build(),
            limiter: options.rate_per_second.map(|rate| {
                Arc::new(DefaultKeyedRateLimiter::keyed(
                    Quota::per_second(rate).allow_burst(options.rate_burst),
                ))
            }),
            metrics,
            known: Arc::default(),
        }
    }

    /// The app and id of a presented key. Failures are logged (never the
    /// key) and counted by reason.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<(AppId, KeyId), Error> {
        let result = self.check(presented).await;
        if let Err(e @ Error::Unauthenticated(failure)) = &result {
            self.metrics.auth_failure(*failure);
            tracing::warn!(reason = failure.reason(), error = %e, "authentication failed");
        }
        result
    }

    async fn check(&self, presented: Option<&str>) -> Result<(AppId, KeyId), Error> {
        let presented = presented.ok_or(Error::Unauthenticated(AuthFailure::Missing))?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(caller) = self.cache.get(&digest).await {
            return Ok(caller);
        }
        let key = ApiKey::parse(presented).ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        if !self
            .known
            .check(&self.pool, &self.metrics, key.app, key.id)
            .await?
        {
            return Err(Error::Unauthenticated(AuthFailure::Invalid));
        }
        self.metrics.auth_lookup("key");
        let (record, valid) = apps::find_key(&self.pool, key.app, key.id)
            .await?
            .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        if !bool::from(record.secret_hash.as_slice().ct_eq(&key.secret_hash())) {
            return Err(Error::Unauthenticated(AuthFailure::Invalid));
        }
        if !valid {
            return Err(Error::Unauthenticated(AuthFailure::Revoked));
        }
        self.cache.insert(digest, (key.app, key.id)).await;
        Ok((key.app, key.id))
    }

    /// Whether `app` may make one more call now.
    pub fn check_rate(&self, app: AppId) -> Result<(), Error> {
        match &self.limiter {
            Some(limiter) if limiter.check_key(&app).is_err() => Err(Error::RateLimited),
            _ => Ok(()),
        }
    }
}

/// The key a request presents: `authorization: Bearer <key>` or
/// `x-api-key: <key>`. An `authorization` header of another scheme (a
/// proxy's `Basic ...`) is not ours and does not hide `x-api-key`.
fn presented_key(headers: &http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_owned());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    })
}

/// Services whose calls need a key.
const PROTECTED: &str = "/customers.v1.";

#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(PROTECTED) {
            return Box::pin(self.inner.call(request));
        }
        // The ready service goes with this call; a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let presented = presented_key(request.headers());
        Box::pin(async move {
            let checked = match auth.authenticate(presented.as_deref()).await {
                Ok((app, key)) => auth.check_rate(app).map(|()| (app, key)),
                Err(e) => Err(e),
            };
            match checked {
                Ok((app, key)) => {
                    tracing::Span::current().record("app", tracing::field::display(app));
                    request.extensions_mut().insert(app);
                    request.extensions_mut().insert(key);
                    // For the access log (see `metrics`), which sees the
                    // response only.
                    let mut response = inner.call(request).await?;
                    response.extensions_mut().insert(app);
                    Ok(response)
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_tampering() {
        let app = AppId(uuid::Uuid::now_v7());
        let key = ApiKey::generate(app);
        let text = key.reveal();
        assert!(
            text.starts_with("ck_") && text.len() == 3 + 26 + 26 + 40,
            "{text}"
        );
        assert_eq!(ApiKey::parse(&text), Some(key.clone()));
        assert!(text.starts_with(&key.prefix()));
        assert_ne!(ApiKey::generate(app).reveal(), text);

        assert_eq!(ApiKey::parse(&text[..text.len() - 1]), None);
        assert_eq!(ApiKey::parse(&format!("xx{}", &text[2..])), None);
        let mut other_secret = text.clone();
        other_secret.replace_range(text.len() - 1.., "g");
        assert_eq!(ApiKey::parse(&other_secret), None);
        assert!(
            !format!("{key:?}").contains(&text[55..]),
            "Debug hides the secret"
        );
    }

    #[test]
    fn bearer_and_x_api_key_are_read() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", "ck_a".parse().unwrap());
        assert_eq!(presented_key(&headers).as_deref(), Some("ck_a"));
        headers.insert("authorization", "Bearer ck_b".parse().unwrap());
        assert_eq!(presented_key(&headers).as_deref(), Some("ck_b"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&headers).as_deref(), Some("ck_a"));
        headers.remove("x-api-key");
        assert_eq!(presented_key(&headers), None);
    }

    #[test]
    fn only_the_canonical_spelling_of_a_key_parses() {
        let key = ApiKey::generate(AppId(uuid::Uuid::now_v7()));
        let text = key.reveal();
        let (head, secret) = text.split_at(text.len() - 40);
        let upper = format!("{head}{}", secret.to_uppercase());
        assert_ne!(upper, text, "the secret has letters");
        assert_eq!(ApiKey::parse(&upper), None);
        // "+f" parses as a hex byte with from_str_radix.
        let plus = format!("{head}+{}", &secret[1..]);
        assert_eq!(ApiKey::parse(&plus), None);
        let head_upper = format!("ck_{}{secret}", head[3..].to_uppercase());
        assert_eq!(ApiKey::parse(&head_upper), None);
    }
}
