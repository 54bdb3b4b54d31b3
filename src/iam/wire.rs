//! Serde shapes of the IAM's request and response bodies (spec §2).
//!
//! Responses are parsed leniently where the spec says real servers vary (the lowercase aliases of the
//! August 2024 draft, `expiresOn` in either unit, numbers sent as strings, optional fields of odd types) and strictly where a
//! wrong value would be dangerous (a token must be a string; a lifetime must be a non-negative number).

use serde::{Deserialize, Deserializer, Serialize};

/// The body of `/v1/user/token/generate` and `/v1/entity/token/generate` (spec §2.1, §2.4).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponseBody {
    #[serde(default)]
    pub ver: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default, alias = "txnid")]
    pub txn_id: Option<String>,
    #[serde(default, alias = "accesstoken", alias = "access_token")]
    pub access_token: Option<String>,
    #[serde(default, alias = "expires_in", deserialize_with = "lenient_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default, alias = "token_type")]
    pub token_type: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    /// The grace-period warning: "The secret for entity with ID … is expired and within the grace period".
    #[serde(default)]
    pub message: Option<String>,
}

/// The useful parts of a `/v1/entity/secret/read` or `/v1/entity/secret/reset` answer (spec §2.2, §2.3).
///
/// Only `secret` is needed; every other field is best-effort: a value of an odd type or an absurd value
/// makes that one field unknown, never the answer unusable. A reset answer that fails to parse would lose
/// a secret the IAM has already switched to, so nothing here may reject a body that carries a secret.
#[derive(Debug, Default)]
pub struct SecretAnswer {
    pub txn_id: Option<String>,
    pub entity_id: Option<String>,
    pub secret: Option<String>,
    /// `expiresOn` as sent: epoch milliseconds in most examples, seconds in one; the unit is decided by
    /// [`crate::timefmt::from_unix_seconds_or_millis`].
    pub expires_on: Option<f64>,
    pub expiration_date: Option<String>,
    pub message: Option<String>,
}

impl SecretAnswer {
    /// Reads a JSON object leniently. Errors only when the body is not a JSON object at all.
    pub fn parse(bytes: &[u8]) -> Result<SecretAnswer, serde_json::Error> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)?;
        let field = |names: &[&str]| names.iter().find_map(|name| object.get(*name));
        let text = |names: &[&str]| field(names).and_then(|v| v.as_str()).map(str::to_string);
        Ok(SecretAnswer {
            secret: text(&["secret"]),
            txn_id: text(&["txnId", "txnid"]),
            entity_id: text(&["entityId", "entityid"]),
            expires_on: field(&["expiresOn", "expireson"]).and_then(lenient_number),
            expiration_date: text(&["expirationDate", "expirationdate"]),
            message: text(&["message"]),
        })
    }
}

/// A finite number given as a JSON number or a string of one.
fn lenient_number(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// The error envelope (spec §2.5), plus the `message` field gateways put in their own JSON errors.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default, alias = "txnid")]
    pub txn_id: Option<String>,
    #[serde(default, alias = "errorcode")]
    pub error_code: Option<serde_json::Value>,
    #[serde(default, alias = "errormsg")]
    pub error_msg: Option<serde_json::Value>,
    #[serde(default)]
    pub message: Option<serde_json::Value>,
}

/// The JSON body of secret read/reset requests.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRequestBody<'a> {
    pub ver: &'a str,
    pub timestamp: String,
    pub txn_id: String,
    pub entity_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_expiry_days: Option<u32>,
}

/// A non-negative number of seconds given as an integer, a float or a string of digits.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let value = Option::<serde_json::Value>::deserialize(d)?;
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            {
                Ok(Some(f as u64))
            } else {
                Err(D::Error::custom(
                    "expected a non-negative number of seconds",
                ))
            }
        }
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| D::Error::custom("expected a number of seconds")),
        Some(_) => Err(D::Error::custom("expected a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_body_accepts_documented_and_draft_names() {
        let current: TokenResponseBody = serde_json::from_str(
            r#"{"ver":"1.0.0","timestamp":"2024-10-10T11:11:45.096203206Z","txnId":"t","accessToken":"a.b.c",
                "expiresIn":86400,"refreshExpiresIn":0,"tokenType":"Bearer","notBeforePolicy":0,"scope":"email"}"#,
        )
        .unwrap();
        assert_eq!(current.expires_in, Some(86400));
        assert_eq!(current.access_token.as_deref(), Some("a.b.c"));
        let draft: TokenResponseBody = serde_json::from_str(
            r#"{"txnid":"t","accesstoken":"a.b.c","expires_in":"86400","token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(draft.expires_in, Some(86400));
        assert_eq!(draft.txn_id.as_deref(), Some("t"));
        let float: TokenResponseBody = serde_json::from_str(r#"{"expiresIn":300.0}"#).unwrap();
        assert_eq!(float.expires_in, Some(300));
    }

    #[test]
    fn token_body_rejects_wrong_types() {
        for bad in [
            r#"{"accessToken":5,"expiresIn":10}"#,
            r#"{"accessToken":"x","expiresIn":-1}"#,
            r#"{"accessToken":"x","expiresIn":"soon"}"#,
            r#"{"accessToken":"x","expiresIn":{}}"#,
            r#"{"accessToken":"x","expiresIn":1e300}"#,
        ] {
            assert!(
                serde_json::from_str::<TokenResponseBody>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_answer_reads_expiry_in_any_numeric_form() {
        for raw in [
            r#"{"entityId":"E","secret":"s","expiresOn":1733226041466}"#,
            r#"{"entityId":"E","secret":"s","expiresOn":1733226041466.0}"#,
            r#"{"entityId":"E","secret":"s","expiresOn":"1733226041466"}"#,
        ] {
            let body = SecretAnswer::parse(raw.as_bytes()).unwrap();
            assert_eq!(body.expires_on, Some(1_733_226_041_466.0));
            assert_eq!(body.secret.as_deref(), Some("s"));
        }
    }

    #[test]
    fn a_secret_answer_with_odd_optional_fields_still_yields_its_secret() {
        for raw in [
            r#"{"secret":"kept","expiresOn":{"ms":1},"expirationDate":17,"message":["x"],"txnId":5}"#,
            r#"{"secret":"kept","expiresOn":"soon","expirationDate":null}"#,
            r#"{"secret":"kept","expiresOn":-1000}"#,
            r#"{"secret":"kept","expiresOn":1e308,"entityId":false}"#,
        ] {
            let body = SecretAnswer::parse(raw.as_bytes()).unwrap();
            assert_eq!(body.secret.as_deref(), Some("kept"), "{raw}");
        }
        let odd = SecretAnswer::parse(
            br#"{"secret":"kept","expiresOn":{"ms":1},"expirationDate":17,"message":["x"],"txnId":5}"#,
        )
        .unwrap();
        assert!(odd.expires_on.is_none() && odd.expiration_date.is_none());
        assert!(odd.message.is_none() && odd.txn_id.is_none());
        assert!(SecretAnswer::parse(b"[1,2]").is_err());
        assert!(SecretAnswer::parse(b"").is_err());
    }

    #[test]
    fn error_body_reads_both_casings() {
        let e: ErrorBody =
            serde_json::from_str(r#"{"errorcode":"Unauthorized","errormsg":"bad","txnid":"t"}"#)
                .unwrap();
        assert_eq!(e.error_code.unwrap(), "Unauthorized");
        let e: ErrorBody =
            serde_json::from_str(r#"{"errorCode":"TKN_2001","errorMsg":"x"}"#).unwrap();
        assert_eq!(e.error_msg.unwrap(), "x");
    }
}
