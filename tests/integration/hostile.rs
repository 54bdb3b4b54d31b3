//! A hostile or careless local client: oversized headers and bodies, a slowloris, idle connections at the
//! cap, unknown methods and paths, path tricks, huge entity ids, forced-refresh storms. Each gets a bounded,
//! correct answer, and the broker keeps serving everyone else meanwhile.

use std::time::Duration;

use crate::common::*;
use aa_token_broker::http::server::ServerLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh connection and returns the status code of the answer. The server may answer
/// and stop reading before the request is all sent, so the answer is read whether or not the write
/// completed; a connection closed without an answer fails the test.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Up to the end of the head is enough: a reset after it (the request's unread rest) loses nothing.
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
        }
    }
    let status = std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok());
    status.unwrap_or_else(|| {
        panic!(
            "the connection was closed without an answer: {:?}",
            String::from_utf8_lossy(&response)
        )
    })
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_and_unknown_routes_never_yield_a_token() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let long_id = format!("/v1/token/{}", "A".repeat(6000));
    let cases = [
        "/v1/token/../../etc/passwd",
        "/v1/token/..%2F..%2Fmetrics",
        "/v1/token/FIU-TEST%2F..",
        "/v1/token/FIU-TEST/../../healthz",
        "/v1/tokens",
        "/V1/TOKEN",
        "/v1/token/%FF%FE",
        "/v1/token/FIU-TEST/refresh/extra",
        "//v1/token",
        "/v1/token?entity=FIU-TEST&x=%00",
        long_id.as_str(),
    ];
    for path in cases {
        let status = raw(broker.addr, &get(path)).await;
        // `/v1/token?…` is the token route with a query string, which is ignored: the only allowed 200.
        if path.starts_with("/v1/token?") {
            assert_eq!(status, 200, "{path}");
        } else {
            assert!(
                matches!(status, 400 | 404 | 405 | 414 | 431),
                "{path}: {status}"
            );
        }
    }
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"] {
        let request = format!(
            "{method} /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        );
        let status = raw(broker.addr, request.as_bytes()).await;
        assert!(matches!(status, 400 | 405), "{method}: {status}");
    }
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused_and_others_are_served() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let huge_header = format!(
        "GET /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let status = raw(broker.addr, huge_header.as_bytes()).await;
    assert!(matches!(status, 431 | 400), "oversized head: {status}");
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!(
        "GET /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n{many_headers}Connection: close\r\n\r\n"
    );
    let status = raw(broker.addr, request.as_bytes()).await;
    assert!(matches!(status, 431 | 400), "too many headers: {status}");
    let body = format!(
        "POST /v1/token/refresh HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        1 << 20,
        "x".repeat(1 << 16)
    );
    assert_eq!(raw(broker.addr, body.as_bytes()).await, 413);
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    broker.stop().await;
}

/// On a paused clock: the header deadline and the slowloris's half-second pauses pass at once.
#[tokio::test(start_paused = true)]
async fn a_slowloris_is_cut_off_and_idle_connections_cannot_pin_the_cap() {
    let iam = Iam::start(86_400).await;
    let mut options = BrokerOptions::inline();
    options.limits = ServerLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    let addr = broker.addr;
    // Polled with a client of its own, dropped before the test: the harness's pooled connection would
    // take one of the 8 slots.
    let client = http_client();
    let url = format!("http://{addr}/v1/token");
    let ready = tokio::time::Instant::now();
    while client
        .get(&url)
        .guarded()
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(ready.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);

    // A slowloris: one header byte a second. The header deadline closes the connection.
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        for byte in b"GET /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n".iter() {
            if stream.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
            {
                return started.elapsed();
            }
        }
        Duration::MAX
    });
    // Fill the connection cap with idle connections that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A well-behaved client still gets its token: idle connections are cut at the header deadline.
    let started = tokio::time::Instant::now();
    let status = raw(addr, &get("/v1/token")).await;
    assert_eq!(
        status, 200,
        "a normal client was starved by idle connections"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let cut_after = slow.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(20),
        "the slowloris was never cut off"
    );
    drop(idle);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_refresh_storm_makes_at_most_one_call_per_window() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let before = iam.token_calls();
    let mut storm = Vec::new();
    for _ in 0..300 {
        let client = broker.client().clone();
        let url = broker.url("/v1/token/refresh");
        storm.push(tokio::spawn(async move {
            client
                .post(url)
                .guarded()
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for request in storm {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        iam.token_calls() - before,
        1,
        "300 forced refreshes inside one window: one upstream call"
    );
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    broker.stop().await;
}
