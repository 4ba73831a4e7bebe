//! Operator sessions without server state: the operator token is exchanged
//! for a signed, expiring cookie, so any replica accepts a session another
//! one issued, and changing the token ends every session. CSRF tokens are
//! derived from the session, so they need no storage either.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "customers_console";
/// Name of the login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "customers_console_login";

/// Shortest operator token accepted: 32 characters, so that it cannot be
/// guessed online.
pub const MIN_TOKEN_CHARS: usize = 32;

/// A signed-in operator: when the session ends, and its nonce (what its CSRF
/// token is derived from).
#[derive(Debug, Clone)]
pub struct Session {
    nonce: [u8; 16],
    pub expires: u64,
}

/// Issues and checks sessions and CSRF tokens under one operator token.
pub struct Sessions {
    /// The signing key: derived from the token, never the token itself.
    key: [u8; 32],
    token_digest: [u8; 32],
    ttl: Duration,
}

impl Sessions {
    /// Errors if the token is too short to be a secret.
    pub fn new(token: &str, ttl: Duration) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the operator token must be at least {MIN_TOKEN_CHARS} characters"
            ));
        }
        let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
        mac.update(b"customers console session key v1");
        Ok(Self {
            key: mac.finalize().into_bytes().into(),
            token_digest: Sha256::digest(token.as_bytes()).into(),
            ttl,
        })
    }

    /// Whether `presented` is the operator token (in constant time: both
    /// sides are hashed first, so neither length nor content leaks).
    pub fn token_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        digest.ct_eq(&self.token_digest).into()
    }

    fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session's cookie value: `v1.<expiry>.<nonce>.<signature>`.
    pub fn issue(&self) -> String {
        let expires = now_secs() + self.ttl.as_secs();
        let nonce: [u8; 16] = rand::random();
        let mac = self.sign(&[b"session", &expires.to_be_bytes(), &nonce]);
        format!("v1.{expires}.{}.{}", B64.encode(nonce), B64.encode(mac))
    }

    /// The session a cookie value carries, if it is ours and not expired.
    pub fn verify(&self, value: &str) -> Option<Session> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(expires), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: u64 = expires.parse().ok()?;
        let nonce: [u8; 16] = B64.decode(nonce).ok()?.try_into().ok()?;
        let mac = B64.decode(mac).ok()?;
        let expected = self.sign(&[b"session", &expires.to_be_bytes(), &nonce]);
        if !bool::from(expected.as_slice().ct_eq(&mac)) || expires <= now_secs() {
            return None;
        }
        Some(Session { nonce, expires })
    }

    /// The CSRF token of a session: every form of the session carries it.
    pub fn csrf(&self, session: &Session) -> String {
        B64.encode(self.sign(&[b"csrf", &session.nonce]))
    }

    pub fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        self.csrf(session)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new random operator token (the embedded mode's, kept in its data
/// directory).
pub fn generate_token() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sessions_verify_only_under_their_token() {
        let sessions = Sessions::new(TOKEN, Duration::from_secs(60)).unwrap();
        let cookie = sessions.issue();
        let session = sessions.verify(&cookie).expect("a fresh session verifies");
        let other = Sessions::new(&format!("{TOKEN}x"), Duration::from_secs(60)).unwrap();
        assert!(other.verify(&cookie).is_none(), "another token's session");
        // Any change to the value breaks the signature.
        let mut tampered = cookie.clone().into_bytes();
        let at = tampered.len() - 3;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        assert!(
            sessions
                .verify(&String::from_utf8(tampered).unwrap())
                .is_none()
        );
        let later = cookie.replacen(
            &session.expires.to_string(),
            &(session.expires + 1000).to_string(),
            1,
        );
        assert!(sessions.verify(&later).is_none(), "a lengthened expiry");
        assert!(sessions.verify("").is_none());
        assert!(sessions.verify("v1.1.2.3.4").is_none());
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let sessions = Sessions::new(TOKEN, Duration::from_secs(60)).unwrap();
        let a = sessions.verify(&sessions.issue()).unwrap();
        let b = sessions.verify(&sessions.issue()).unwrap();
        assert!(sessions.csrf_matches(&a, &sessions.csrf(&a)));
        assert!(!sessions.csrf_matches(&a, &sessions.csrf(&b)));
        assert!(!sessions.csrf_matches(&a, ""));
    }

    #[test]
    fn tokens_are_checked_whole() {
        let sessions = Sessions::new(TOKEN, Duration::from_secs(60)).unwrap();
        assert!(sessions.token_matches(TOKEN));
        assert!(sessions.token_matches(&format!(" {TOKEN}\n")));
        assert!(!sessions.token_matches(&TOKEN[..31]));
        assert!(!sessions.token_matches(""));
        assert!(Sessions::new("short", Duration::from_secs(60)).is_err());
        assert!(generate_token().len() >= MIN_TOKEN_CHARS);
    }
}
