//! The IAM client against the simulator over real HTTP: all four endpoints as the spec documents them,
//! the error envelope, and the simulator's own contract (JWKS, expiry and grace, reset semantics, faults,
//! control API).

use std::time::{Duration, SystemTime};

use crate::common::*;
use aa_token_broker::entity::EntityId;
use aa_token_broker::iam::{Endpoint, IamClient, IamError, IamTimeouts};
use aa_token_broker::simulator::jwt::verify_with_jwks;
use aa_token_broker::simulator::{FaultKind, ResetMode};
use secrecy::{ExposeSecret, SecretString};

const ADMIN: &str = "ops@fiu.example";
const PASSWORD: &str = "admin-password-never-logged";

async fn setup() -> (Iam, IamClient, EntityId) {
    let iam = Iam::start(86_400).await;
    iam.sim.add_user(ADMIN, PASSWORD, &[ENTITY]);
    let client = IamClient::new(&iam.url, IamTimeouts::default()).unwrap();
    (iam, client, EntityId::parse(ENTITY).unwrap())
}

fn secret(value: &str) -> SecretString {
    SecretString::from(value.to_string())
}

#[tokio::test]
async fn entity_token_is_a_signed_jwt_with_the_documented_claims() {
    let (iam, client, id) = setup().await;
    let grant = client.entity_token(&id, &secret(SECRET)).await.unwrap();
    assert_eq!(grant.expires_in, Some(Duration::from_secs(86_400)));
    assert_eq!(grant.token_type.as_deref(), Some("Bearer"));
    assert!(grant.server_time.is_some(), "nanosecond timestamp parsed");
    assert!(grant.message.is_none());
    let jwks: serde_json::Value = http_client()
        .get(iam.url.replace(
            "/iam",
            "/auth/realms/sahamati/protocol/openid-connect/certs",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = verify_with_jwks(grant.access_token.expose_secret(), &jwks).unwrap();
    for claim in [
        "exp",
        "iat",
        "jti",
        "iss",
        "sub",
        "azp",
        "clientId",
        "roles",
        "secret-expiry-ts",
    ] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(claims["azp"], ENTITY);
    assert_eq!(claims["roles"], "FIU");
    assert_eq!(claims["typ"], "Bearer");
    assert!(
        claims["iss"]
            .as_str()
            .unwrap()
            .ends_with("/auth/realms/sahamati")
    );
}

#[tokio::test]
async fn wrong_credentials_keep_status_code_and_message() {
    let (_iam, client, id) = setup().await;
    let error = client
        .entity_token(&id, &secret("nope"))
        .await
        .err()
        .unwrap();
    match &error {
        IamError::Rejected {
            status,
            error_code,
            error_msg,
            txn_id,
            ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(error_code.as_deref(), Some("Unauthorized"));
            assert_eq!(
                error_msg.as_deref(),
                Some("Invalid entity id/secret or secret is expired")
            );
            assert!(txn_id.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.is_unauthorized());
    let unknown = EntityId::parse("FIU-UNKNOWN").unwrap();
    assert!(
        client
            .entity_token(&unknown, &secret(SECRET))
            .await
            .err()
            .unwrap()
            .is_unauthorized()
    );
    let bad_user = client
        .user_token(ADMIN, &secret("wrong"))
        .await
        .err()
        .unwrap();
    assert!(
        bad_user.to_string().contains("Invalid username/password"),
        "{bad_user}"
    );
}

#[tokio::test]
async fn secret_read_and_reset_with_an_admin_token() {
    let (iam, client, id) = setup().await;
    let user = client.user_token(ADMIN, &secret(PASSWORD)).await.unwrap();
    let user_claims = claims(user.access_token.expose_secret());
    assert_eq!(user_claims["entity_meta"][ENTITY][0], "entity-admin");

    let read = client.read_secret(&user.access_token, &id).await.unwrap();
    assert_eq!(read.secret.expose_secret(), SECRET);
    assert_eq!(read.entity_id.as_deref(), Some(ENTITY));
    let expires = read.expires_on.unwrap();
    let days = expires
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs_f64()
        / 86_400.0;
    assert!((89.9..90.1).contains(&days), "{days}");
    assert!(read.expiration_date.is_some());

    // Reset without secretExpiryDays: 180 days requested, the default message, validity capped by the
    // 24 h admin token (spec §2.3).
    let reset = client
        .reset_secret(&user.access_token, &id, None)
        .await
        .unwrap();
    assert_ne!(reset.secret.expose_secret(), SECRET);
    assert!(reset.message.unwrap().contains("180 days by default"));
    let validity = reset
        .expires_on
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(validity <= Duration::from_secs(86_400));
    assert_eq!(
        iam.sim.current_secret(ENTITY).unwrap(),
        reset.secret.expose_secret()
    );
    // The old secret is revoked at once (the default reading); the new one works.
    assert!(
        client
            .entity_token(&id, &secret(SECRET))
            .await
            .err()
            .unwrap()
            .is_unauthorized()
    );
    client.entity_token(&id, &reset.secret).await.unwrap();

    // With the cap off and an explicit 30 days, no message and 30 days of validity.
    iam.sim
        .update_settings(|s| s.cap_secret_by_user_token = false);
    let reset = client
        .reset_secret(&user.access_token, &id, Some(30))
        .await
        .unwrap();
    assert!(reset.message.is_none());
    let days = reset
        .expires_on
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs_f64()
        / 86_400.0;
    assert!((29.9..30.1).contains(&days), "{days}");
}

#[tokio::test]
async fn secret_endpoints_need_a_valid_admin_token_for_that_entity() {
    let (iam, client, id) = setup().await;
    iam.sim
        .add_entity("FIU-NOT-MINE", "x-secret", Duration::from_secs(86_400));
    let error = client
        .read_secret(&secret("not-a-session"), &id)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&error, IamError::Rejected { status: 401, error_code: Some(code), .. } if code == "TKN_2001"),
        "{error}"
    );
    let user = client.user_token(ADMIN, &secret(PASSWORD)).await.unwrap();
    let other = EntityId::parse("FIU-NOT-MINE").unwrap();
    let error = client
        .read_secret(&user.access_token, &other)
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("Invalid entity id"), "{error}");

    // The raw token without `Bearer ` is accepted too, as a production client sends it.
    let raw = http_client()
        .post(format!("{}/v1/entity/secret/read", iam.url))
        .header("Authorization", user.access_token.expose_secret())
        .json(&serde_json::json!({ "entityId": ENTITY }))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let missing = http_client()
        .post(format!("{}/v1/entity/secret/read", iam.url))
        .bearer_auth(user.access_token.expose_secret())
        .json(&serde_json::json!({ "txnId": "abc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["errorMsg"], "Entity Id is missing in the request");
    assert_eq!(body["txnId"], "abc", "JSON endpoints echo the txnId");
}

#[tokio::test]
async fn token_endpoints_take_forms_not_json() {
    let (iam, _client, _id) = setup().await;
    let json = http_client()
        .post(format!("{}/v1/entity/token/generate", iam.url))
        .json(&serde_json::json!({ "id": ENTITY, "secret": SECRET }))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
    let missing = http_client()
        .post(format!("{}/v1/entity/token/generate", iam.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("id={ENTITY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(
        body["errorMsg"],
        "Entity Id/Secret is missing in the request"
    );
    assert_eq!(body["ver"], "1.0.0");
}

#[tokio::test]
async fn expiry_grace_and_reset_readings() {
    let (iam, client, id) = setup().await;
    // Expired, inside the 5-day grace period: a token with the warning.
    iam.sim.set_secret_expiry(ENTITY, -86_400);
    let grant = client.entity_token(&id, &secret(SECRET)).await.unwrap();
    assert!(
        grant
            .message
            .unwrap()
            .contains("is expired and within the grace period")
    );
    // Past the grace period: 401.
    iam.sim.set_secret_expiry(ENTITY, -6 * 86_400);
    assert!(
        client
            .entity_token(&id, &secret(SECRET))
            .await
            .err()
            .unwrap()
            .is_unauthorized()
    );

    // The other reading of reset: the old secret keeps working through the grace period, with the warning.
    iam.sim.set_secret_expiry(ENTITY, 86_400);
    iam.sim
        .update_settings(|s| s.reset_mode = ResetMode::GracePeriod);
    let user = client.user_token(ADMIN, &secret(PASSWORD)).await.unwrap();
    let reset = client
        .reset_secret(&user.access_token, &id, Some(10))
        .await
        .unwrap();
    let old = client.entity_token(&id, &secret(SECRET)).await.unwrap();
    assert!(old.message.is_some());
    let new = client.entity_token(&id, &reset.secret).await.unwrap();
    assert!(new.message.is_none());
}

#[tokio::test]
async fn transport_failures_and_timeouts_are_reported() {
    let (iam, _client, id) = setup().await;
    let refused = IamClient::new("http://127.0.0.1:9/iam", IamTimeouts::default()).unwrap();
    let error = refused
        .entity_token(&id, &secret(SECRET))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), "transport", "{error}");

    let impatient = IamClient::new(
        &iam.url,
        IamTimeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(300),
        },
    )
    .unwrap();
    iam.sim.inject_token_fault(FaultKind::Hang, Some(1));
    let error = impatient
        .entity_token(&id, &secret(SECRET))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), "timeout", "{error}");
    iam.sim.inject_token_fault(
        FaultKind::Status {
            status: 429,
            retry_after_secs: Some(42),
            body: None,
        },
        Some(1),
    );
    let error = impatient
        .entity_token(&id, &secret(SECRET))
        .await
        .err()
        .unwrap();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(42)));
    impatient.entity_token(&id, &secret(SECRET)).await.unwrap();
}

#[tokio::test]
async fn the_control_api_drives_the_simulator_over_http() {
    let (iam, client, id) = setup().await;
    let base = iam.url.trim_end_matches("/iam").to_string();
    let http = http_client();
    let fault = serde_json::json!({ "endpoint": "entityToken", "kind": { "type": "status", "status": 503 }, "times": 2 });
    assert_eq!(
        http.post(format!("{base}/_simulator/faults"))
            .json(&fault)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    for _ in 0..2 {
        let error = client
            .entity_token(&id, &secret(SECRET))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("HTTP 503"));
    }
    client.entity_token(&id, &secret(SECRET)).await.unwrap();
    let stats: serde_json::Value = http
        .get(format!("{base}/_simulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["calls"]["entityToken"], 3);
    assert_eq!(stats["entityTokensIssued"], 1);
    assert_eq!(iam.sim.calls(Endpoint::EntityToken), 3);

    let mut settings: serde_json::Value = http
        .get(format!("{base}/_simulator/settings"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    settings["tokenLifetimeSecs"] = 60.into();
    assert_eq!(
        http.put(format!("{base}/_simulator/settings"))
            .json(&settings)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let grant = client.entity_token(&id, &secret(SECRET)).await.unwrap();
    assert_eq!(grant.expires_in, Some(Duration::from_secs(60)));

    let entity = serde_json::json!({ "id": "FIU-NEW", "secret": "new-one" });
    assert_eq!(
        http.post(format!("{base}/_simulator/entities"))
            .json(&entity)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    client
        .entity_token(&EntityId::parse("FIU-NEW").unwrap(), &secret("new-one"))
        .await
        .unwrap();
    let unknown = serde_json::json!({ "kind": { "type": "explode" } });
    assert!(
        http.post(format!("{base}/_simulator/faults"))
            .json(&unknown)
            .send()
            .await
            .unwrap()
            .status()
            .is_client_error()
    );
}
