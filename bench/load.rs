//! Load helpers the benchmark needs beyond wrk, printing one JSON object each:
//!
//! - `bench-load cold URL N` — N concurrent `GET`s, each on its own connection, all started before any
//!   answer can arrive: status counts and the slowest answer.
//! - `bench-load coldstart URL BIN ARGS...` — runs `BIN ARGS...` and measures, from exec, when `/readyz`
//!   first says 200 and when the first token is served; then stops the process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("cold") if args.len() == 3 => runtime.block_on(cold(&args[1], args[2].parse()?)),
        Some("coldstart") if args.len() >= 3 => {
            runtime.block_on(coldstart(&args[1], &args[2], &args[3..]))
        }
        _ => Err("usage: bench-load cold URL N | bench-load coldstart URL BIN ARGS...".into()),
    }
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`).
fn split(url: &str) -> Result<(String, String), Box<dyn std::error::Error>> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_once('/').ok_or("URL has no path")?;
    Ok((authority.to_string(), format!("/{path}")))
}

/// One request on a fresh connection; returns the status code (0 on a transport error).
async fn get(authority: &str, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(authority).await else {
        return 0;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = Vec::with_capacity(2048);
    if stream.read_to_end(&mut response).await.is_err() {
        return 0;
    }
    std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn cold(url: &str, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (authority, path) = split(url)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (authority, path) = (authority.clone(), path.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                (get(&authority, &path).await, t.elapsed())
            })
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (status, took) = task.await?;
        *statuses.entry(status).or_default() += 1;
        slowest = slowest.max(took);
    }
    let statuses: BTreeMap<String, usize> = statuses
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "requests": n, "statuses": statuses, "slowest_ms": slowest.as_secs_f64() * 1e3,
            "wall_ms": started.elapsed().as_secs_f64() * 1e3 })
    );
    Ok(())
}

async fn coldstart(
    url: &str,
    bin: &str,
    args: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let (authority, _) = split(url)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = started + Duration::from_secs(10);
    let mut ready = None;
    while ready.is_none() && Instant::now() < deadline {
        if get(&authority, "/readyz").await == 200 {
            ready = Some(started.elapsed());
        } else {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut token = None;
    while token.is_none() && Instant::now() < deadline {
        if get(&authority, "/v1/token").await == 200 {
            token = Some(started.elapsed());
        }
    }
    child.kill().await?;
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    println!(
        "{}",
        serde_json::json!({ "ready_ms": ms(ready), "first_token_ms": ms(token) })
    );
    Ok(())
}
