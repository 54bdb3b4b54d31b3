//! Who may call us: the roles an endpoint of ours accepts, and whether one request's sender is one of them.
//!
//! ReBIT 2.0.0 fixes who calls whom: an FIU's endpoints (`/Consent/Notification`, `/FI/Notification`, …)
//! and an FIP's (`/FI/request`, `/Accounts/discover`, …) are called by the AA; an AA's by FIUs and FIPs.
//! So by default the roles accepted follow our own entity's role, read from our own token. A setting
//! (`--authorize-roles`) sets them for a listener instead, and a request (`?role=`) can only narrow them.
//! The header a token came in binds its role: a token in `aa_api_key` must be an AA's, in `fip_api_key` an
//! FIP's. Pure functions; `/v1/authorize` follows them.

use crate::entity::Role;

/// The roles accepted as callers: `configured` when set, else those that may call an entity of our `own`
/// roles (every role when ours is not known yet), narrowed to `asked` when the request names some.
pub fn accepted(own: &[Role], configured: Option<&[Role]>, asked: &[Role]) -> Vec<Role> {
    let mut base: Vec<Role> = match configured {
        Some(roles) => roles.to_vec(),
        None if own.is_empty() => Role::ALL.to_vec(),
        None => {
            let mut callers = Vec::new();
            for role in own.iter().flat_map(|r| r.callers()) {
                if !callers.contains(role) {
                    callers.push(*role);
                }
            }
            callers
        }
    };
    if !asked.is_empty() {
        base.retain(|r| asked.contains(r));
    }
    base
}

/// Why a sender with a valid token may not call this endpoint; the message names the role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRefused {
    #[error("the token in {header} is not an {role} token")]
    NotBoundRole { header: &'static str, role: Role },
    #[error("{found} may not call this endpoint (it accepts {accepted})")]
    NotAccepted { found: String, accepted: String },
}

/// The role the sender calls in: one of its token's `roles` that the header allows (`bound`) and the
/// endpoint accepts.
pub fn admit(
    token_roles: &[Role],
    bound: Option<(&'static str, Role)>,
    accepted: &[Role],
) -> Result<Role, RoleRefused> {
    if let Some((header, role)) = bound
        && !token_roles.contains(&role)
    {
        return Err(RoleRefused::NotBoundRole { header, role });
    }
    token_roles
        .iter()
        .copied()
        .filter(|r| bound.is_none_or(|(_, b)| b == *r))
        .find(|r| accepted.contains(r))
        .ok_or_else(|| RoleRefused::NotAccepted {
            found: names(token_roles).unwrap_or_else(|| "a token without a role".into()),
            accepted: names(accepted).unwrap_or_else(|| "no role".into()),
        })
}

fn names(roles: &[Role]) -> Option<String> {
    (!roles.is_empty()).then(|| {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Aa, Fip, Fiu};

    #[test]
    fn by_default_the_callers_follow_our_own_role() {
        assert_eq!(accepted(&[Fiu], None, &[]), vec![Aa]);
        assert_eq!(accepted(&[Fip], None, &[]), vec![Aa]);
        assert_eq!(accepted(&[Aa], None, &[]), vec![Fiu, Fip]);
        assert_eq!(accepted(&[Fiu, Fip], None, &[]), vec![Aa]);
        assert_eq!(accepted(&[], None, &[]), Role::ALL.to_vec());
    }

    #[test]
    fn a_setting_sets_them_and_a_request_only_narrows() {
        assert_eq!(accepted(&[Fiu], Some(&[Aa, Fip]), &[]), vec![Aa, Fip]);
        assert_eq!(accepted(&[Aa], None, &[Fip]), vec![Fip]);
        // Asking for a role the endpoint does not accept leaves none: the request cannot widen.
        assert_eq!(accepted(&[Fiu], None, &[Fip]), Vec::<Role>::new());
    }

    #[test]
    fn the_header_binds_the_role_and_the_endpoint_decides() {
        assert_eq!(admit(&[Aa], Some(("aa_api_key", Aa)), &[Aa]), Ok(Aa));
        assert_eq!(admit(&[Aa], None, &[Aa]), Ok(Aa));
        // An FIP's token on an FIU's endpoint, whatever the header says.
        let fip_on_fiu = admit(&[Fip], Some(("aa_api_key", Aa)), &[Aa]).unwrap_err();
        assert_eq!(
            fip_on_fiu.to_string(),
            "the token in aa_api_key is not an AA token"
        );
        let refused = admit(&[Fip], None, &[Aa]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "FIP may not call this endpoint (it accepts AA)"
        );
        // An AA's token in fip_api_key.
        assert!(admit(&[Aa], Some(("fip_api_key", Fip)), &[Fiu, Fip]).is_err());
        assert_eq!(
            admit(&[Fiu, Fip], Some(("fip_api_key", Fip)), &[Fip]),
            Ok(Fip)
        );
    }
}
