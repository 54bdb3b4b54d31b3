//! `healthcheck`: the probe for an image with no shell and no curl. It sends `GET /readyz` (or `/healthz`
//! with `--live`) to the broker's own listen address over a plain blocking socket, and exits 0 on 200,
//! 1 with one line otherwise. `--wait S` keeps trying for up to S seconds (a `postStart` hook uses it to
//! hold an application container until a token exists).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{config_error, failure};
use crate::config::cli::HealthcheckArgs;
use crate::config::{ConfigError, DEFAULT_LISTEN};

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_millis(200);

pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let mut addr = match args.listen {
        Some(addr) => addr,
        None => match DEFAULT_LISTEN.parse() {
            Ok(addr) => addr,
            Err(_) => return config_error(&ConfigError::new("--listen", "bad default")),
        },
    };
    // A broker listening on every address is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let path = if args.live { "/healthz" } else { "/readyz" };
    let wait = match args.wait {
        Some(secs) if secs.is_finite() && (0.0..=3600.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return config_error(&ConfigError::new(
                "--wait",
                "must be between 0 and 3600 seconds",
            ));
        }
        None => Duration::ZERO,
    };
    let deadline = Instant::now() + wait;
    loop {
        match check(addr, path) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(reason) if Instant::now() >= deadline => {
                return failure(format!("GET {path} on {addr}: {reason}"));
            }
            Err(_) => std::thread::sleep(RETRY_EVERY),
        }
    }
}

fn check(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    let status = std::str::from_utf8(&head[9..12]).unwrap_or("???");
    if head.starts_with(b"HTTP/1.") && status == "200" {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
