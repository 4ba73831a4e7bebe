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
