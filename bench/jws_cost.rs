//! `bench-jws-cost [MIB]`: where the time of a signature goes, in process, printing one JSON object.
//!
//! - RS256 sign and verify of a 1 KiB body with a 2048-bit key (ring), per second on one thread: what the
//!   HTTP figures are compared with, beside `openssl speed rsa2048`.
//! - SHA-256 throughput (ring) over a body of MIB MiB (default 16), and `jws::verify` over the same body:
//!   the cost of verification per MiB of body (SHA-256 plus the copy that builds the signing input).

use std::time::{Duration, Instant};

use aa_token_broker::jws::{SigningKey, parse, verify};
use aa_token_broker::keys::RsaKey;
use aa_token_broker::simulator::{SimSettings, Simulator};

/// Runs `f` for at least `at_least`; returns calls per second.
fn rate(at_least: Duration, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < at_least {
        f();
        calls += 1;
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16);
    let sim = Simulator::new(SimSettings::default())?;
    sim.cr_register("AA-COST", "AA")?;
    let pem = sim.cr_private_key_pem("AA-COST").ok_or("no key")?;
    let key = SigningKey::from_file_bytes(pem.as_bytes(), Some("cost"), "pool")?;
    let public = RsaKey::from_jwk_value(&key.public_jwk()).ok_or("no public key")?;
    let small = vec![b'x'; 1024];
    let small_sig = key.sign(&small)?;
    let parsed_small = parse(small_sig.as_bytes())?;
    let window = Duration::from_secs(2);
    let sign_per_sec = rate(window, || {
        std::hint::black_box(key.sign(&small).ok());
    });
    let verify_per_sec = rate(window, || {
        std::hint::black_box(verify(&parsed_small, &public, &small).is_ok());
    });
    let big = vec![b'y'; mib * 1024 * 1024];
    let big_sig = key.sign(&big)?;
    let parsed_big = parse(big_sig.as_bytes())?;
    let sha_per_sec = rate(window, || {
        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, &big));
    });
    let big_verify_per_sec = rate(window, || {
        assert!(verify(&parsed_big, &public, &big).is_ok());
    });
    let sha_ms_per_mib = 1e3 / (sha_per_sec * mib as f64);
    let verify_ms_per_mib = (1e3 / big_verify_per_sec - 1e3 / verify_per_sec) / mib as f64;
    println!(
        "{}",
        serde_json::json!({
            "body_mib": mib,
            "rs256_sign_per_sec_1kib": sign_per_sec,
            "rs256_verify_per_sec_1kib": verify_per_sec,
            "sha256_mib_per_sec": sha_per_sec * mib as f64,
            "sha256_ms_per_mib": sha_ms_per_mib,
            "verify_ms_per_mib": verify_ms_per_mib,
            "verify_ms_big_body": 1e3 / big_verify_per_sec,
        })
    );
    Ok(())
}
