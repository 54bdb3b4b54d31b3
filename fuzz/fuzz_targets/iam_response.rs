//! Any bytes as an IAM response body: the token, secret and error shapes, and a parsed token through the
//! broker's checks. Nothing may panic; a token that passes must be servable only before its expiry.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use aa_token_broker::entity::EntityId;
use aa_token_broker::iam::error::sanitize_excerpt;
use aa_token_broker::iam::wire::{ErrorBody, SecretResponseBody, TokenResponseBody};
use aa_token_broker::iam::TokenGrant;
use aa_token_broker::token::policy::RefreshPolicy;
use aa_token_broker::token::Token;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<SecretResponseBody>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    let _ = sanitize_excerpt(data, &["known-secret"]);
    let Ok(body) = serde_json::from_slice::<TokenResponseBody>(data) else { return };
    let Some(access_token) = body.access_token else { return };
    let Ok(id) = EntityId::parse("FIU-FUZZ") else { return };
    let grant = TokenGrant {
        access_token: SecretString::from(access_token),
        expires_in: body.expires_in.map(Duration::from_secs),
        token_type: body.token_type,
        txn_id: body.txn_id,
        message: body.message,
        server_time: None,
        received_at: Instant::now(),
        received_wall: SystemTime::now(),
    };
    if let Ok(token) = Token::from_grant(&id, grant, &RefreshPolicy::default(), 0.5) {
        assert!(token.schedule.serve_until < token.schedule.expires_at);
        assert!(token.schedule.refresh_at < token.schedule.serve_until);
        let body = token.json_body(tokio::time::Instant::now());
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "the answer must be valid JSON");
    }
});
