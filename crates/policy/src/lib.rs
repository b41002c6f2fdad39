//! IAM-compatible policy documents for Airlock: parse, validate, evaluate.
//!
//! Pure code (no I/O, no async). The server stores a [`Policy`] only if
//! [`Policy::parse`] accepts it, builds a [`RequestContext`] per request and resource,
//! and calls [`evaluate`], whose [`Decision`] says which statement decided and why.
//! Semantics follow `design/policy-and-api.md` §1–§3: identity-based policies, explicit
//! deny over allow over implicit deny, permissions boundaries, every condition operator,
//! policy variables.
//!
//! ```
//! use airlock_policy::{evaluate, NamedPolicy, Policy, RequestContext};
//!
//! let policy = Policy::parse(r#"{
//!     "Version": "2012-10-17",
//!     "Statement": {
//!         "Effect": "Allow",
//!         "Action": "ssm:TerminateSession",
//!         "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*"
//!     }
//! }"#)?;
//! let ctx = RequestContext::new(
//!     "ssm:TerminateSession",
//!     "arn:aws:ssm:us-east-2:123456789012:session/alice-037a2e2586edc1ad4",
//! )
//! .with("aws:username", "alice");
//! let decision = evaluate(&[NamedPolicy { name: "alice-inline", policy: &policy }], None, &ctx);
//! assert!(decision.is_allowed());
//! assert_eq!(decision.explain(), r#"allowed by statement 0 of identity policy "alice-inline""#);
//! # Ok::<(), airlock_policy::PolicyError>(())
//! ```
#![forbid(unsafe_code)]

mod condition;
mod context;
mod document;
mod error;
mod evaluate;
mod json;
pub mod keys;
mod matching;
mod variables;

pub use context::RequestContext;
pub use document::{Effect, Policy, PolicyVersion, Statement};
pub use error::{Location, PolicyError, Problem, StatementLocation};
pub use evaluate::{evaluate, Decision, ImplicitDenyReason, NamedPolicy, PolicyKind, StatementRef};
