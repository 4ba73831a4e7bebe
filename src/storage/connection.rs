//! Opening a connection to PostgreSQL, TLS included, the way libpq reads a
//! URL: `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`), `sslrootcert` (a CA file, or `system` for the platform's
//! roots), and `sslcert`/`sslkey` (a client certificate). tokio-postgres
//! itself knows only `disable`/`prefer`/`require`, verifies nothing, and
//! rejects the rest, so these parameters are read and removed here and
//! rustls is configured from them. libpq's rule holds: `require` with a root
//! certificate verifies the chain, as `verify-ca` does.
//!
//! Every connection the binary makes comes from [`establish`]: the pool,
//! migrations, `customers migrate`, and the admin commands.

use std::{fmt, path::PathBuf, sync::Arc};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first; prefer is the closest.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the roots that verify the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System,
}

/// A URL's connection settings, TLS read as libpq reads it.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    mode: SslMode,
    root: Option<RootCert>,
    tls: MakeRustlsConnect,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("mode", &self.mode)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Undoes a URL's percent-encoding (as libpq does: `+` stays `+`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 3 <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target {
    /// Reads `url`. Errors are one line naming the setting.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        let (mut mode, mut root, mut cert, mut key) = (SslMode::Prefer, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sslmode" => mode = SslMode::parse(&decode(value))?,
                "sslrootcert" => {
                    root = Some(match decode(value).as_str() {
                        "system" => RootCert::System,
                        path => RootCert::File(path.into()),
                    })
                }
                "sslcert" => cert = Some(PathBuf::from(decode(value))),
                "sslkey" => key = Some(PathBuf::from(decode(value))),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("the database URL is not valid: {e}"))?;
        // As a startup parameter, which poolers pass on (a session `SET`
        // would stay on one server connection).
        if config.get_application_name().is_none() {
            config.application_name("customers");
        }
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let verify = match (mode, &root) {
            (SslMode::VerifyFull, Some(_)) => Verify::Full,
            (SslMode::VerifyCa, Some(_)) | (SslMode::Require, Some(_)) => Verify::Chain,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(format!(
                    "sslmode={} needs sslrootcert (a CA file, or \"system\")",
                    mode.name()
                ));
            }
            _ => Verify::Nothing,
        };
        let tls = client_config(verify, root.as_ref(), cert.as_ref(), key.as_ref())?;
        Ok(Target {
            config,
            mode,
            root,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Opens a connection. `transaction_pooler`: the URL leads to a pooler
    /// in transaction mode (see `PoolOptions::transaction_pooler`).
    pub async fn connect(
        &self,
        transaction_pooler: bool,
    ) -> Result<AsyncPgConnection, ConnectionError> {
        let bad = |e: tokio_postgres::Error| ConnectionError::BadConnection(self.explain(&e));
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(bad)?;
        if !transaction_pooler {
            return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
        }
        // diesel's session set-up (`SET TIME ZONE`, `SET CLIENT_ENCODING`)
        // prepares its statements; outside a transaction, a pooler may send
        // a statement's preparation and its execution to different server
        // connections ("prepared statement does not exist"). Run it inside
        // one. (Its settings do not matter: values travel in binary, and the
        // encoding is a startup parameter.)
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        client.batch_execute("BEGIN").await.map_err(bad)?;
        let mut conn = AsyncPgConnection::try_from(client).await?;
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "COMMIT")
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        Ok(conn)
    }

    /// A failed connection's error, naming the TLS settings when they are
    /// in play.
    fn explain(&self, error: &tokio_postgres::Error) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        match (&self.mode, &self.root) {
            (SslMode::Disable | SslMode::Prefer, _) => {
                format!("{text} (sslmode={})", self.mode.name())
            }
            (_, Some(RootCert::File(path))) => format!(
                "{text} (sslmode={}, sslrootcert={})",
                self.mode.name(),
                path.display()
            ),
            (_, Some(RootCert::System)) => {
                format!("{text} (sslmode={}, sslrootcert=system)", self.mode.name())
            }
            (_, None) => format!("{text} (sslmode={})", self.mode.name()),
        }
    }
}

/// Opens a connection to `url` (see the module's doc).
pub async fn establish(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    establish_for(url, false).await
}

/// Opens a connection to `url`, through a pooler in transaction mode or not.
pub async fn establish_for(
    url: &str,
    transaction_pooler: bool,
) -> Result<AsyncPgConnection, ConnectionError> {
    Target::parse(url)
        .map_err(ConnectionError::InvalidConnectionUrl)?
        .connect(transaction_pooler)
        .await
}

/// Opens a connection to `url` (as the pool does: TLS settings included),
/// runs `LISTEN channel` on it, and calls `on_notify` with the payload of
/// each notification until the connection ends (or the caller drops this
/// future). `on_listening` runs once the LISTEN took effect: what was
/// notified before it was missed. Meanwhile the connection also runs each
/// SQL batch `outgoing` yields (the replica's own notifications). Returns
/// why the connection ended.
pub async fn listen<F: Future<Output = String>>(
    url: &str,
    channel: &str,
    on_listening: impl FnOnce(),
    on_notify: impl Fn(&str),
    mut outgoing: impl FnMut() -> F,
) -> String {
    let target = match Target::parse(url) {
        Ok(target) => target,
        Err(e) => return e,
    };
    let (client, mut connection) = match target.config.connect(target.tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => return target.explain(&e),
    };
    // The connection delivers notifications only while it is polled; the
    // LISTEN needs it polled too.
    let messages = async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => on_notify(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "the connection closed".to_owned(),
            }
        }
    };
    let listen = async {
        let quoted = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
        match client.batch_execute(&quoted).await {
            Ok(()) => {
                on_listening();
                loop {
                    let sql = outgoing().await;
                    if let Err(e) = client.batch_execute(&sql).await {
                        return e.to_string();
                    }
                }
            }
            Err(e) => e.to_string(),
        }
    };
    tokio::pin!(messages, listen);
    tokio::select! {
        why = &mut messages => why,
        why = &mut listen => why,
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy)]
enum Verify {
    /// Encryption only (`prefer`, `require` without a root certificate).
    Nothing,
    /// The chain up to a trusted root, not the name (`verify-ca`, or
    /// `require` with a root certificate).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(
    verify: Verify,
    root: Option<&RootCert>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
        Verify::Chain | Verify::Full => {
            let roots = Arc::new(root_store(root.expect("checked by the caller"))?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("sslrootcert: {e}"))?;
            match verify {
                Verify::Full => builder.with_webpki_verifier(webpki),
                _ => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki))),
            }
        }
    };
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("sslcert and sslkey go together".into()),
    }
}

fn root_store(root: &RootCert) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no certificate in the file",
                    path.display()
                ));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("sslrootcert=system: no root certificates on this system".into());
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root; the name may differ
/// (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, not
/// authenticated (libpq's meaning). The handshake's signatures are still
/// checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_and_removed() {
        let t =
            Target::parse("postgres://u:p@db:5432/x?sslmode=disable&application_name=a").unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        let t = Target::parse("postgres://u@db/x").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        let t = Target::parse("postgres://u@db/x?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!((t.mode, t.root), (SslMode::Require, Some(RootCert::System)));
        for (url, says) in [
            ("postgres://u@db/x?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://u@db/x?sslmode=bogus", "sslmode=bogus"),
            (
                "postgres://u@db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert /nonexistent/ca.pem",
            ),
            (
                "postgres://u@db/x?sslmode=require&sslcert=/nonexistent/c.pem",
                "go together",
            ),
        ] {
            let error = Target::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
            assert_eq!(error.lines().count(), 1);
        }
    }

    #[test]
    fn percent_encoding_is_undone() {
        assert_eq!(decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
        assert_eq!(decode("a%zzb"), "a%zzb");
        assert_eq!(decode("50%"), "50%");
    }
}
