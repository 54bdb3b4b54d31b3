//! The inbound half held against an attacker and a heavy user: what a request can make the broker read,
//! hold and compute. Memory is asserted by counting — the body bytes the broker read and the most it held
//! at once, from its own `/metrics` — never by RSS; timing belongs in `bench/`.
//!
//! Each test is one row of the attacks that once took token serving down: a large unauthenticated
//! `/v1/authorize`, a large `/v1/sign` without the guard's header, many large signature checks at once, a
//! body that stalls, a saturated crypto pool, and an absolute-form target naming another host.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::jws::{AA, AA_SECRET, start, start_with};

const MIB: usize = 1024 * 1024;

/// One of the broker's own counters or gauges, read from `/metrics` on the token port.
async fn metric(net: &TestBroker, name: &str) -> u64 {
    let text = net
        .http
        .get(format!("http://{}/metrics", net.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map_or_else(|| panic!("{name} not in /metrics"), |v| v as u64)
}

/// What came back for a raw request.
struct Raw {
    status: u16,
    head: String,
    body: Value,
    /// The server closed the connection after answering.
    closed: bool,
}

/// Sends `head`, then `sent` bytes of body (of whatever length `head` declares), then waits without
/// sending more; reads the answer meanwhile. Write errors (the server stopped reading) are ignored.
async fn raw(addr: SocketAddr, head: String, sent: usize, fill: u8) -> Raw {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![fill; 64 * 1024];
        let mut left = sent;
        while left > 0 {
            let n = left.min(chunk.len());
            if write.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        // Hold the connection open without sending the rest.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let mut response = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                if complete(&response) {
                    // Give the server a moment to close, as it says it will.
                    closed = matches!(
                        tokio::time::timeout(Duration::from_secs(2), read.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    );
                    break;
                }
            }
            Err(_) => break,
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Raw {
        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        closed,
    }
}

/// A whole answer with a `Content-Length` has arrived.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .is_some_and(|len| body.len() >= len)
}

fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_16_mib_authorize_is_refused_after_reading_at_most_the_txnid_scan() {
    let net = start_with(|_, jws| jws.max_body_bytes = 16 * MIB).await;
    let before = metric(&net, "aa_broker_body_bytes_read_total").await;
    // A body that starts with its txnid and goes on for 16 MiB.
    let txnid = "0b811819-9044-4856-b0ee-8c88035f8858";
    let start = format!(r#"{{"txnid":"{txnid}","pad":""#);
    let mut head = post_head("/v1/authorize", 16 * MIB, "");
    head.push_str(&start);
    let answer = raw(net.addr, head, 16 * MIB - start.len(), b'x').await;
    assert_eq!(answer.status, 401, "{}", answer.head);
    assert_eq!(answer.body["errorCode"], "Unauthorized");
    assert_eq!(answer.body["txnid"], txnid);
    let read = metric(&net, "aa_broker_body_bytes_read_total").await - before;
    assert!(
        read <= 256 * 1024,
        "read {read} bytes of an unauthenticated body"
    );
    assert!(metric(&net, "aa_broker_body_buffered_peak_bytes").await <= 256 * 1024);
    // No token and no body: a fresh UUID v4 as the txnid.
    let bare = raw(net.addr, post_head("/v1/authorize", 0, ""), 0, b'x').await;
    assert_eq!(bare.status, 401);
    let fresh = bare.body["txnid"].as_str().unwrap();
    assert_eq!((fresh.len(), &fresh[14..15]), (36, "4"));
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_sign_without_the_metadata_header_is_refused_without_reading_the_body() {
    let net = start_with(|_, jws| jws.max_body_bytes = 16 * MIB).await;
    let before = metric(&net, "aa_broker_body_bytes_read_total").await;
    let answer = raw(
        net.addr,
        post_head("/v1/sign", 16 * MIB, ""),
        16 * MIB,
        b'x',
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body["error"], "forbidden");
    assert_eq!(
        metric(&net, "aa_broker_body_bytes_read_total").await,
        before
    );
    // The same on a route that takes no body at all: 413 before a byte is read.
    let refresh = raw(
        net.addr,
        post_head("/v1/token/refresh", 16 * MIB, "Metadata: true\r\n"),
        16 * MIB,
        b'x',
    )
    .await;
    assert_eq!(refresh.status, 413);
    assert!(refresh.closed, "the unread body closes the connection");
    assert_eq!(
        metric(&net, "aa_broker_body_bytes_read_total").await,
        before
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_large_signature_checks_stay_within_the_body_budget() {
    const BODY: usize = 6 * MIB;
    const BUDGET: usize = 16 * MIB;
    let net = start_with(|settings, jws| {
        jws.max_body_bytes = BODY;
        settings.inbound.max_buffered_bytes = BUDGET;
    })
    .await;
    let mut body =
        br#"{"ver":"2.0.0","txnid":"f1e2d3c4-0000-4000-8000-000000000001","pad":""#.to_vec();
    body.resize(BODY - 2, b'x');
    body.extend_from_slice(b"\"}");
    let body = bytes::Bytes::from(body);
    let signature = net.iam().sim.cr_sign(AA, &body).unwrap();
    let checks: Vec<_> = (0..8)
        .map(|_| {
            let request = net
                .http
                .post(format!(
                    "http://{}/v1/verify-signature?sender={AA}&type=AA",
                    net.addr
                ))
                .header("x-jws-signature", &signature)
                .body(body.clone());
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    let mut verified = 0;
    for check in checks {
        let response = check.await.unwrap().unwrap();
        match response.status().as_u16() {
            200 => verified += 1,
            503 => assert!(response.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(verified >= 1, "at least the first check gets its budget");
    let peak = metric(&net, "aa_broker_body_buffered_peak_bytes").await;
    assert!(
        peak as usize <= BUDGET,
        "held {peak} bytes at once, over the {BUDGET}-byte budget"
    );
    assert!(peak as usize >= BODY, "the largest body was counted");
    assert_eq!(metric(&net, "aa_broker_body_buffered_bytes").await, 0);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_stall_are_cut_at_the_deadline_with_408_and_hold_only_what_they_sent() {
    let net = start_with(|settings, jws| {
        jws.max_body_bytes = 2 * MIB;
        settings.inbound.body_timeout = Duration::from_secs(1);
    })
    .await;
    let signature = net.iam().sim.cr_sign(AA, b"{}").unwrap();
    let started = Instant::now();
    let stalls: Vec<_> = (0..40)
        .map(|_| {
            let head = post_head(
                &format!("/v1/verify-signature?sender={AA}&type=AA"),
                MIB,
                &format!("x-jws-signature: {signature}\r\n"),
            );
            tokio::spawn(raw(net.addr, head, 100, b'x'))
        })
        .collect();
    for stall in stalls {
        let answer = stall.await.unwrap();
        assert_eq!(answer.status, 408, "{}", answer.head);
        assert!(answer.head.contains("connection: close"));
        assert!(answer.closed, "the connection is closed after a 408");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Forty stalled uploads held what they sent and the signing input's prefix, not their declared MiB.
    let peak = metric(&net, "aa_broker_body_buffered_peak_bytes").await;
    assert!(peak < 64 * 1024, "held {peak} bytes");
    assert_eq!(metric(&net, "aa_broker_body_buffered_bytes").await, 0);
    assert!(metric(&net, "aa_broker_body_refusals_total{reason=\"timeout\"}").await >= 40);
    // The token port still answers.
    let token = net
        .http
        .get(format!("http://{}/v1/token", net.addr))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_crypto_queue_answers_503_busy_and_tokens_keep_flowing() {
    let net = start_with(|settings, jws| {
        jws.max_body_bytes = 4 * MIB;
        settings.inbound.crypto_threads = 1;
        settings.inbound.crypto_queue = 1;
        // Room for all twelve bodies at once, so the crypto queue is what turns them away (not the
        // body budget, whose waits are the test above's).
        settings.inbound.max_buffered_bytes = 64 * MIB;
    })
    .await;
    let body = bytes::Bytes::from(vec![b'x'; 4 * MIB]);
    let signing: Vec<_> = (0..12)
        .map(|_| {
            let request = net
                .http
                .post(format!("http://{}/v1/sign", net.addr))
                .guarded()
                .body(body.clone());
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Tokens are served from the held token while the pool is saturated.
    for _ in 0..20 {
        let token = net
            .http
            .get(format!("http://{}/v1/token", net.addr))
            .guarded()
            .send()
            .await
            .unwrap();
        assert_eq!(token.status(), 200);
    }
    let (mut signed, mut busy) = (0, 0);
    for sign in signing {
        let response = sign.await.unwrap().unwrap();
        match response.status().as_u16() {
            200 => signed += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "busy");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(signed >= 1, "signed {signed}, busy {busy}");
    assert!(
        busy >= 1,
        "a one-slot queue turned nobody away: signed {signed}"
    );
    assert!(metric(&net, "aa_broker_crypto_jobs_total{outcome=\"refused\"}").await >= 1);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_port_route_refuses_an_absolute_form_target_naming_another_host() {
    let net = start().await;
    let token = net.iam().entity_token(AA, AA_SECRET).await;
    // Verified once, so the hot path holds it: the absolute-form check must hold there too.
    let verified = net
        .http
        .get(format!("http://{}/v1/verify", net.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let requests = [
        ("GET", "/v1/verify", "Metadata: true\r\n"),
        ("GET", "/v1/verify/any/path", ""),
        ("POST", "/v1/verify", ""),
        ("GET", "/v1/token", "Metadata: true\r\n"),
        ("POST", "/v1/token/refresh", "Metadata: true\r\n"),
        ("POST", "/v1/sign", "Metadata: true\r\n"),
        ("POST", "/v1/verify-signature?sender=AA-PEER&type=AA", ""),
        ("POST", "/v1/authorize", ""),
        ("GET", "/healthz", ""),
        ("GET", "/readyz", ""),
        ("GET", "/metrics", ""),
        ("GET", "/no/such/route", ""),
    ];
    for (method, path, extra) in requests {
        let head = format!(
            "{method} http://169.254.169.254{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
        );
        let answer = raw(net.addr, head, 0, b'x').await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.head);
    }
    // The same requests naming loopback in the target pass the rule.
    let head = format!(
        "GET http://127.0.0.1/v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(net.addr, head, 0, b'x').await.status, 200);
    net.stop().await;
}
