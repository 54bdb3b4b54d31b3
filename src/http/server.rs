//! The accept loop: the connection cap, per-connection limits and graceful shutdown.
//!
//! `axum::serve` hides hyper's connection settings, and a sidecar needs them: a cap on concurrent
//! connections (a `Semaphore`, as in mini-redis: at the cap we stop accepting and let the kernel backlog
//! hold new clients), and per connection:
//! - a deadline for request headers, which also closes a keep-alive connection idle that long;
//! - a deadline for writes ([`WriteDeadline`]): a client that pipelines requests and never reads the
//!   answers blocks the server in a write, where the header deadline does not apply; without this, a few
//!   such clients would hold every connection slot for as long as they liked;
//! - a bound on requests ([`super::hot_path::Frontend`] answers the last one with `Connection: close`);
//! - a bound on the header buffer;
//!
//! and on shutdown: stop accepting, let requests in flight finish, then close. When accepting fails
//! (out of file descriptors), the loop backs off and says so once, not once per attempt.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use super::hot_path::Frontend;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// A client must send a request's complete headers within this time.
    pub header_read_timeout: Duration,
    /// Read buffer per connection; also the largest request head accepted (hyper's minimum is 8 KiB).
    pub max_buffer_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// A write that makes no progress for this long (the client stopped reading) closes the connection.
    pub write_timeout: Duration,
    /// Requests served on one connection before it is closed (the last answer says `Connection: close`).
    pub max_requests_per_connection: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            max_buffer_bytes: 8 * 1024,
            shutdown_grace: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_requests_per_connection: 10_000,
        }
    }
}

/// How often a run of failing accepts is reported.
const ACCEPT_ERROR_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between accept attempts after failures (the first pause is 10 ms, doubling).
const ACCEPT_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Frontend,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buffer_bytes.max(8192))
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut accept_errors = AcceptErrors::default();
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    accept_errors.recovered();
                    stream
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and report the run, not each one.
                    let pause = accept_errors.failed(&e);
                    drop(permit);
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = WriteDeadline::new(stream, limits.write_timeout);
        let connection = builder.serve_connection(
            TokioIo::new(io),
            app.for_connection(limits.max_requests_per_connection),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace_s = limits.shutdown_grace.as_secs(), "connections still open after the shutdown grace period; closing them");
        }
    }
}

/// A run of failed accepts: how long to pause before the next, and when to say so.
#[derive(Default)]
struct AcceptErrors {
    consecutive: u32,
    unreported: u64,
    last_report: Option<Instant>,
}

impl AcceptErrors {
    /// Records a failure; returns the pause before the next attempt.
    fn failed(&mut self, error: &io::Error) -> Duration {
        self.consecutive = self.consecutive.saturating_add(1);
        self.unreported += 1;
        let now = Instant::now();
        if self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_REPORT_EVERY)
        {
            tracing::warn!(error = %error, failures = self.unreported, "accepting connections fails (out of file descriptors?); backing off");
            self.unreported = 0;
            self.last_report = Some(now);
        }
        Duration::from_millis(10)
            .saturating_mul(1u32 << self.consecutive.saturating_sub(1).min(10))
            .min(ACCEPT_BACKOFF_CAP)
    }

    fn recovered(&mut self) {
        if self.consecutive > 0 {
            tracing::info!(
                failures = self.unreported,
                "accepting connections works again"
            );
        }
        *self = AcceptErrors {
            last_report: self.last_report,
            ..AcceptErrors::default()
        };
    }
}

/// A connection's byte stream with a deadline on writes: a write (or flush) that makes no progress for
/// `timeout` fails with `TimedOut`, and hyper closes the connection. The timer is armed only while a write
/// is blocked, so the common case — the kernel takes the bytes at once — costs nothing.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a blocked write into an error once it has been blocked for `timeout`.
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its answers",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.pending_or_timed_out(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteDeadline<TcpStream> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline<TcpStream> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progressed(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progressed(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
