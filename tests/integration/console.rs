//! The operator console: driven in headless Chromium through ChromeDriver
//! (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/ensure-chromium`), and spoken to over raw HTTP for what a
//! browser would never send.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use customers::pb;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// ChromeDriver and the headless Chromium it drives, in a process group of
/// their own, killed whole on drop (killing ChromeDriver alone leaves
/// Chromium running).
struct Chromium {
    driver: Child,
    browser: Browser,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

async fn chromium() -> Chromium {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the browser tests need Debian's chromium and chromium-driver: run scripts/ensure-chromium"
    );
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let profile = TempDir(std::env::temp_dir().join(format!(
        "customers-console-chromium-{}",
        uuid::Uuid::new_v4().simple()
    )));
    std::fs::create_dir_all(&profile.0).unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last_error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let browser = loop {
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities.clone());
        match builder.connect(&url).await {
            Ok(browser) => break browser,
            Err(e) if tokio::time::Instant::now() < deadline => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no ChromeDriver session: {e} (before: {last_error:?})"),
        }
    };
    Chromium {
        driver,
        browser,
        _profile: profile,
    }
}

async fn text(b: &Browser, css: &str) -> String {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in b.find_all(Locator::Css(css)).await.unwrap() {
        out.push(element.text().await.unwrap());
    }
    out
}

/// Clicks a link or button that loads a page, and waits for the new page
/// (a mark left on the old document is gone, and the new one is loaded).
async fn click(b: &Browser, css: &str) {
    b.execute("window.__before_click = true", vec![])
        .await
        .unwrap();
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = b
            .execute(
                "return window.__before_click === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new page after clicking {css}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn type_into(b: &Browser, css: &str, value: &str) {
    let input = b
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// The path of the page the browser shows, with its query.
async fn location(b: &Browser) -> String {
    let url = b.current_url().await.unwrap();
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn get_customer(svc: &TestService, id: &str) -> pb::Customer {
    get_by_id(&mut svc.client.clone(), id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_browses_and_manages_customers_in_a_real_browser() {
    let svc = TestService::start().await;
    let mut client = svc.client.clone();
    let mut ids = Vec::new();
    for i in 0..44 {
        let mut c = customer(&format!("user{i:02}@example.com"));
        c.name = format!("User {i:02}");
        if i % 4 == 0 {
            c.metadata.insert("plan".into(), "pro".into());
        }
        ids.push(create_new(&mut client, c).await.id);
    }
    let mut xss = customer("xss@example.com");
    xss.name = "<script>alert(1)</script>".into();
    let xss = create_new(&mut client, xss).await;
    let (other_app, mut other_client) = other_app(&svc).await;
    let foreign = create_new(&mut other_client, customer("foreign@example.com")).await;

    let (address, token) = svc.start_console(20).await;
    let base = format!("http://{address}");
    let app = customers::domain::AppId::DEFAULT;
    let customers_url = format!("{base}/admin/apps/{app}/customers");
    let chromium = chromium().await;
    let b = &chromium.browser;

    // Without a session: the login page; a wrong token is refused.
    b.goto(&customers_url).await.unwrap();
    assert_eq!(location(b).await, "/admin/login");
    type_into(
        b,
        "input[name=token]",
        "not-the-token-not-the-token-not-the-token",
    )
    .await;
    click(b, "form.login button").await;
    assert!(text(b, ".flash.refused").await.contains("not valid"));
    type_into(b, "input[name=token]", &token).await;
    click(b, "form.login button").await;
    assert_eq!(text(b, "h1").await, "Apps");
    assert_eq!(location(b).await, "/admin/apps");
    let apps = texts(b, "main td a").await;
    assert!(
        apps.contains(&"default".to_owned()) && apps.contains(&"other".to_owned()),
        "{apps:?}"
    );
    click(b, &format!("a[href='/admin/apps/{app}/customers']")).await;

    // Paging: 45 customers, newest first, 20 a page, by keyset position.
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        text(b, "h1").await;
        let emails = texts(b, "table.customers tbody td:first-child").await;
        pages += 1;
        seen.extend(emails);
        if b.find(Locator::Css("a.next")).await.is_err() {
            break;
        }
        click(b, "a.next").await;
        let here = location(b).await;
        assert!(
            here.contains("after=cus_") && !here.contains("offset"),
            "{here}"
        );
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> = (0..44).map(|i| format!("user{i:02}@example.com")).collect();
    expected.push("xss@example.com".into());
    expected.reverse();
    assert_eq!(seen, expected, "every customer once, newest first");

    // The first page, for the README.
    b.goto(&customers_url).await.unwrap();
    text(b, "table.customers").await;
    std::fs::write(
        screenshot_path("customers.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    // Search (the indexed free-text query) and filters.
    type_into(b, "input[name=q]", "user07").await;
    click(b, "form.filters button").await;
    text(b, "h1").await;
    assert_eq!(
        texts(b, "table.customers tbody td:first-child").await,
        ["user07@example.com"]
    );
    b.goto(&format!("{customers_url}?meta_key=plan&meta_value=pro"))
        .await
        .unwrap();
    text(b, "h1").await;
    assert_eq!(
        texts(b, "table.customers tbody tr").await.len(),
        11,
        "every fourth of 44 has plan=pro"
    );
    b.goto(&format!("{customers_url}?email=USER08@example.com"))
        .await
        .unwrap();
    text(b, "h1").await;
    assert_eq!(
        texts(b, "table.customers tbody td:first-child").await,
        ["user08@example.com"]
    );

    // A name that is markup renders as text, and runs nothing.
    b.goto(&format!("{customers_url}?q=xss")).await.unwrap();
    assert_eq!(
        text(b, "table.customers tbody td:nth-child(2)").await,
        "<script>alert(1)</script>"
    );
    b.goto(&format!("{customers_url}/{}", xss.id))
        .await
        .unwrap();
    assert_eq!(text(b, "dd.name").await, "<script>alert(1)</script>");
    let scripts = b
        .execute("return document.scripts.length", vec![])
        .await
        .unwrap();
    assert_eq!(scripts, serde_json::json!(0));
    assert!(b.get_alert_text().await.is_err(), "no alert may be open");

    // A detail page, for the README too.
    b.goto(&format!("{customers_url}?q=user07")).await.unwrap();
    click(
        b,
        &format!("a[href='/admin/apps/{app}/customers/{}']", ids[7]),
    )
    .await;
    assert_eq!(text(b, "dd.email").await, "user07@example.com");
    let before = get_customer(&svc, &ids[7]).await;
    assert_eq!(text(b, "code.etag").await, before.etag);
    std::fs::write(
        screenshot_path("customer.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    // Edit with a stale etag: someone else writes first; nothing is
    // overwritten, and the operator's edit is kept in the form.
    type_into(b, "form.edit input[name=name]", "Edited in the console").await;
    let mut changed = before.clone();
    changed.name = "Changed through the API".into();
    update(&mut client, changed, &["name"]).await.unwrap();
    click(b, "form.edit button").await;
    assert!(
        text(b, ".flash.refused").await.contains("someone changed"),
        "a conflict is shown"
    );
    assert_eq!(
        get_customer(&svc, &ids[7]).await.name,
        "Changed through the API"
    );
    let kept = b
        .find(Locator::Css("form.edit input[name=name]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("Edited in the console"));

    // Reloaded, the same edit saves; it is in the history.
    let detail_url = format!("{customers_url}/{}", ids[7]);
    b.goto(&detail_url).await.unwrap();
    type_into(b, "form.edit input[name=name]", "Edited in the console").await;
    type_into(
        b,
        "form.edit textarea[name=metadata]",
        "tier=gold\nregion=eu",
    )
    .await;
    click(b, "form.edit button").await;
    assert_eq!(text(b, ".flash.done").await, "Saved.");
    let saved = get_customer(&svc, &ids[7]).await;
    assert_eq!(saved.name, "Edited in the console");
    assert_eq!(saved.metadata.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(saved.metadata.len(), 2, "metadata replaced as edited");
    let events = texts(b, "section.history tbody td:nth-child(2)").await;
    assert_eq!(events, ["updated", "updated", "created"], "newest first");

    // Invalid input: named, nothing written.
    type_into(b, "form.edit input[name=email]", "not-an-email").await;
    click(b, "form.edit button").await;
    assert!(
        text(b, "ul.violations").await.contains("customer.email"),
        "the bad field is named"
    );
    assert_eq!(get_customer(&svc, &ids[7]).await.etag, saved.etag);

    // A forged form (its CSRF token replaced) is refused.
    b.goto(&detail_url).await.unwrap();
    text(b, "h1").await;
    b.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged')",
        vec![],
    )
    .await
    .unwrap();
    click(b, "section.archive button").await;
    assert!(text(b, "p.message").await.contains("security token"));
    assert_eq!(
        get_customer(&svc, &ids[7]).await.state,
        pb::customer::State::Active as i32
    );

    // Archive.
    b.goto(&detail_url).await.unwrap();
    click(b, "section.archive button").await;
    assert_eq!(text(b, ".flash.done").await, "Archived.");
    assert_eq!(text(b, "dd.lifecycle").await, "archived");
    assert_eq!(
        get_customer(&svc, &ids[7]).await.state,
        pb::customer::State::Archived as i32
    );

    // Erase: only with the customer's email typed.
    type_into(b, "input[name=confirm_email]", "someone-else@example.com").await;
    click(b, "section.erase button").await;
    assert!(text(b, ".flash.refused").await.contains("Not erased"));
    assert_eq!(
        get_customer(&svc, &ids[7]).await.email,
        "user07@example.com"
    );
    type_into(b, "input[name=confirm_email]", "user07@example.com").await;
    click(b, "section.erase button").await;
    assert!(text(b, ".flash.done").await.starts_with("Erased"));
    let erased = get_customer(&svc, &ids[7]).await;
    assert_eq!(erased.state, pb::customer::State::Deleted as i32);
    assert_eq!(erased.email, "");
    assert!(!b.source().await.unwrap().contains("user07@example.com"));

    // Another app's customer is not reachable through this app, nor this
    // app's through the other.
    b.goto(&format!("{customers_url}/{}", foreign.id))
        .await
        .unwrap();
    assert_eq!(text(b, "h1").await, "404 Not Found");
    b.goto(&format!(
        "{base}/admin/apps/{other_app}/customers/{}",
        ids[8]
    ))
    .await
    .unwrap();
    assert_eq!(text(b, "h1").await, "404 Not Found");

    // Keys: create (shown once, and it works), then revoke.
    b.goto(&format!("{base}/admin/apps/{app}/keys"))
        .await
        .unwrap();
    click(b, "main > form button").await;
    let key = text(b, "code.secret").await;
    let mut with_new_key = crate::common::client(svc.channel.clone(), &key);
    eventually_async(Duration::from_secs(5), "the new key works", || {
        let mut c = with_new_key.clone();
        let id = ids[9].clone();
        async move { get_by_id(&mut c, &id).await.is_ok() }
    })
    .await;
    get_by_id(&mut with_new_key, &ids[9]).await.unwrap();
    b.goto(&format!("{base}/admin/apps/{app}/keys"))
        .await
        .unwrap();
    assert!(
        !b.source().await.unwrap().contains(&key),
        "a key is shown only once"
    );
    let key_id = customers::auth::ApiKey::parse(&key).expect("a key").id;
    click(
        b,
        &format!("form[action='/admin/apps/{app}/keys/{key_id}/revoke'] button"),
    )
    .await;
    assert!(text(b, ".flash.done").await.starts_with("Revoked"));
    assert_eq!(
        svc.count(&format!(
            "api_keys WHERE id = '{}' AND expire_time <= now()",
            key_id.0
        ))
        .await,
        1
    );

    // Rotate the test's own key with a one-hour overlap: a new key is shown,
    // and the old one expires in an hour, not now.
    let old_id = customers::auth::ApiKey::parse(&svc.key).expect("a key").id;
    let rotate = format!("form[action='/admin/apps/{app}/keys/{old_id}/rotate']");
    type_into(b, &format!("{rotate} input[name=overlap]"), "1h").await;
    click(b, &format!("{rotate} button")).await;
    assert!(text(b, ".flash.done").await.starts_with("Rotated"));
    let rotated = text(b, "code.secret").await;
    assert_ne!(rotated, svc.key);
    assert_eq!(
        svc.count(&format!(
            "api_keys WHERE id = '{}' AND expire_time BETWEEN now() + interval '59 minutes' \
             AND now() + interval '61 minutes'",
            old_id.0
        ))
        .await,
        1
    );
    get_by_id(&mut client, &ids[9])
        .await
        .expect("the old key still works");

    // Sign out: the console is closed again.
    click(b, "form.logout button").await;
    text(b, "form.login").await;
    b.goto(&customers_url).await.unwrap();
    assert_eq!(location(b).await, "/admin/login");
    chromium.browser.clone().close().await.unwrap();
}

/// One HTTP/1.1 exchange over a fresh connection: status, headers (lower
/// case), body.
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The values of a response header (names compare case-insensitively).
fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// The `name=value` of the session cookie a sign-in response sets.
fn session_cookie(head: &str) -> String {
    header(head, "set-cookie")[0]
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_refuses_what_no_signed_in_form_sends() {
    let svc = TestService::start().await;
    let mut client = svc.client.clone();
    let mut named = customer("mallory@example.com");
    named.name = "<img src=x onerror=alert(1)>".into();
    let target = create_new(&mut client, named).await;
    let (address, token) = svc.start_console(20).await;
    let app = customers::domain::AppId::DEFAULT;
    let detail = format!("/admin/apps/{app}/customers/{}", target.id);
    let origin = format!("http://{address}");

    // No session: pages send to the login, forms are refused.
    let (status, head, _) = http(address, "GET", &detail, &[], "").await;
    assert_eq!(status, 303);
    assert_eq!(header(&head, "location"), ["/admin/login"]);
    let (status, _, _) = http(
        address,
        "POST",
        &format!("{detail}/archive"),
        &[("origin", &origin)],
        &format!("etag={}", target.etag),
    )
    .await;
    assert_eq!(status, 403);

    // The login link signs in; the cookie is HttpOnly, SameSite=Strict, and
    // Secure behind TLS.
    let login = format!("/admin/login?token={token}");
    let (status, head, _) = http(address, "GET", &login, &[], "").await;
    assert_eq!(status, 303);
    let cookie = header(&head, "set-cookie")[0].to_ascii_lowercase();
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("secure"), "plain HTTP: {cookie}");
    let session = session_cookie(&head);
    let (_, tls_head, _) = http(
        address,
        "GET",
        &login,
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    assert!(
        header(&tls_head, "set-cookie")[0]
            .to_ascii_lowercase()
            .contains("secure")
    );
    let (status, _, _) = http(address, "GET", "/admin/login?token=wrong", &[], "").await;
    assert_eq!(status, 401);

    // Signed in: the page escapes markup and sends a strict policy.
    let (status, head, body) = http(address, "GET", &detail, &[("cookie", &session)], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!body.contains("<img"));
    let csp = header(&head, "content-security-policy")[0];
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"));
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // A form without the CSRF token, with another's, or from another
    // origin: refused, and nothing changes.
    let archive = format!("{detail}/archive");
    for (headers, body) in [
        (
            vec![("cookie", session.as_str()), ("origin", origin.as_str())],
            format!("etag={}", target.etag),
        ),
        (
            vec![("cookie", session.as_str()), ("origin", origin.as_str())],
            format!("etag={}&csrf=AAAA{}", target.etag, &csrf[4..]),
        ),
        (
            vec![
                ("cookie", session.as_str()),
                ("origin", "http://evil.example"),
            ],
            format!("etag={}&csrf={csrf}", target.etag),
        ),
        (
            vec![("cookie", session.as_str())],
            format!("etag={}&csrf={csrf}", target.etag),
        ),
    ] {
        let (status, _, _) = http(address, "POST", &archive, &headers, &body).await;
        assert_eq!(status, 403, "{headers:?} {body}");
    }
    assert_eq!(
        get_by_id(&mut client, &target.id).await.unwrap().state,
        pb::customer::State::Active as i32
    );
    // The genuine form works.
    let (status, head, _) = http(
        address,
        "POST",
        &archive,
        &[("cookie", &session), ("origin", &origin)],
        &format!("etag={}&csrf={csrf}", urlencode(&target.etag)),
    )
    .await;
    assert_eq!(status, 303, "{head}");
    assert_eq!(
        get_by_id(&mut client, &target.id).await.unwrap().state,
        pb::customer::State::Archived as i32
    );
    // Unknown ids and apps are 404, never 500.
    for path in [
        format!("/admin/apps/{app}/customers/cus_nonsense"),
        "/admin/apps/app_nonsense/customers".to_owned(),
        format!(
            "/admin/apps/{}/customers",
            customers::domain::AppId(uuid::Uuid::now_v7())
        ),
    ] {
        let (status, _, _) = http(address, "GET", &path, &[("cookie", &session)], "").await;
        assert_eq!(status, 404, "{path}");
    }
    // A bad filter is named, not a failure.
    let (status, _, body) = http(
        address,
        "GET",
        &format!("/admin/apps/{app}/customers?from=yesterday"),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("<code>from</code>"));
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned()
}

/// The real binary's console: its access log names routes, never the
/// emails or search terms in paths and queries.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_access_log_carries_no_personal_data() {
    let database = fresh_database().await;
    let token_file = std::env::temp_dir().join(format!(
        "customers-admin-token-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let token = customers::console::generate_token();
    std::fs::write(&token_file, &token).unwrap();
    let port = free_port();
    let admin_port = free_port();
    let log = std::env::temp_dir().join(format!(
        "customers-console-log-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut service = Process::start(
        &[
            ("DATABASE_URL", &database.url),
            ("CUSTOMERS_LISTEN", &format!("127.0.0.1:{port}")),
            ("CUSTOMERS_ADMIN_LISTEN", &format!("127.0.0.1:{admin_port}")),
            ("CUSTOMERS_ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
            ("CUSTOMERS_LOG_FORMAT", "json"),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let address: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    eventually_async(Duration::from_secs(30), "the console answers", || async {
        tokio::net::TcpStream::connect(address).await.is_ok()
    })
    .await;
    let (status, head, _) = http(
        address,
        "GET",
        &format!("/admin/login?token={token}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 303);
    let session = session_cookie(&head);
    let app = customers::domain::AppId::DEFAULT;
    let secret = "private-person@example.com";
    let (status, _, body) = http(
        address,
        "GET",
        &format!("/admin/apps/{app}/customers?q=private-person&email={secret}"),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(secret), "the page shows the filter it ran");
    service.signal(nix::sys::signal::Signal::SIGTERM);
    service.exit(Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&token_file);
    assert!(
        text.contains("/admin/apps/{app}/customers"),
        "the route is logged: {text}"
    );
    assert!(!text.contains("private-person"), "{text}");
    assert!(!text.contains(&token), "the token is never logged");
}
