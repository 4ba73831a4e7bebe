//! Against a database as production runs it: the service logs in as a role
//! that owns nothing (row-level security applies to it), and the owner
//! migrates.

use customers::{domain::AppId, pb, storage};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tonic::Code;

use crate::common::*;

/// `url` with its user replaced.
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (_, host) = rest.rsplit_once('@').unwrap();
    format!("{scheme}://{user}@{host}")
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_as_a_login_that_owns_nothing() {
    let database = fresh_database().await;
    // The test cluster trusts local logins: LOGIN is all the role needs.
    let mut owner = AsyncPgConnection::establish(&database.url).await.unwrap();
    let owner = &mut owner;
    owner
        .batch_execute("ALTER ROLE customers_service LOGIN")
        .await
        .unwrap();
    let service_url = as_user(&database.url, storage::SERVICE_ROLE);
    let svc = TestService::start_on(service_url.clone(), Options::default()).await;
    // Keys are the owner's to write.
    let key = create_key(&database.url, AppId::DEFAULT).await;
    let mut client = client(svc.channel.clone(), &key);

    let mut c = customer("least@example.com");
    c.external_id = Some("least-1".into());
    c.provider_ids.insert("stripe".into(), "cus_least".into());
    let c = create_new(&mut client, c).await;
    assert_eq!(get_by_id(&mut client, &c.id).await.unwrap(), c);
    let mut p = patch(&c.id);
    p.name = "Least".into();
    let updated = update(&mut client, p, &[]).await.unwrap();
    let listed = list(
        &mut client,
        pb::ListCustomersRequest {
            query: "least".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed, [updated]);

    // Logged in as the role, without Citus, and with no deadline nearer
    // than the session's statement_timeout, a transaction's scope sets the
    // app alone (`storage::scope_sql_for`)...
    assert_eq!(
        svc.pool.session(),
        Some(&storage::Session {
            service_login: true,
            citus: !citus_workers().is_empty(),
            statement_timeout_ms: storage::PoolOptions::default()
                .statement_timeout
                .as_millis(),
        })
    );
    // ... and a call's deadline still bounds it: an update that the
    // owner's row lock blocks ends at its deadline, its statement gone.
    let uuid =
        c.id.parse::<customers::domain::CustomerId>()
            .unwrap()
            .uuid();
    owner
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM customers WHERE id = '{uuid}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            id: c.id.clone(),
            name: "Blocked".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(std::time::Duration::from_millis(300));
    assert_error(
        client.update_customer(request).await,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    assert_eq!(
        count_on(
            owner,
            "SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND usename = 'customers_service'
               AND wait_event_type = 'Lock'",
        )
        .await,
        0
    );
    owner.batch_execute("ROLLBACK").await.unwrap();
    archive(&mut client, &c.id, "").await.unwrap();
    delete(&mut client, &c.id, "").await.unwrap();

    // Every backend of the service ran as the role, none as the owner.
    let as_role = count_on(
        owner,
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'customers'
           AND usename = 'customers_service'",
    )
    .await;
    let as_other = count_on(
        owner,
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'customers'
           AND usename <> 'customers_service'",
    )
    .await;
    assert!(as_role > 0);
    assert_eq!(as_other, 0);

    // The login itself: row-level security applies (no app set, no rows),
    // and it can neither write keys nor change the schema.
    let mut login = AsyncPgConnection::establish(&service_url).await.unwrap();
    let login = &mut login;
    assert_eq!(
        count_on(login, "SELECT count(*) AS n FROM customers").await,
        0
    );
    for forbidden in [
        "INSERT INTO api_keys (app_id, id, prefix, secret_hash)
         VALUES ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'x', '')",
        "ALTER TABLE customers DISABLE ROW LEVEL SECURITY",
        "DROP POLICY app_isolation ON customers",
    ] {
        let error = login.batch_execute(forbidden).await.unwrap_err();
        assert!(
            error.to_string().contains("permission denied")
                || error.to_string().contains("must be owner"),
            "{forbidden}: {error}"
        );
    }
    // Another app's key does not see this app's customers either.
    let other = customers::storage::apps::create_app(
        &storage::pool(&database.url, &Default::default()).unwrap(),
        "other",
    )
    .await
    .unwrap()
    .app_id();
    let other_key = create_key(&database.url, other).await;
    let mut other_client = crate::common::client(svc.channel.clone(), &other_key);
    assert_error(
        get_by_id(&mut other_client, &c.id).await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
    drop(svc);
}

/// A CA, and a certificate for "localhost" that it signed: (CA PEM, server
/// certificate PEM, server key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

/// `customers migrate` against `url`: the exit code and stderr.
fn migrate(url: &str) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_customers"))
        .args(["migrate", "--database-url", url])
        .env_remove("DATABASE_URL")
        .env_remove("CUSTOMERS_MIGRATE_DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The lines of stderr that report an error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_to_a_postgres_that_requires_tls_as_libpq_would() {
    use customers::embedded_pg::{Cluster, ClusterOptions, ServerTls};
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    let root = std::env::temp_dir().join(format!("customers-tls-{}", uuid::Uuid::new_v4()));
    let cluster = tokio::task::spawn_blocking({
        let root = root.clone();
        move || {
            Cluster::start(&ClusterOptions {
                root,
                throwaway: true,
                port: None,
                tls: Some(ServerTls {
                    cert_pem: cert,
                    key_pem: key,
                    required: true,
                }),
            })
        }
    })
    .await
    .unwrap()
    .unwrap();
    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let other_ca_file = root.join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca).unwrap();
    let ca_file = ca_file.display();
    let other_ca_file = other_ca_file.display();
    let base = cluster.url("postgres"); // postgres://postgres@127.0.0.1:PORT/postgres
    let port = base.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    // Connects: encryption only; the chain; the chain and the name.
    for good in [
        url("127.0.0.1", "sslmode=require"),
        url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca_file}"),
        ),
        url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca_file}"),
        ),
        url(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={ca_file}"),
        ),
    ] {
        let (code, stderr) = migrate(&good);
        assert_eq!(code, 0, "{good}: {stderr}");
    }
    // Refused, each with one line naming the setting.
    for (bad, says) in [
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other_ca_file}"),
            ),
            "sslmode=verify-full",
        ),
        // libpq: require with a root certificate verifies the chain.
        (
            url(
                "localhost",
                &format!("sslmode=require&sslrootcert={other_ca_file}"),
            ),
            "sslrootcert=",
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca_file}"),
            ),
            "sslmode=verify-full",
        ),
        (url("127.0.0.1", "sslmode=disable"), "sslmode=disable"),
        (url("127.0.0.1", "sslmode=verify-full"), "needs sslrootcert"),
    ] {
        let (code, stderr) = migrate(&bad);
        assert_ne!(code, 0, "{bad} connected");
        let errors = error_lines(&stderr);
        assert_eq!(errors.len(), 1, "{bad}: {stderr}");
        assert!(errors[0].contains(says), "{bad}: {stderr}");
    }

    // The service itself, pool and readiness, over verified TLS.
    let secure = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let mut svc = TestService::start_on(secure, Options::default()).await;
    let c = create_new(&mut svc.client, customer("tls@example.com")).await;
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    // Readiness pings over its own TLS connection, and becomes SERVING.
    let mut watch = tonic_health::pb::health_client::HealthClient::new(svc.channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "customers.v1.CustomerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    health_becomes(
        &mut watch,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        std::time::Duration::from_secs(10),
    )
    .await;
    drop(svc);
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(root);
}

/// A real PgBouncer in transaction pooling mode in front of the test
/// cluster, stopped when dropped.
struct PgBouncer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PgBouncer {
    /// Starts PgBouncer (installed by `scripts/ensure-postgres`) for the
    /// server of `database_url`, and waits until it accepts connections.
    async fn start(database_url: &str) -> PgBouncer {
        let server_port = database_url
            .rsplit_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("customers-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // As root, PgBouncer runs as postgres, which writes its log here.
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        }
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {auth}\npool_mode = transaction\n\
                 max_client_conn = 500\ndefault_pool_size = 8\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {log}\n",
                auth = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.txt"),
            "\"postgres\" \"\"\n\"customers_service\" \"\"\n",
        )
        .unwrap();
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed: run scripts/ensure-postgres");
        let config = dir.join("pgbouncer.ini");
        // PgBouncer refuses to run as root.
        let mut command = if nix::unistd::Uid::effective().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", binary]).arg(&config);
            c
        } else {
            let mut c = std::process::Command::new(binary);
            c.arg(&config);
            c
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        PgBouncer { child, port, dir }
    }

    /// `database_url` with the pooler's port.
    fn url(&self, database_url: &str) -> String {
        let (head, db) = database_url.rsplit_once('/').unwrap();
        let (userinfo, _) = head.rsplit_once('@').unwrap();
        format!("{userinfo}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to pgbouncer.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_through_pgbouncer_in_transaction_mode() {
    let database = fresh_database().await;
    let pgbouncer = PgBouncer::start(&database.url).await;
    let mut svc = TestService::start_on(
        pgbouncer.url(&database.url),
        Options {
            pool: customers::storage::PoolOptions {
                max_size: 16,
                transaction_pooler: true,
                ..Default::default()
            },
            stream: customers::service::StreamOptions {
                batch_size: 50,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    // Keys are written straight to PostgreSQL (by the owner, as in
    // production); the service reads them through the pooler.
    let key = create_key(&database.url, customers::domain::AppId::DEFAULT).await;
    svc.client = client(svc.channel.clone(), &key);
    seed(&database.url, 1_000).await;

    // Every RPC, many times over, on 16 client connections that share 8
    // server connections: statements prepared in one transaction must not
    // be looked for in another.
    let mut c = customer("bouncer@example.com");
    c.external_id = Some("bouncer-1".into());
    c.provider_ids.insert("stripe".into(), "cus_bouncer".into());
    let c = create_new(&mut svc.client, c).await;
    let calls = (0..32).map(|i| {
        let mut client = svc.client.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                let mut p = patch(&id);
                p.metadata.insert(format!("k{i}"), round.to_string());
                update(&mut client, p, &[]).await.unwrap();
                assert_eq!(get_by_id(&mut client, &id).await.unwrap().id, id);
                let again = create(&mut client, customer("bouncer@example.com"))
                    .await
                    .unwrap();
                assert!(!again.created);
                create_new(&mut client, customer(&format!("b{i}-{round}@example.com"))).await;
            }
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap();
    }
    let all = list(&mut svc.client, Default::default()).await.unwrap();
    assert_eq!(all.len(), 1 + 1_000 + 32 * 5);
    let found = list(
        &mut svc.client,
        pb::ListCustomersRequest {
            query: "bouncer".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].metadata.len(), 32);
    archive(&mut svc.client, &c.id, "").await.unwrap();
    delete(&mut svc.client, &c.id, "").await.unwrap();
    assert_error(
        create(&mut svc.client, {
            let mut taken = customer("b0-0@example.com");
            taken.external_id = Some("fresh".into());
            taken
        })
        .await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    drop(svc);
    drop(pgbouncer);
}
