//! `certify`: the certification cases a sidecar can decide, run against an ingress.
//!
//! - [`cases`]: the cases by id, with what the suite expects.
//! - [`run`] (this file): sets up peers in the built-in simulator (the sidecar under test uses it as its
//!   IAM and Central Registry), builds each case's request — a valid one from the right peer, changed in
//!   one way, signed by the peer's registered key through the simulator — sends it to the ingress at
//!   `{ingress}{ReBIT path}`, and checks the status, the `errorCode` and the envelope of the answer.
//!
//! The ingress is whatever guards the entity's endpoints: the team's Envoy or nginx in front of its
//! services (with the sidecar's `/v1/authorize` as its check), or the sidecar's own
//! `/v1/authorize` path form, which the conformance tests use.

pub mod cases;

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::entity::Role;
use crate::upstream::http::{ClientSpec, describe, read_whole};
use cases::{Case, Change};

/// Where the simulator and the ingress are, and which deployment is tested.
#[derive(Debug, Clone)]
pub struct Target {
    /// The simulator's base, e.g. `http://127.0.0.1:7380` (its IAM is at `/iam`, its CR at `/cr`).
    pub simulator: String,
    /// The ingress base the ReBIT paths are appended to.
    pub ingress: String,
    /// The deployment's role; its cases are run.
    pub deployment: Role,
    /// The deployment's entity id (what notifications name as the receiver, where they do).
    pub entity_id: String,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: &'static str,
    pub passed: bool,
    /// What came back, when it was not what was expected.
    pub detail: String,
}

const UUID: &str = "0b811819-9044-4856-b0ee-8c88035f8858";

/// The peers of a role in the simulator: the regular one and an alternate.
fn peers(role: Role) -> (String, String) {
    let regular = format!("{}-CERTIFY", role.as_str());
    (regular.clone(), format!("{regular}-ALT"))
}

fn secret_of(id: &str) -> String {
    format!("{}-secret", id.to_ascii_lowercase())
}

/// Largest answer read from the simulator or the ingress: theirs are a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// An answer's body, at most [`MAX_ANSWER_BYTES`].
async fn answer_body(url: &str, mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    read_whole(&mut response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// A small HTTP client over the simulator's control API and the ingress.
struct Harness {
    http: reqwest::Client,
    target: Target,
}

impl Harness {
    async fn post_json(&self, url: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        let status = response.status();
        let text = String::from_utf8_lossy(&answer_body(url, response).await.unwrap_or_default())
            .into_owned();
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers `id` in the simulator's IAM and CR (idempotent).
    async fn register(&self, id: &str, role: Role) -> Result<(), String> {
        let sim = &self.target.simulator;
        self.post_json(
            &format!("{sim}/_simulator/entities"),
            &json!({"id": id, "secret": secret_of(id)}),
        )
        .await?;
        self.post_json(
            &format!("{sim}/_simulator/cr/entities"),
            &json!({"id": id, "role": role.as_str()}),
        )
        .await?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<String, String> {
        let url = format!("{}/iam/v1/entity/token/generate", self.target.simulator);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([("id", id), ("secret", &secret_of(id))])
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        let body: Value = serde_json::from_slice(&answer_body(&url, response).await?)
            .map_err(|e| format!("{url}: not JSON ({e})"))?;
        body["accessToken"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no token for {id}: {body}"))
    }

    async fn sign(&self, id: &str, bytes: &[u8]) -> Result<String, String> {
        let url = format!("{}/_simulator/cr/entities/{id}/sign", self.target.simulator);
        let response = self
            .http
            .post(&url)
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        let body: Value = serde_json::from_slice(&answer_body(&url, response).await?)
            .map_err(|e| format!("{url}: not JSON ({e})"))?;
        body["signature"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no signature from {id}: {body}"))
    }
}

/// A valid body for a case's endpoint, from `caller`, with the case's change to the envelope applied.
fn body(case: &Case, caller: &str, alternate: &str) -> Value {
    let now = SystemTime::now();
    let timestamp = match case.change {
        Change::TimestampText(text) => text.to_string(),
        Change::TimestampOffset(secs) => {
            let at = if secs >= 0 {
                now + Duration::from_secs(secs.unsigned_abs())
            } else {
                now - Duration::from_secs(secs.unsigned_abs())
            };
            humantime::format_rfc3339_millis(at).to_string()
        }
        _ => humantime::format_rfc3339_millis(now).to_string(),
    };
    let ver = match case.change {
        Change::Ver(ver) => ver,
        _ => "2.0.0",
    };
    let txnid = match case.change {
        Change::Txnid(txnid) => txnid,
        _ => UUID,
    };
    let mut body = json!({"ver": ver, "timestamp": timestamp, "txnid": txnid});
    let caller_role = case.caller.as_str();
    let notifier_id = match case.change {
        Change::NotifierId => alternate,
        _ => caller,
    };
    let notifier_type = match case.change {
        Change::NotifierType(kind) => kind,
        _ => caller_role,
    };
    let notifier = json!({"type": notifier_type, "id": notifier_id});
    match case.path {
        "/Consent/Notification" => {
            body["Notifier"] = notifier;
            body["ConsentStatusNotification"] =
                json!({"consentId": UUID, "consentHandle": UUID, "consentStatus": "ACTIVE"});
        }
        "/FI/Notification" => {
            body["Notifier"] = notifier;
            body["FIStatusNotification"] = json!({"sessionId": UUID, "sessionStatus": "ACTIVE"});
        }
        "/Accounts/discover" => {
            body["Customer"] = json!({"id": "user@aa", "Identifiers": [{"category": "STRONG", "type": "MOBILE", "value": "9999999999"}]});
            body["FITypes"] = json!(["DEPOSIT"]);
        }
        "/Accounts/link" => {
            body["Customer"] = json!({"id": "user@aa", "Accounts": [{"FIType": "DEPOSIT", "accType": "SAVINGS", "accRefNumber": "r-1", "maskedAccNumber": "XXXX1234"}]});
        }
        "/Consent" => {
            body["ConsentDetail"] = json!({"consentStart": humantime::format_rfc3339_millis(now).to_string(), "FIU": {"id": caller}, "Customer": {"id": "user@aa"}});
        }
        "/FI/request" => {
            body["FIDataRange"] =
                json!({"from": "2025-01-01T00:00:00.000Z", "to": "2025-12-31T00:00:00.000Z"});
            body["Consent"] = json!({"id": UUID, "digitalSignature": "sig"});
            body["KeyMaterial"] = key_material(case.change, now);
        }
        _ => {}
    }
    body
}

/// A `KeyMaterial` with a fresh Curve25519 key (BouncyCastle's encoding), changed as the case says.
fn key_material(change: Change, now: SystemTime) -> Value {
    let (alg, curve) = match change {
        Change::KeyMaterial(alg, curve) => (alg, curve),
        _ => ("ECDH", "Curve25519"),
    };
    let public = crate::fi::curve::PrivateKey::generate()
        .map(|key| crate::fi::keys::public_pem(&key.public_key()))
        .unwrap_or_default();
    json!({
        "cryptoAlg": alg, "curve": curve, "params": crate::fi::keys::PARAMS,
        "DHPublicKey": {
            "expiry": humantime::format_rfc3339_millis(now + Duration::from_secs(3600)).to_string(),
            "Parameters": "", "KeyValue": public,
        },
        "Nonce": "AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK+2vcTL0tk=",
    })
}

/// The header that carries a caller's token, in the form Sahamati's scripts use.
fn api_key_header(caller: Role) -> &'static str {
    match caller {
        Role::Aa => "aa_api_key",
        Role::Fip => "fip_api_key",
        Role::Fiu => "client_api_key",
    }
}

/// Runs every case of the target's deployment, in order.
pub async fn run(target: Target) -> Result<Vec<Outcome>, String> {
    let ids: Vec<&str> = cases::for_deployment(target.deployment)
        .map(|c| c.id)
        .collect();
    run_ids(target, &ids).await
}

/// Runs the cases named, in order (each must belong to the target's deployment).
pub async fn run_ids(target: Target, ids: &[&str]) -> Result<Vec<Outcome>, String> {
    // A redirect from the ingress is its answer, to be checked, not followed.
    let http = ClientSpec::new(Duration::from_secs(20), Duration::from_secs(20))
        .direct()
        .build()
        .map_err(|e| e.to_string())?;
    let harness = Harness { http, target };
    let mut selected = Vec::new();
    for id in ids {
        let case = cases::by_id(id).ok_or_else(|| format!("no case {id}"))?;
        if case.deployment != harness.target.deployment {
            return Err(format!(
                "{id} is a case of an {} deployment, not an {}",
                case.deployment, harness.target.deployment
            ));
        }
        selected.push(case);
    }
    for role in Role::ALL
        .into_iter()
        .filter(|r| selected.iter().any(|c| c.caller == *r))
    {
        let (regular, alternate) = peers(role);
        harness.register(&regular, role).await?;
        harness.register(&alternate, role).await?;
    }
    let mut outcomes = Vec::new();
    for case in selected {
        if case.change == Change::AlternateApiKey {
            // As in certification, the regular peer has called before: the entity has seen its key.
            let _ = run_case(&harness, case, Some(Change::Valid)).await;
        }
        outcomes.push(run_case(&harness, case, None).await?);
    }
    Ok(outcomes)
}

/// Runs one case (with `change` in place of the case's own, for a warm-up).
async fn run_case(
    harness: &Harness,
    case: &'static Case,
    change: Option<Change>,
) -> Result<Outcome, String> {
    let case = &Case {
        change: change.unwrap_or(case.change),
        ..*case
    };
    let (regular, alternate) = peers(case.caller);
    let token = match case.change {
        Change::InvalidApiKey => "eyJhbGciOiJSUzI1NiJ9.e30.bm90LWEtc2lnbmF0dXJl".to_string(),
        Change::AlternateApiKey => harness.token(&alternate).await?,
        _ => harness.token(&regular).await?,
    };
    let path = case
        .path
        .replace("{id}", UUID)
        .replace("{ref}", "ref-1")
        .replace("{token}", "123456");
    let url = format!("{}{path}", harness.target.ingress.trim_end_matches('/'));
    let mut request = harness
        .http
        .request(
            reqwest::Method::from_bytes(case.method.as_bytes()).map_err(|e| e.to_string())?,
            &url,
        )
        .header(api_key_header(case.caller), format!("Bearer {token}"));
    let sent_txnid;
    if case.method == "GET" {
        sent_txnid = None;
        if case.path != "/Heartbeat" {
            // ReBIT 2.0.0's GETs carry a detached JWS of the endpoint path.
            let mut signature = harness.sign(&regular, path.as_bytes()).await?;
            if case.change == Change::DamagedSignature {
                signature.pop();
            }
            request = request.header("x-jws-signature", signature);
        }
    } else {
        let value = body(case, &regular, &alternate);
        sent_txnid = value["txnid"].as_str().map(str::to_string);
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        let mut signature = harness.sign(&regular, &bytes).await?;
        if case.change == Change::DamagedSignature {
            signature.pop();
        }
        let sent = if case.change == Change::Tampered {
            let mut changed = value.clone();
            changed["tampered"] = json!(true);
            serde_json::to_vec(&changed).map_err(|e| e.to_string())?
        } else {
            bytes
        };
        request = request
            .header("content-type", "application/json")
            .header("x-jws-signature", signature)
            .body(sent);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    let status = response.status().as_u16();
    let text = String::from_utf8_lossy(&answer_body(&url, response).await.unwrap_or_default())
        .into_owned();
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut problems = Vec::new();
    if status != case.status {
        problems.push(format!("status {status}, expected {}", case.status));
    }
    if let Some(code) = case.code
        && answer["errorCode"] != code
    {
        problems.push(format!(
            "errorCode {}, expected {code}",
            answer["errorCode"]
        ));
    }
    if status >= 400 && case.code.is_some() {
        // About 500 scenarios assert the envelope of every error: a supported ver, a current timestamp,
        // the request's txnid when it is a UUID.
        let ver_ok = answer["ver"]
            .as_str()
            .is_some_and(|v| crate::rebit::envelope::DEFAULT_VERSIONS.contains(&v));
        let ts_ok = answer["timestamp"]
            .as_str()
            .and_then(crate::rebit::envelope::parse_timestamp)
            .is_some_and(|t| {
                let now = SystemTime::now();
                let skew = t.duration_since(now).unwrap_or_else(|e| e.duration());
                skew < Duration::from_secs(900)
            });
        let txnid_ok = match sent_txnid
            .as_deref()
            .filter(|t| crate::rebit::envelope::is_uuid(t))
        {
            Some(sent) => answer["txnid"] == sent,
            None => answer["txnid"]
                .as_str()
                .is_some_and(crate::rebit::envelope::is_uuid),
        };
        for (ok, what) in [(ver_ok, "ver"), (ts_ok, "timestamp"), (txnid_ok, "txnid")] {
            if !ok {
                problems.push(format!("the error's {what} is wrong"));
            }
        }
    }
    let passed = problems.is_empty();
    if !passed {
        problems.push(text.chars().take(300).collect());
    }
    Ok(Outcome {
        id: case.id,
        passed,
        detail: problems.join("; "),
    })
}

/// The pass/fail table, one line a case, and a summary line.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for outcome in outcomes {
        let mark = if outcome.passed { "pass" } else { "FAIL" };
        out.push_str(&format!("{mark}  {:<12} {}\n", outcome.id, outcome.detail));
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    out.push_str(&format!(
        "{passed} passed, {} failed\n",
        outcomes.len() - passed
    ));
    out
}
