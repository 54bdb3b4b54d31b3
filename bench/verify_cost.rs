//! `bench-verify-cost N`: what verifying an incoming token costs, in process, without HTTP.
//!
//! Starts the simulator on loopback, signs N distinct entity tokens with its realm key, builds a verifier
//! on the simulator's key set, and times, per token: the first sight (the whole verification: hash, cache
//! miss, parse, key lookup, RS256 signature, claims, cache insert), the RS256 signature check alone, and a
//! repeated sight (hash and cache hit). Prints one JSON object, times in microseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aa_token_broker::inbound::verify::{check_signature, parse};
use aa_token_broker::inbound::{Expectation, NoRecorder, Verifier, VerifySettings};
use aa_token_broker::keys::parse_jwks;
use aa_token_broker::simulator::{SimSettings, Simulator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2000)
        .max(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(n))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    serde_json::json!({ "median": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": mean })
}

async fn run(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let sim = Simulator::new(SimSettings::default())?;
    let iam_url = sim.spawn_local().await?;
    let issuer = sim.issuer();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            sim.sign_token(&serde_json::json!({
                "iss": issuer, "exp": now + 3600, "iat": now, "jti": format!("bench-{i}"),
                "aud": "account", "typ": "Bearer", "azp": "AA-BENCH", "clientId": "AA-BENCH", "roles": "AA",
            }))
        })
        .collect::<Result<_, _>>()?;
    let verifier = Verifier::new(&VerifySettings::for_iam_url(&iam_url), Arc::new(NoRecorder))?;
    verifier.fetch_keys().await;
    let expect = Expectation::default();

    let mut first = Vec::with_capacity(n);
    for token in &tokens {
        let t = Instant::now();
        let verified = verifier.verify(token, &expect).await;
        first.push(micros(t.elapsed()));
        if verified.is_err() {
            return Err("a freshly signed token did not verify".into());
        }
    }
    let mut repeated = Vec::with_capacity(n);
    for token in &tokens {
        let t = Instant::now();
        let verified = verifier.verify(token, &expect).await;
        repeated.push(micros(t.elapsed()));
        if verified.is_err() {
            return Err("a cached token did not verify".into());
        }
    }
    let keys = parse_jwks(sim.jwks().to_string().as_bytes())?;
    let mut signature = Vec::with_capacity(n);
    for token in &tokens {
        let parsed = parse(token).map_err(|e| e.to_string())?;
        let key = parsed
            .kid
            .as_deref()
            .and_then(|kid| keys.get(kid))
            .ok_or("no key")?;
        let t = Instant::now();
        check_signature(&parsed, key).map_err(|e| e.to_string())?;
        signature.push(micros(t.elapsed()));
    }
    println!(
        "{}",
        serde_json::json!({
            "tokens": n,
            "token_bytes": tokens[0].len(),
            "first_sight_us": summary(first),
            "signature_only_us": summary(signature),
            "repeated_sight_us": summary(repeated),
        })
    );
    Ok(())
}
