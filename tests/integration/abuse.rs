//! Abuse: connection floods, stream floods, huge headers, malformed
//! requests in bulk, and floods of made-up API keys. Well-behaved clients
//! keep being served.

use std::time::{Duration, Instant};

use customers::{
    auth::ApiKey,
    domain::AppId,
    pb::{self, get_customer_request::Lookup},
    server::ServeOptions,
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{Code, Request};

use crate::common::*;

fn limited(serve: ServeOptions) -> Options {
    Options {
        serve,
        ..Default::default()
    }
}

/// Whether the server closed `stream` (read returns end of file or an
/// error) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server's HTTP/2 preface, if it got so far.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_and_silent_ones_are_closed_and_clients_keep_being_served() {
    let mut svc = TestService::start_with(limited(ServeOptions {
        max_connections: 8,
        handshake_timeout: Duration::from_millis(500),
        ..Options::default().serve
    }))
    .await;
    let c = create_new(&mut svc.client, customer("steady@example.com")).await;
    // The test client holds one connection; 30 silent ones come after it.
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(TcpStream::connect(svc.address).await.unwrap());
    }
    // Those past the limit are closed at once.
    let mut closed_at_once = 0;
    for stream in &mut flood {
        if closed_by_server(stream, Duration::from_millis(100)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 30 - 7,
        "{closed_at_once} of 30 closed at once"
    );
    // The established client is served meanwhile.
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    // The silent ones within the limit are closed after the handshake
    // timeout, which frees their slots for new clients.
    for stream in &mut flood {
        assert!(closed_by_server(stream, Duration::from_secs(3)).await);
    }
    drop(flood);
    let mut fresh = client(small_window_channel(svc.address).await, &svc.key);
    assert_eq!(get_by_id(&mut fresh, &c.id).await.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_gets_a_bounded_number_of_concurrent_calls_and_others_are_not_held_up() {
    let mut svc = TestService::start_with(limited(ServeOptions {
        max_concurrent_streams: 4,
        ..Options::default().serve
    }))
    .await;
    let c = create_new(&mut svc.client, customer("fair@example.com")).await;
    // A greedy client, on a connection of its own, holds four watches open.
    let mut greedy = client(small_window_channel(svc.address).await, &svc.key);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = greedy
            .watch_customer_events(pb::WatchCustomerEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        held.push(stream);
    }
    // Its fifth call waits for a stream slot on its connection...
    let fifth = tokio::spawn({
        let mut greedy = greedy.clone();
        let id = c.id.clone();
        async move { get_by_id(&mut greedy, &id).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fifth.is_finished(), "the fifth call waited for a slot");
    // ...while another client is served at once.
    let started = Instant::now();
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    assert!(started.elapsed() < Duration::from_secs(1));
    // A slot frees: the fifth call goes through.
    drop(held.pop());
    let fifth = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("the fifth call ran once a slot freed")
        .unwrap();
    assert_eq!(fifth.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_header_block_is_refused_and_the_connection_keeps_serving() {
    let mut svc = TestService::start_with(limited(ServeOptions {
        max_header_list_size: 4096,
        ..Options::default().serve
    }))
    .await;
    let c = create_new(&mut svc.client, customer("headers@example.com")).await;
    let mut request = Request::new(pb::GetCustomerRequest {
        lookup: Some(Lookup::Id(c.id.clone())),
    });
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(64 << 10).parse().unwrap());
    let refused = svc.client.get_customer(request).await;
    assert!(refused.is_err(), "a 64 KiB header block was accepted");
    assert_ne!(refused.unwrap_err().code(), Code::Ok);
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_refused_before_decoding() {
    let mut svc = TestService::start().await;
    let huge = pb::Customer {
        email: "huge@example.com".into(),
        name: "x".repeat(5 << 20),
        ..Default::default()
    };
    let refused = create(&mut svc.client, huge).await;
    assert_eq!(refused.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(svc.count("customers").await, 0);
    create_new(&mut svc.client, customer("small@example.com")).await;
}

/// A tiny deterministic generator (xorshift), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A nasty string: NULs, control characters, long runs, odd Unicode,
    /// or something almost valid.
    fn string(&mut self) -> String {
        let pieces = [
            "",
            "\0",
            "a\0b",
            "\u{7}",
            "\r\n",
            "\u{202e}",
            "\u{feff}",
            "é",
            "👩‍👩‍👧",
            " ",
            "cus_",
            "cus_01h2xcejqtf2nbrexx3vqjhp41",
            "evt_",
            "x@example.com",
            "@",
            "+33",
            "%",
            "_",
            "\\",
            "'",
            "\"",
            "`",
            "*",
            "metadata.",
            "address.city",
            "..",
            "\u{ffff}",
        ];
        let mut s = String::new();
        for _ in 0..self.below(6) {
            let piece = pieces[self.below(pieces.len())];
            match self.below(10) {
                0 => s.push_str(&piece.repeat(1 + self.below(3000))),
                _ => s.push_str(piece),
            }
        }
        s
    }

    fn map(&mut self) -> std::collections::BTreeMap<String, String> {
        (0..self.below(4))
            .map(|_| (self.string(), self.string()))
            .collect()
    }

    fn timestamp(&mut self) -> Option<prost_types::Timestamp> {
        match self.below(4) {
            0 => None,
            1 => Some(prost_types::Timestamp {
                seconds: self.next() as i64,
                nanos: self.next() as i32,
            }),
            _ => Some(prost_types::Timestamp {
                seconds: (self.next() % 400_000_000_000) as i64 - 200_000_000_000,
                nanos: (self.next() % 2_000_000_000) as i32 - 1_000_000_000,
            }),
        }
    }

    fn customer(&mut self) -> pb::Customer {
        pb::Customer {
            id: self.string(),
            external_id: (self.below(2) == 0).then(|| self.string()),
            email: self.string(),
            name: self.string(),
            phone: self.string(),
            address: (self.below(2) == 0).then(|| pb::Address {
                line1: self.string(),
                line2: self.string(),
                city: self.string(),
                state: self.string(),
                postal_code: self.string(),
                country: self.string(),
            }),
            timezone: self.string(),
            metadata: self.map(),
            provider_ids: self.map(),
            etag: self.string(),
            state: self.next() as i32 % 6,
            create_time: self.timestamp(),
            ..Default::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_malformed_requests_get_clear_errors_and_never_break_the_connection() {
    let svc = TestService::start_with(limited(ServeOptions {
        auth: customers::auth::AuthOptions {
            rate_per_second: None,
            ..Default::default()
        },
        ..Options::default().serve
    }))
    .await;
    let mut tasks = Vec::new();
    for seed in 1..=4u64 {
        let mut client = svc.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut codes = std::collections::HashMap::<Code, usize>::new();
            for _ in 0..750 {
                let code = match rng.below(6) {
                    0 => client
                        .create_customer(pb::CreateCustomerRequest {
                            customer: (rng.below(8) > 0).then(|| rng.customer()),
                        })
                        .await
                        .map(|_| ()),
                    1 => {
                        let paths = (0..rng.below(5)).map(|_| rng.string()).collect();
                        client
                            .update_customer(pb::UpdateCustomerRequest {
                                customer: Some(rng.customer()),
                                update_mask: Some(prost_types::FieldMask { paths }),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    }
                    2 => {
                        let lookup = match rng.below(3) {
                            0 => Lookup::Id(rng.string()),
                            1 => Lookup::ExternalId(rng.string()),
                            _ => Lookup::ProviderId(pb::ProviderId {
                                provider: rng.string(),
                                id: rng.string(),
                            }),
                        };
                        client
                            .get_customer(pb::GetCustomerRequest {
                                lookup: (rng.below(8) > 0).then_some(lookup),
                            })
                            .await
                            .map(|_| ())
                    }
                    3 => {
                        let request = pb::ListCustomersRequest {
                            email: rng.string(),
                            query: rng.string(),
                            created_after: rng.timestamp(),
                            created_before: rng.timestamp(),
                            metadata: rng.map(),
                            order: rng.next() as i32 % 5,
                            limit: 3,
                            resume_after: rng.string(),
                            ..Default::default()
                        };
                        list(&mut client, request).await.map(|_| ())
                    }
                    4 => {
                        let request = pb::WatchCustomerEventsRequest {
                            resume_token: rng.string(),
                            start_time: rng.timestamp(),
                            customer_id: rng.string(),
                            types: (0..rng.below(4)).map(|_| rng.next() as i32 % 7).collect(),
                        };
                        // A watch that opens is fine too: its first message
                        // comes, then it is dropped.
                        match client.watch_customer_events(request).await {
                            Ok(stream) => stream.into_inner().message().await.map(|_| ()),
                            Err(status) => Err(status),
                        }
                    }
                    _ => {
                        let request = pb::DeleteCustomerRequest {
                            id: rng.string(),
                            etag: rng.string(),
                            external_id: rng.string(),
                        };
                        client.delete_customer(request).await.map(|_| ())
                    }
                }
                .err()
                .map_or(Code::Ok, |status| {
                    assert!(
                        !matches!(
                            status.code(),
                            Code::Internal | Code::Unknown | Code::Unavailable
                        ),
                        "a malformed request got {status:?}"
                    );
                    if status.code() == Code::InvalidArgument {
                        assert!(!bad_fields(Err::<(), _>(status.clone())).is_empty());
                    }
                    status.code()
                });
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
    }
    let mut total = std::collections::HashMap::<Code, usize>::new();
    for task in tasks {
        for (code, n) in task.await.unwrap() {
            *total.entry(code).or_default() += n;
        }
    }
    println!("codes of 3,000 malformed requests: {total:?}");
    assert!(total[&Code::InvalidArgument] > 1500, "{total:?}");
    // The connection carried every call and still serves.
    let mut client = svc.client.clone();
    create_new(&mut client, customer("after-the-storm@example.com")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_keys_cost_the_database_at_most_a_query_a_second() {
    let svc = TestService::start().await;
    let mut good = svc.client.clone();
    let c = create_new(&mut good, customer("keyed@example.com")).await;
    let lookups = |scrape: &str, kind: &str| -> u64 {
        let prefix = format!("customers_auth_lookups_total{{kind=\"{kind}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let before = scrape(&svc).await;
    let started = Instant::now();
    let mut flood = Vec::new();
    // Each refused call waits for the next load of the key ids (at most one a
    // second, shared by every caller), so a flood is slow for the flooder.
    for i in 0..16 {
        let channel = svc.channel.clone();
        flood.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..3 {
                let key = ApiKey::generate(if i % 2 == 0 {
                    AppId::DEFAULT
                } else {
                    AppId(uuid::Uuid::now_v7())
                })
                .reveal();
                let mut bad = client(channel.clone(), &key);
                let result = bad
                    .get_customer(pb::GetCustomerRequest {
                        lookup: Some(Lookup::Id("cus_01h2xcejqtf2nbrexx3vqjhp41".into())),
                    })
                    .await;
                assert_error(result, Code::Unauthenticated, "API_KEY_INVALID");
                refused += 1;
            }
            refused
        }));
    }
    // Good calls go on meanwhile.
    for _ in 0..20 {
        assert_eq!(get_by_id(&mut good, &c.id).await.unwrap(), c);
    }
    let mut refused = 0;
    for task in flood {
        refused += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let after = scrape(&svc).await;
    // No key of its own was looked up; the key ids were loaded at most once
    // a second.
    assert_eq!(lookups(&after, "key"), lookups(&before, "key"));
    let loads = lookups(&after, "key_ids") - lookups(&before, "key_ids");
    assert_eq!(refused, 48);
    let bound = elapsed.as_secs() + 2;
    assert!(
        (1..=bound).contains(&loads),
        "{loads} loads of the key ids for {refused} made-up keys in {elapsed:?}"
    );
}
