//! The CR's entity-info answer, read leniently (spec §1.4): only `id` and `certificate` are required,
//! field names are matched without regard to case (`Identifiers`, `entityInfo`, `baseUrl` all occur), the
//! envelope may be absent, and the list form (an array of envelopes) is accepted too. The `certificate`
//! is a JWK object, a JSON string of one, or a key set (`{"keys":[…]}`, RSA signing keys chosen by `kid`).

use std::sync::Arc;

use serde_json::Value;

use crate::keys::RsaKey;

/// The part of a CR record the broker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityKey {
    /// The `certificate`'s `kid`, when it has one.
    pub kid: Option<String>,
    pub key: RsaKey,
}

/// Keys in one certificate looked at; the rest are ignored.
const MAX_CERTIFICATE_KEYS: usize = 16;

/// An entity's registered signing keys: one JWK, or the RSA signing keys of a key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    keys: Vec<Arc<EntityKey>>,
}

impl Certificate {
    /// The key a message naming `kid` (or none) must verify with: the one with that `kid`; a key without
    /// a `kid` matches any (the sender's single key); with no `kid` named, the first key.
    pub fn choose(&self, kid: Option<&str>) -> Option<Arc<EntityKey>> {
        let found = match kid {
            None => self.keys.first(),
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .or_else(|| match self.keys.as_slice() {
                    [only] if only.kid.is_none() => Some(only),
                    _ => None,
                }),
        };
        found.map(Arc::clone)
    }

    pub fn keys(&self) -> &[Arc<EntityKey>] {
        &self.keys
    }

    /// The `kid`s, for logs.
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref()).collect()
    }
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

/// The signing keys of entity `id` in the CR's answer.
pub fn parse(body: &[u8], id: &str) -> Result<Certificate, RecordError> {
    let document: Value = serde_json::from_slice(body).map_err(|_| RecordError::NotJson)?;
    let record = record_of(&document, id).ok_or(RecordError::NoRecord)?;
    let certificate = field(record, "certificate").ok_or(RecordError::BadCertificate)?;
    // Some tooling stores the JWK (or the key set) as a JSON string.
    let parsed;
    let certificate = match certificate {
        Value::String(text) => {
            parsed =
                serde_json::from_str::<Value>(text).map_err(|_| RecordError::BadCertificate)?;
            &parsed
        }
        other => other,
    };
    let jwks: Vec<&Value> = match field(certificate, "keys") {
        Some(Value::Array(keys)) => keys.iter().take(MAX_CERTIFICATE_KEYS).collect(),
        Some(_) => return Err(RecordError::BadCertificate),
        None => vec![certificate],
    };
    let keys: Vec<Arc<EntityKey>> = jwks
        .into_iter()
        .filter_map(|jwk| {
            let key = RsaKey::from_jwk_value(jwk)?;
            let kid = field(jwk, "kid")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .map(str::to_string);
            Some(Arc::new(EntityKey { kid, key }))
        })
        .collect();
    if keys.is_empty() {
        return Err(RecordError::BadCertificate);
    }
    Ok(Certificate { keys })
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
        assert_eq!(parsed.kids(), vec![Some("k1")]);
        let camel = serde_json::json!({"entityInfo":{"ID":"AA-1","Certificate":certificate()}});
        assert!(parse(camel.to_string().as_bytes(), "AA-1").is_ok());
        let bare = serde_json::json!({"id":"AA-1","certificate":certificate().to_string()});
        assert!(parse(bare.to_string().as_bytes(), "AA-1").is_ok());
        let list = serde_json::json!([{"entityinfo":{"id":"AA-0","certificate":{}}}, envelope]);
        assert!(parse(list.to_string().as_bytes(), "AA-1").is_ok());
        let mut no_kid = certificate();
        no_kid.as_object_mut().unwrap().remove("kid");
        let record = serde_json::json!({"entityinfo":{"id":"AA-1","certificate":no_kid}});
        let single = parse(record.to_string().as_bytes(), "AA-1").unwrap();
        assert_eq!(single.kids(), vec![None]);
        // A key without a `kid` is the sender's single key: it matches any `kid` named.
        assert!(single.choose(Some("anything")).is_some());
    }

    #[test]
    fn a_key_set_certificate_is_chosen_from_by_kid() {
        let mut second = certificate();
        second["kid"] = serde_json::json!("k2");
        let encryption = serde_json::json!({"kty":"RSA","use":"enc","kid":"e1","e":"AQAB",
            "n": crate::jws::golden::GOLDEN_N});
        let set = serde_json::json!({"keys": [encryption, certificate(), second]});
        for form in [set.clone(), serde_json::Value::String(set.to_string())] {
            let record = serde_json::json!({"entityinfo":{"id":"AA-1","certificate":form}});
            let parsed = parse(record.to_string().as_bytes(), "AA-1").unwrap();
            assert_eq!(parsed.kids(), vec![Some("k1"), Some("k2")]);
            assert_eq!(
                parsed.choose(Some("k2")).unwrap().kid.as_deref(),
                Some("k2")
            );
            assert!(
                parsed.choose(Some("e1")).is_none(),
                "an encryption key never verifies"
            );
            assert!(parsed.choose(Some("nope")).is_none());
        }
        let empty = serde_json::json!({"entityinfo":{"id":"AA-1","certificate":{"keys":[]}}});
        assert_eq!(
            parse(empty.to_string().as_bytes(), "AA-1"),
            Err(RecordError::BadCertificate)
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
