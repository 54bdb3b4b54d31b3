//! The benchmark's floor: a bare hyper server that answers every request with the same bytes from memory.
//!
//! `bench-floor ADDR BODY_FILE` serves BODY_FILE (the broker's own token answer, so the sizes match) as
//! `application/json` on ADDR, on a runtime shaped like the broker's (two worker threads). Nothing else:
//! no routing, no headers checked, no cache — the least any server can do for this answer.

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
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .header("cache-control", "no-store")
                                .body(Full::new(body))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
