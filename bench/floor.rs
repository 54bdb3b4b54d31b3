//! The benchmark's floor: a bare hyper server that answers every request with the same bytes from memory.
//!
//! `bench-floor ADDR BODY_FILE [NAME:VALUE]...` serves BODY_FILE (the broker's own answer, so the sizes
//! match) as `application/json` on ADDR, with any further headers given (the identity headers of a
//! `/v1/verify` answer, so that both servers send the same bytes), on a runtime shaped like the broker's
//! (two worker threads). Nothing else: no routing, no headers checked, no cache — the least any server
//! can do for this answer.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: bench-floor ADDR BODY_FILE")?
        .parse()?;
    let body = Bytes::from(std::fs::read(
        args.next().ok_or("usage: bench-floor ADDR BODY_FILE")?,
    )?);
    let mut extra = Vec::new();
    for arg in args {
        let (name, value) = arg.split_once(':').ok_or("a header is NAME:VALUE")?;
        extra.push((
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            hyper::header::HeaderValue::from_str(value.trim())?,
        ));
    }
    let extra = std::sync::Arc::new(extra);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let extra = extra.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    let extra = extra.clone();
                    async move {
                        let mut response = Response::builder()
                            .header("content-type", "application/json")
                            .header("cache-control", "no-store");
                        for (name, value) in extra.iter() {
                            response = response.header(name, value);
                        }
                        Ok::<_, Infallible>(response.body(Full::new(body)).unwrap_or_default())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
