//! The URLs of upstream requests, built segment by segment from a base URL (`https://…/iam`,
//! `https://…/cr`): never by formatting strings, so that what goes into a segment stays in that segment.
//!
//! Each segment is pushed with the `url` crate's segment API, which percent-encodes whatever could end
//! the segment or the path (`/ ? # %`, spaces, non-ASCII). The one thing it does not encode is a
//! segment that is exactly `.` or `..`: it drops it, so such a segment would silently name another
//! resource. Ids therefore come in as [`EntityId`]s, whose grammar refuses them, and the other segments
//! are this crate's constants.

use reqwest::Url;

use super::Endpoint;
use crate::entity::{EntityId, Role};

/// `base` with `segments` appended to its path (a trailing `/` of the base does not double), and no
/// query or fragment.
pub fn with_segments<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Only a URL that cannot be a base (`mailto:`, `data:`) has no segments; an http(s) URL always has.
    // Such a URL is left as it is, and the HTTP client refuses its scheme.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// An IAM endpoint below the IAM base: `{base}/v1/entity/token/generate` and the like.
pub fn endpoint_url(base: &Url, endpoint: Endpoint) -> Url {
    with_segments(base, endpoint.path().split('/').filter(|s| !s.is_empty()))
}

/// The Central Registry's record of one entity: `{base}/v2/entityInfo/{kind}/{id}`. `kind` is one of
/// the registry's types (`AA`, `FIU`, `FIP`).
pub fn entity_info_url(base: &Url, role: Role, id: &EntityId) -> Url {
    with_segments(base, ["v2", "entityInfo", role.as_str(), id.as_str()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Url {
        Url::parse(raw).unwrap()
    }

    #[test]
    fn a_base_with_a_path_prefix_keeps_it() {
        let id = EntityId::parse("AA-ONE").unwrap();
        for base in ["http://127.0.0.1:7380/cr", "http://127.0.0.1:7380/cr/"] {
            assert_eq!(
                entity_info_url(&url(base), Role::Aa, &id).as_str(),
                "http://127.0.0.1:7380/cr/v2/entityInfo/AA/AA-ONE"
            );
        }
        assert_eq!(
            entity_info_url(&url("https://cr.example"), Role::Fiu, &id).as_str(),
            "https://cr.example/v2/entityInfo/FIU/AA-ONE"
        );
        assert_eq!(
            entity_info_url(&url("https://x.example/a/b/cr"), Role::Fip, &id).as_str(),
            "https://x.example/a/b/cr/v2/entityInfo/FIP/AA-ONE"
        );
        assert_eq!(
            endpoint_url(&url("https://api.example/iam"), Endpoint::SecretRead).as_str(),
            "https://api.example/iam/v1/entity/secret/read"
        );
        assert_eq!(
            endpoint_url(&url("http://127.0.0.1:1/iam/"), Endpoint::EntityToken).as_str(),
            "http://127.0.0.1:1/iam/v1/entity/token/generate"
        );
    }

    #[test]
    fn what_goes_into_a_segment_stays_in_it() {
        let base = url("http://127.0.0.1:7380/cr?stale=1#frag");
        // Any character an id grammar might one day let through is encoded, never interpreted.
        let built = with_segments(&base, ["v2", "a/b", "c?d=1#e", "%2e%2e", "x y", "é"]);
        assert_eq!(
            built.as_str(),
            "http://127.0.0.1:7380/cr/v2/a%2Fb/c%3Fd=1%23e/%252e%252e/x%20y/%C3%A9"
        );
        assert_eq!(built.query(), None);
        assert_eq!(built.path_segments().unwrap().count(), 7);
        // The one gap, and why ids are `EntityId`s: the segment API drops `.` and `..`.
        assert_eq!(
            with_segments(&url("http://h/cr"), ["v2", ".."]).as_str(),
            "http://h/cr/v2"
        );
        assert!(EntityId::parse("..").is_err());
        // Ids with dots that are not only dots are kept as written.
        let dotted = EntityId::parse("fiu@acme.in").unwrap();
        assert_eq!(
            entity_info_url(&url("http://h/cr"), Role::Fiu, &dotted).as_str(),
            "http://h/cr/v2/entityInfo/FIU/fiu@acme.in"
        );
    }

    proptest::proptest! {
        /// Whatever string is offered as an id (dots, slashes, `?#%`, spaces, controls, non-ASCII, in any
        /// mix): either the grammar refuses it, or the URL built from it has exactly one more segment
        /// below the type, and that segment is the id as written.
        #[test]
        fn an_accepted_id_is_exactly_one_segment(raw in "[./?#%a-zA-Z0-9_@:\\- \t\u{0}\u{7f}é]{0,12}") {
            if let Ok(id) = EntityId::parse(&raw) {
                let built = entity_info_url(&url("http://127.0.0.1:7380/cr"), Role::Aa, &id);
                let segments: Vec<&str> = built.path_segments().unwrap().collect();
                proptest::prop_assert_eq!(segments, vec!["cr", "v2", "entityInfo", "AA", raw.as_str()]);
                proptest::prop_assert_eq!(built.query(), None);
            }
        }
    }
}
