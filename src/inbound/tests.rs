use super::*;

#[test]
fn default_issuers_follow_the_iam_url() {
    assert_eq!(
        default_issuers("https://api.sandbox.sahamati.org.in/iam"),
        [
            "https://api.sandbox.sahamati.org.in/auth/realms/sahamati",
            "https://tokens.sandbox.sahamati.org.in/auth/realms/sahamati"
        ]
    );
    assert_eq!(
        default_issuers("https://api.sahamati.org.in/iam/")[0],
        "https://api.sahamati.org.in/auth/realms/sahamati"
    );
    assert_eq!(
        default_issuers("https://iam.example.in/iam"),
        ["https://iam.example.in/auth/realms/sahamati"]
    );
    assert_eq!(
        default_issuers("https://iam.example.in:8443/some/iam"),
        ["https://iam.example.in:8443/auth/realms/sahamati"]
    );
    assert_eq!(
        default_issuers("http://127.0.0.1:7380/iam"),
        ["http://127.0.0.1:7380/auth/realms/sahamati"]
    );
    assert!(default_issuers("not a url").is_empty());
    assert_eq!(
        jwks_url_for("https://h/auth/realms/sahamati/"),
        "https://h/auth/realms/sahamati/protocol/openid-connect/certs"
    );
}

#[test]
fn outcome_indices_are_dense_and_distinct() {
    let all: Vec<Outcome> = Outcome::all().collect();
    let mut indices: Vec<usize> = all.iter().map(|o| o.index()).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..all.len()).collect::<Vec<_>>());
}

#[test]
fn the_fingerprint_matches_the_entity_one() {
    let token = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
    assert_eq!(
        fingerprint(token),
        crate::entity::fingerprint(&secrecy::SecretString::from(token))
    );
}
