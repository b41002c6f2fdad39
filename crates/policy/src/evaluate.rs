//! The decision rule (§1.2): explicit deny, then allow (within any permissions boundary),
//! else implicit deny; and the [`Decision`] that says which statement decided.
//!
//! Statements are pooled across policies and their order does not change the outcome.
//! When several statements could be cited, the first in the order the caller listed
//! the policies (then document order) is, so explanations are deterministic.

use std::fmt;

use serde::Serialize;

use crate::context::RequestContext;
use crate::document::{Effect, Policy};
use crate::matching::fold_case;

/// A policy together with the name the caller knows it by (e.g. `user/alice/inline` or
/// a managed policy's name); the name appears in decisions and explanations.
#[derive(Debug, Clone, Copy)]
pub struct NamedPolicy<'a> {
    /// How the policy is cited in a [`StatementRef`].
    pub name: &'a str,
    /// The policy itself.
    pub policy: &'a Policy,
}

/// Whether a cited policy was an identity policy or part of the permissions boundary;
/// AWS's error texts say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyKind {
    /// A policy attached to the principal (or its groups).
    Identity,
    /// The principal's permissions boundary.
    Boundary,
}

/// One statement of one policy, for explanations and audit records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StatementRef {
    /// The [`NamedPolicy::name`] of the policy holding the statement.
    pub policy: String,
    /// Whether that policy is an identity policy or the boundary.
    pub kind: PolicyKind,
    /// The statement's 0-based position in the policy's `Statement` list.
    pub index: usize,
    /// The statement's `Sid`, if it has one.
    pub sid: Option<String>,
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement {}", self.index)?;
        if let Some(sid) = &self.sid {
            write!(f, " (Sid {sid:?})")?;
        }
        let kind = match self.kind {
            PolicyKind::Identity => "identity policy",
            PolicyKind::Boundary => "permissions boundary",
        };
        write!(f, " of {kind} {:?}", self.policy)
    }
}

/// Why a request was implicitly denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum ImplicitDenyReason {
    /// No identity-policy statement allows the request.
    NoIdentityAllow,
    /// An identity policy allows it, but the permissions boundary does not.
    BoundaryDidNotAllow {
        /// The identity statement that would have allowed it.
        identity_allow: StatementRef,
    },
}

/// The outcome of [`evaluate`], with the statement that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision")]
pub enum Decision {
    /// The request is allowed.
    Allow {
        /// The identity statement that allows it.
        by: StatementRef,
        /// The boundary statement that also allows it, when a boundary is set.
        boundary: Option<StatementRef>,
    },
    /// A `Deny` statement matched; nothing can override it.
    ExplicitDeny {
        /// The deny statement.
        by: StatementRef,
    },
    /// Nothing (or not enough) allows the request.
    ImplicitDeny {
        /// Why.
        reason: ImplicitDenyReason,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// One sentence saying why, for audit records and `airlock policy simulate`.
    pub fn explain(&self) -> String {
        match self {
            Decision::Allow { by, boundary: None } => format!("allowed by {by}"),
            Decision::Allow {
                by,
                boundary: Some(b),
            } => format!("allowed by {by}, within {b}"),
            Decision::ExplicitDeny { by } => format!("explicitly denied by {by}"),
            Decision::ImplicitDeny {
                reason: ImplicitDenyReason::NoIdentityAllow,
            } => "implicitly denied: no identity policy statement allows the request".to_owned(),
            Decision::ImplicitDeny {
                reason: ImplicitDenyReason::BoundaryDidNotAllow { identity_allow },
            } => format!(
                "implicitly denied: {identity_allow} allows the request, \
                 but no permissions boundary statement does"
            ),
        }
    }

    /// The tail AWS appends to `User: ARN is not authorized to perform: ACTION on
    /// resource: ARN` for this decision, e.g. ` with an explicit deny in an
    /// identity-based policy`; `None` when the request is allowed.
    pub fn aws_reason(&self, action: &str) -> Option<String> {
        match self {
            Decision::Allow { .. } => None,
            Decision::ExplicitDeny { by } => Some(
                match by.kind {
                    PolicyKind::Identity => " with an explicit deny in an identity-based policy",
                    PolicyKind::Boundary => " with an explicit deny in a permissions boundary",
                }
                .to_owned(),
            ),
            Decision::ImplicitDeny {
                reason: ImplicitDenyReason::NoIdentityAllow,
            } => Some(format!(
                " because no identity-based policy allows the {action} action"
            )),
            Decision::ImplicitDeny {
                reason: ImplicitDenyReason::BoundaryDidNotAllow { .. },
            } => Some(format!(
                " because no permissions boundary allows the {action} action"
            )),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain())
    }
}

/// Decides `ctx` against the principal's identity policies and, when one is set, its
/// permissions boundary.
///
/// `boundary: None` means no boundary; `Some(&[])` is a boundary that allows nothing.
/// A `Deny` in either set is an explicit deny. Otherwise the request needs an `Allow`
/// in the identity policies *and*, with a boundary, an `Allow` in the boundary.
pub fn evaluate(
    identity: &[NamedPolicy<'_>],
    boundary: Option<&[NamedPolicy<'_>]>,
    ctx: &RequestContext,
) -> Decision {
    let action = fold_case(&ctx.action);
    let identity_allow = match scan(identity, PolicyKind::Identity, ctx, &action) {
        Scan::Deny(by) => return Decision::ExplicitDeny { by },
        Scan::Allow(by) => Some(by),
        Scan::Nothing => None,
    };
    let boundary_allow = match boundary {
        None => None,
        Some(policies) => match scan(policies, PolicyKind::Boundary, ctx, &action) {
            Scan::Deny(by) => return Decision::ExplicitDeny { by },
            Scan::Allow(by) => Some(Some(by)),
            Scan::Nothing => Some(None),
        },
    };
    match (identity_allow, boundary_allow) {
        (None, _) => Decision::ImplicitDeny {
            reason: ImplicitDenyReason::NoIdentityAllow,
        },
        (Some(by), None) => Decision::Allow { by, boundary: None },
        (Some(by), Some(Some(b))) => Decision::Allow {
            by,
            boundary: Some(b),
        },
        (Some(identity_allow), Some(None)) => Decision::ImplicitDeny {
            reason: ImplicitDenyReason::BoundaryDidNotAllow { identity_allow },
        },
    }
}

/// What one set of policies says about a request.
enum Scan {
    /// A deny matched (the first one found).
    Deny(StatementRef),
    /// No deny matched; this is the first allow that did.
    Allow(StatementRef),
    /// Nothing matched.
    Nothing,
}

fn scan(
    policies: &[NamedPolicy<'_>],
    kind: PolicyKind,
    ctx: &RequestContext,
    action: &str,
) -> Scan {
    let mut allow = None;
    for named in policies {
        for (index, statement) in named.policy.statements().iter().enumerate() {
            let wanted = match statement.effect() {
                Effect::Deny => true,
                // Only the first allow is cited, so later ones need not be evaluated.
                Effect::Allow => allow.is_none(),
            };
            if !wanted || !statement.matches(ctx, action) {
                continue;
            }
            let by = StatementRef {
                policy: named.name.to_owned(),
                kind,
                index,
                sid: statement.sid().map(str::to_owned),
            };
            match statement.effect() {
                Effect::Deny => return Scan::Deny(by),
                Effect::Allow => allow = Some(by),
            }
        }
    }
    allow.map_or(Scan::Nothing, Scan::Allow)
}
