//! The CR's entity-info answer, read leniently (spec §1.4): only `id` and `certificate` are required,
//! field names are matched without regard to case (`Identifiers`, `entityInfo`, `baseUrl` all occur), the
//! envelope may be absent, and the list form (an array of envelopes) is accepted too.

use serde_json::Value;

use crate::inbound::keyset::RsaKey;

/// Entity types of the CR.
pub const TYPES: [&str; 3] = ["AA", "FIU", "FIP"];

/// The part of a CR record the broker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityKey {
    /// The `certificate`'s `kid`, when it has one.
    pub kid: Option<String>,
    pub key: RsaKey,
}

/// Why a CR answer was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the CR answer is not JSON")]
    NotJson,
    #[error("the CR answer holds no record for the entity")]
    NoRecord,
    #[error("the entity's certificate is not a usable RS256 public key")]
    BadCertificate,
}

/// A field of an object, by name in any case.
fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The record of `id` in a CR answer (an envelope, a bare record, or a list of either).
fn record_of<'a>(document: &'a Value, id: &str) -> Option<&'a Value> {
    match document {
        Value::Array(items) => items.iter().find_map(|item| record_of(item, id)),
        Value::Object(_) => {
            let record = field(document, "entityinfo").unwrap_or(document);
            let record = match record {
                // Some list answers nest the array inside the envelope.
                Value::Array(_) => return record_of(record, id),
                other => other,
            };
            (field(record, "id")?.as_str()? == id).then_some(record)
        }
        _ => None,
    }
}

/// The signing key of entity `id` in the CR's answer.
pub fn parse(body: &[u8], id: &str) -> Result<EntityKey, RecordError> {
    let document: Value = serde_json::from_slice(body).map_err(|_| RecordError::NotJson)?;
    let record = record_of(&document, id).ok_or(RecordError::NoRecord)?;
    let certificate = field(record, "certificate").ok_or(RecordError::BadCertificate)?;
    // Some tooling stores the JWK as a JSON string.
    let parsed;
    let certificate = match certificate {
        Value::String(text) => {
            parsed =
                serde_json::from_str::<Value>(text).map_err(|_| RecordError::BadCertificate)?;
            &parsed
        }
        other => other,
    };
    let key = crate::jws::public_key_from_jwk(certificate).ok_or(RecordError::BadCertificate)?;
    let kid = field(certificate, "kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    Ok(EntityKey { kid, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> Value {
        serde_json::json!({"kty":"RSA","e":"AQAB","use":"sig","kid":"k1","alg":"RS256",
            "n": crate::jws::golden::GOLDEN_N})
    }

    #[test]
    fn envelopes_bare_records_and_lists_parse_in_any_case() {
        let envelope = serde_json::json!({"ver":"1.0","requester":{"id":"x"},
            "entityinfo":{"id":"AA-1","name":"n","Identifiers":[],"certificate":certificate(),
            "baseurl":"v1:/x, v2:https://a","gsp":null,"signature":{}}});
        let parsed = parse(envelope.to_string().as_bytes(), "AA-1").unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        let camel = serde_json::json!({"entityInfo":{"ID":"AA-1","Certificate":certificate()}});
        assert!(parse(camel.to_string().as_bytes(), "AA-1").is_ok());
        let bare = serde_json::json!({"id":"AA-1","certificate":certificate().to_string()});
        assert!(parse(bare.to_string().as_bytes(), "AA-1").is_ok());
        let list = serde_json::json!([{"entityinfo":{"id":"AA-0","certificate":{}}}, envelope]);
        assert!(parse(list.to_string().as_bytes(), "AA-1").is_ok());
        let mut no_kid = certificate();
        no_kid.as_object_mut().unwrap().remove("kid");
        let record = serde_json::json!({"entityinfo":{"id":"AA-1","certificate":no_kid}});
        assert_eq!(
            parse(record.to_string().as_bytes(), "AA-1").unwrap().kid,
            None
        );
    }

    #[test]
    fn unusable_answers_are_errors() {
        assert_eq!(parse(b"<html>", "A"), Err(RecordError::NotJson));
        assert_eq!(
            parse(br#"{"entityinfo":{"id":"B","certificate":{}}}"#, "A"),
            Err(RecordError::NoRecord)
        );
        assert_eq!(
            parse(br#"{"entityinfo":{"id":"A"}}"#, "A"),
            Err(RecordError::BadCertificate)
        );
        assert_eq!(
            parse(
                br#"{"entityinfo":{"id":"A","certificate":{"kty":"RSA","n":"AQAB","e":"AQAB"}}}"#,
                "A"
            ),
            Err(RecordError::BadCertificate)
        );
        assert_eq!(parse(b"[]", "A"), Err(RecordError::NoRecord));
    }
}
