//! Any bytes as an IAM response body, through the whole pipeline: parsed as a token answer, checked and
//! scheduled as a token, reported in `/readyz` and `/metrics`; parsed as a secret answer, its expiry judged
//! and formatted; parsed as an error envelope and sanitized. Nothing may panic; a token that passes must
//! be servable only before its expiry and never for longer than the ceiling.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use aa_token_broker::entity::EntityId;
use aa_token_broker::http::health::readiness;
use aa_token_broker::iam::client::{parse_secret_answer, parse_token_answer};
use aa_token_broker::iam::error::sanitize_excerpt;
use aa_token_broker::iam::wire::ErrorBody;
use aa_token_broker::iam::Endpoint;
use aa_token_broker::metrics::Metrics;
use aa_token_broker::secret::policy::{check_expiry, ExpirySource};
use aa_token_broker::timefmt;
use aa_token_broker::token::status::EntityStatus;
use aa_token_broker::token::policy::RefreshPolicy;
use aa_token_broker::token::{Token, MAX_TOKEN_LIFETIME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ErrorBody>(data);
    let _ = sanitize_excerpt(data, &["known-secret"]);
    let now = SystemTime::now();
    if let Ok(grant) = parse_secret_answer(Endpoint::SecretReset, 200, data, "user-token") {
        for source in [ExpirySource::Granted, ExpirySource::Read] {
            let _ = check_expiry(now, grant.expires_on, source);
        }
        let _ = grant.expires_on.map(timefmt::rfc3339_seconds);
    }
    let Ok(grant) = parse_token_answer(Endpoint::EntityToken, 200, data, "secret", Instant::now(), now) else {
        return;
    };
    let Ok(id) = EntityId::parse("FIU-FUZZ") else { return };
    let Ok(token) = Token::from_grant(&id, grant, &RefreshPolicy::default(), 0.5) else { return };
    assert!(token.lifetime <= MAX_TOKEN_LIFETIME);
    assert!(token.schedule.serve_until < token.schedule.expires_at);
    assert!(token.schedule.refresh_at < token.schedule.serve_until);
    let at = tokio::time::Instant::now();
    let body = token.json_body(at);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "the answer must be valid JSON");
    let status = EntityStatus::of_token(id, Some(&token), at + Duration::from_millis(1));
    let _ = Metrics::new().render(std::slice::from_ref(&status));
    let _ = readiness(vec![status]);
});
