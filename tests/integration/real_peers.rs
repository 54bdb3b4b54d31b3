//! What real AA-network members send, over loopback against the simulator: Sahamati's Router test scripts
//! (`client_api_key: Bearer <jwt>`), a gateway that adds its own `Authorization`, Keycloak's newer
//! service-account mapper (`azp` alone, or `client_id`), ReBIT's rule of who calls whom, a Heartbeat `GET`,
//! and ReBIT error answers a peer can check (signed, `ver` and `txnid` echoed). The broker is an FIU.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::common::*;
use crate::jws::{AA, AA_SECRET};
use aa_token_broker::simulator::state::ClientIdClaim;

const FIP: &str = "FIP-PEER";
const FIP_SECRET: &str = "fip-peer-secret";
/// An FI notification from AA-PEER, stamped now (the path form checks the envelope).
fn notification() -> Vec<u8> {
    format!(
        r#"{{"ver":"2.0.0","timestamp":"{}","txnid":"0b811819-9044-4856-b0ee-8c88035f8858","Notifier":{{"type":"AA","id":"AA-PEER"}},"FIStatusNotification":{{"sessionId":"s-1"}}}}"#,
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    )
    .into_bytes()
}

async fn start() -> TestBroker {
    let net = crate::jws::start().await;
    net.iam()
        .sim
        .add_entity(FIP, FIP_SECRET, Duration::from_secs(90 * 86_400));
    net
}

async fn authorize(
    net: &TestBroker,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut request = net
        .http
        .post(format!("http://{}{path}", net.addr))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    answer(request.send().await.unwrap()).await
}

fn signed(net: &TestBroker, entity: &str, body: &[u8]) -> (&'static str, String) {
    (
        "x-jws-signature",
        net.iam().sim.cr_sign(entity, body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_scripts_send_client_api_key_with_the_bearer_scheme() {
    let net = start().await;
    let note = notification();
    let token = net.iam().entity_token(AA, AA_SECRET).await;
    for value in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        token.clone(),
    ] {
        let ok = authorize(
            &net,
            "/v1/authorize/FI/Notification",
            &[("client_api_key", value), signed(&net, AA, &note)],
            &note,
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.headers["x-aa-entity-id"], AA);
        assert_eq!(ok.headers["x-aa-role"], "AA");
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_own_authorization_does_not_hide_the_rebit_credential() {
    let net = start().await;
    let note = notification();
    let token = net.iam().entity_token(AA, AA_SECRET).await;
    // The gateway's own JWT, from an issuer we do not trust: ignored beside `aa_api_key`.
    let gateway = net.iam().entity_token(FIP, FIP_SECRET).await;
    let ok = authorize(
        &net,
        "/v1/authorize",
        &[
            ("Authorization", format!("Bearer {gateway}")),
            ("aa_api_key", token.clone()),
            signed(&net, AA, &note),
        ],
        &note,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["x-aa-entity-id"], AA);
    // And the other way round: a valid Authorization cannot vouch for a forged ReBIT header.
    let claims = json!({"azp": AA, "clientId": AA, "roles": "AA", "exp": 4_000_000_000u64});
    let forged = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let refused = authorize(
        &net,
        "/v1/authorize",
        &[
            ("Authorization", format!("Bearer {token}")),
            ("client_api_key", forged),
            signed(&net, AA, &note),
        ],
        &note,
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.body["errorCode"], "Unauthorized");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_tokens_with_azp_alone_or_client_id_are_accepted() {
    let net = start().await;
    let note = notification();
    for style in [ClientIdClaim::AzpOnly, ClientIdClaim::Snake] {
        net.iam().sim.update_settings(|s| s.client_id_claim = style);
        let token = net.iam().entity_token(AA, AA_SECRET).await;
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(payload.get("clientId").is_none(), "{payload}");
        let ok = authorize(
            &net,
            "/v1/authorize",
            &[("aa_api_key", token), signed(&net, AA, &note)],
            &note,
        )
        .await;
        assert_eq!(ok.status, 200, "{style:?}: {}", ok.body);
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fius_endpoints_are_called_by_aas_only() {
    let net = start().await;
    let note = notification();
    let fip = net.iam().entity_token(FIP, FIP_SECRET).await;
    let aa = net.iam().entity_token(AA, AA_SECRET).await;
    // An FIP's token in `aa_api_key`, the body signed by that FIP, at an FIU's notification endpoint.
    let fip_as_aa = authorize(
        &net,
        "/v1/authorize/FI/Notification",
        &[("aa_api_key", fip.clone()), signed(&net, FIP, &note)],
        &note,
    )
    .await;
    assert_eq!(fip_as_aa.status, 401, "{}", fip_as_aa.body);
    assert_eq!(
        fip_as_aa.body["errorMsg"],
        "the token in aa_api_key is not an AA token"
    );
    // The same in `client_api_key`: an FIP may not call an FIU.
    let fip_plain = authorize(
        &net,
        "/v1/authorize/FI/Notification",
        &[("client_api_key", fip.clone()), signed(&net, FIP, &note)],
        &note,
    )
    .await;
    assert_eq!(fip_plain.status, 401);
    assert_eq!(
        fip_plain.body["errorMsg"],
        "FIP may not call this endpoint (it accepts AA)"
    );
    // An AA's token in `fip_api_key`: the header names the FIP role.
    let aa_as_fip = authorize(
        &net,
        "/v1/authorize",
        &[("fip_api_key", aa.clone()), signed(&net, AA, &note)],
        &note,
    )
    .await;
    assert_eq!(aa_as_fip.status, 401);
    assert_eq!(
        aa_as_fip.body["errorMsg"],
        "the token in fip_api_key is not an FIP token"
    );
    // `?role=` narrows what the endpoint accepts; it cannot widen it.
    let narrowed = authorize(
        &net,
        "/v1/authorize?role=FIP",
        &[("aa_api_key", aa), signed(&net, AA, &note)],
        &note,
    )
    .await;
    assert_eq!(narrowed.status, 401, "{}", narrowed.body);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_get_passes_on_the_token_alone() {
    let net = start().await;
    let aa = net.iam().entity_token(AA, AA_SECRET).await;
    let get = |token: &str| {
        net.http
            .get(format!("http://{}/v1/authorize/Heartbeat", net.addr))
            .header("aa_api_key", token)
            .send()
    };
    let ok = answer(get(&aa).await.unwrap()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["x-aa-role"], "AA");
    let bad = answer(get("not-a-token").await.unwrap()).await;
    assert_eq!(bad.status, 401);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebit_errors_are_signed_by_us_and_echo_ver_and_txnid() {
    let net = start().await;
    let aa = net.iam().entity_token(AA, AA_SECRET).await;
    let body = br#"{"ver":"2.1.0","timestamp":"2026-12-06T10:00:00.000Z","txnid":"f1e2d3c4-0000-4000-8000-000000000009"}"#;
    let tampered = authorize(
        &net,
        "/v1/authorize",
        &[
            ("aa_api_key", aa.clone()),
            ("x-jws-signature", net.iam().sim.cr_sign(AA, b"{}").unwrap()),
        ],
        body,
    )
    .await;
    assert_eq!(tampered.status, 400);
    assert_eq!(tampered.body["errorCode"], "SignatureDoesNotMatch");
    assert_eq!(tampered.body["ver"], "2.1.0");
    assert_eq!(
        tampered.body["txnid"],
        "f1e2d3c4-0000-4000-8000-000000000009"
    );
    // The signature is ours, over the exact bytes: the broker's own FIU record in the CR verifies it.
    let signature = tampered.headers["x-jws-signature"].to_str().unwrap();
    let exact = serde_json::to_vec(&tampered.body).unwrap();
    let check = net
        .http
        .post(format!(
            "http://{}/v1/verify-signature?sender={ENTITY}&type=FIU",
            net.addr
        ))
        .header("x-jws-signature", signature)
        .body(exact)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200, "{}", check.text().await.unwrap());
    // No body, no token: a fresh UUID v4 and version 2.0.0.
    let bare = authorize(&net, "/v1/authorize", &[], b"").await;
    assert_eq!(bare.status, 401);
    assert_eq!(bare.body["ver"], "2.0.0");
    let txnid = bare.body["txnid"].as_str().unwrap();
    assert_eq!((txnid.len(), &txnid[14..15]), (36, "4"));
    assert!(bare.headers.contains_key("x-jws-signature"));
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_named_not_ignored() {
    let net = start().await;
    let note = notification();
    let aa = net.iam().entity_token(AA, AA_SECRET).await;
    let typo = authorize(
        &net,
        "/v1/authorize?Role=AA",
        &[("aa_api_key", aa.clone()), signed(&net, AA, &note)],
        &note,
    )
    .await;
    assert_eq!(typo.status, 400);
    assert!(
        typo.body["errorMsg"].as_str().unwrap().contains("\"Role\""),
        "{}",
        typo.body
    );
    // On the path form the query is the original request's: it is not ours to judge.
    let path_form = authorize(
        &net,
        "/v1/authorize/FI/Notification?sessionId=1",
        &[("aa_api_key", aa), signed(&net, AA, &note)],
        &note,
    )
    .await;
    assert_eq!(path_form.status, 200, "{}", path_form.body);
    let signature = net.iam().sim.cr_sign(AA, b"{}").unwrap();
    let extra = net
        .http
        .post(format!(
            "http://{}/v1/verify-signature?sender={AA}&type=AA&kind=x",
            net.addr
        ))
        .header("x-jws-signature", signature)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(extra.status(), 400);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fip_3027_signed_by_another_entity_without_kid() {
    let net = start().await;
    let aa = net.iam().entity_token(AA, AA_SECRET).await;
    let no_kid = r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#;
    // AA-PEER's token; the body names AA-OTHER as its notifier and AA-OTHER signed it, with no kid.
    let body = br#"{"ver":"2.0.0","timestamp":"2026-12-06T10:00:00.000Z","txnid":"0b811819-9044-4856-b0ee-8c88035f8858","Notifier":{"type":"AA","id":"AA-OTHER"}}"#;
    let other = net
        .iam()
        .sim
        .cr_sign_with_header("AA-OTHER", no_kid, body)
        .unwrap();
    let refused = authorize(
        &net,
        "/v1/authorize/FI/Notification",
        &[("aa_api_key", aa.clone()), ("x-jws-signature", other)],
        body,
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["errorCode"], "InvalidRequest");
    assert_eq!(
        refused.body["errorMsg"],
        "the body is signed by AA-OTHER, not by the token's entity"
    );
    // The same signature over a changed body verifies with nobody's key: a mismatch.
    let changed = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("2026-12-06", "2026-12-07");
    let tampered = net
        .iam()
        .sim
        .cr_sign_with_header("AA-OTHER", no_kid, body)
        .unwrap();
    let mismatch = authorize(
        &net,
        "/v1/authorize/FI/Notification",
        &[("aa_api_key", aa), ("x-jws-signature", tampered)],
        changed.as_bytes(),
    )
    .await;
    assert_eq!(mismatch.status, 400);
    assert_eq!(mismatch.body["errorCode"], "SignatureDoesNotMatch");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cr_certificate_published_as_a_key_set_or_a_string_verifies_by_kid() {
    use aa_token_broker::simulator::CertificateForm;
    let net = start().await;
    let note = notification();
    for (sender, form) in [
        ("AA-OTHER", CertificateForm::KeySet),
        (AA, CertificateForm::String),
    ] {
        net.iam().sim.cr_set_certificate_form(sender, form).unwrap();
        let signature = net.iam().sim.cr_sign(sender, &note).unwrap();
        let checked = net
            .http
            .post(format!(
                "http://{}/v1/verify-signature?sender={sender}&type=AA",
                net.addr
            ))
            .header("x-jws-signature", signature)
            .body(note.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            checked.status(),
            200,
            "{form:?}: {}",
            checked.text().await.unwrap()
        );
    }
    // The CR's last answer shows in /readyz, without making the broker unready.
    let ready: Value = net
        .http
        .get(format!("http://{}/readyz", net.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["centralRegistry"]["lastAnswer"]["outcome"], "ok");
    net.stop().await;
}

/// The simulator's CR takes a caller's token as the real one does: in `Authorization`, or in a ReBIT
/// header with or without the scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_cr_accepts_the_rebit_header_forms() {
    let net = start().await;
    let fip = net.iam().entity_token(FIP, FIP_SECRET).await;
    let url = format!(
        "{}/v2/entityInfo/AA/{AA}",
        net.iam().url.replace("/iam", "/cr")
    );
    for (name, value) in [
        ("Authorization", format!("Bearer {fip}")),
        ("client_api_key", format!("Bearer {fip}")),
        ("fip_api_key", fip.clone()),
    ] {
        let answer = net.http.get(&url).header(name, value).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{name}");
    }
    let none = net.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    net.stop().await;
}
