//! Why a policy document was refused, and where in it the problem is.
//!
//! [`Policy::parse`](crate::Policy::parse) validates the whole document before it is
//! stored, so every error carries a [`Location`]: the statement (index and Sid) and the
//! path of fields inside it, e.g.
//! `Statement[1] (Sid "TimeBound") › Condition › DateLessThan › aws:CurrentTime: "2024-13-01" is not a valid date …`.

use std::fmt;

use thiserror::Error;

/// A policy document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// The text is not JSON at all.
    #[error("policy is not valid JSON: {message}")]
    Syntax {
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column of the first error.
        column: usize,
        /// What the JSON parser reported.
        message: String,
    },
    /// The JSON is not a valid identity-based policy.
    #[error("{location}: {problem}")]
    Invalid {
        /// Where the problem is.
        location: Location,
        /// What the problem is.
        problem: Problem,
    },
}

impl PolicyError {
    /// Where the problem is, for errors that are not JSON syntax errors.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PolicyError::Invalid { location, .. } => Some(location),
            PolicyError::Syntax { .. } => None,
        }
    }

    /// What the problem is, for errors that are not JSON syntax errors.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            PolicyError::Invalid { problem, .. } => Some(problem),
            PolicyError::Syntax { .. } => None,
        }
    }
}

/// A place in a policy document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The statement, when the problem is inside one.
    pub statement: Option<StatementLocation>,
    /// Field names from the statement (or the document root) down to the offending
    /// value, e.g. `["Condition", "StringEquals", "aws:username"]` or `["Action[2]"]`.
    pub path: Vec<String>,
}

/// Which statement of a document: its position and its `Sid`, if it has a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLocation {
    /// 0-based position in `Statement` (0 when `Statement` is a single object).
    pub index: usize,
    /// The statement's `Sid`.
    pub sid: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if let Some(st) = &self.statement {
            write!(f, "Statement[{}]", st.index)?;
            if let Some(sid) = &st.sid {
                write!(f, " (Sid {sid:?})")?;
            }
            first = false;
        }
        for field in &self.path {
            if !first {
                f.write_str(" › ")?;
            }
            f.write_str(field)?;
            first = false;
        }
        if first {
            f.write_str("policy")?;
        }
        Ok(())
    }
}

/// What is wrong at a [`Location`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// A value has the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the grammar wants there.
        expected: &'static str,
        /// What the document has.
        found: &'static str,
    },
    /// An element name the grammar does not know (names are case-sensitive).
    #[error("unknown element {name:?}")]
    UnknownElement {
        /// The name as written.
        name: String,
    },
    /// The same key appears twice in one JSON object.
    #[error("{name:?} appears more than once")]
    DuplicateElement {
        /// The repeated key.
        name: String,
    },
    /// A required element is absent.
    #[error("{name:?} is required")]
    MissingElement {
        /// The missing element, e.g. `Effect`, or `Action or NotAction`.
        name: &'static str,
    },
    /// Two mutually exclusive elements are both present.
    #[error("{first:?} and {second:?} cannot both be present")]
    ConflictingElements {
        /// e.g. `Action`.
        first: &'static str,
        /// e.g. `NotAction`.
        second: &'static str,
    },
    /// `Principal`/`NotPrincipal` in an identity-based policy.
    #[error(
        "{name:?} is not allowed in an identity-based policy \
         (it belongs in resource-based and trust policies)"
    )]
    PrincipalNotAllowed {
        /// `Principal` or `NotPrincipal`.
        name: String,
    },
    /// `Version` is not one IAM knows.
    #[error("unsupported Version {found:?}: expected \"2012-10-17\" or \"2008-10-17\"")]
    UnsupportedVersion {
        /// The version as written.
        found: String,
    },
    /// `Effect` is not `Allow` or `Deny`.
    #[error("Effect must be \"Allow\" or \"Deny\", found {found:?}")]
    InvalidEffect {
        /// The effect as written.
        found: String,
    },
    /// A `Sid` with characters IAM does not allow.
    #[error("Sid {sid:?} may contain only the letters A-Z, a-z and the digits 0-9")]
    InvalidSid {
        /// The Sid as written.
        sid: String,
    },
    /// Two statements share a `Sid`.
    #[error("Sid {sid:?} is used by more than one statement")]
    DuplicateSid {
        /// The repeated Sid.
        sid: String,
    },
    /// An empty list where at least one entry is needed (`Statement`, `Action`, …).
    #[error("must not be empty")]
    Empty,
    /// An action pattern that is not `*` or `service:Name`.
    #[error("invalid action {action:?}: {reason}")]
    InvalidAction {
        /// The action as written.
        action: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A resource pattern that is not `*` or an ARN.
    #[error("invalid resource {resource:?}: {reason}")]
    InvalidResource {
        /// The resource as written.
        resource: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A condition operator name that does not exist.
    #[error("unknown condition operator {name:?}{}", suggestion_text(.suggestion))]
    UnknownOperator {
        /// The operator as written.
        name: String,
        /// The correctly-cased operator, when the name differs only in case.
        suggestion: Option<String>,
    },
    /// An operator combination that is not allowed (`NullIfExists`, `ForAllValues:Null`).
    #[error("condition operator {name:?} is not allowed: {reason}")]
    InvalidOperator {
        /// The operator as written.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A condition key with an empty name.
    #[error("condition key names must not be empty")]
    EmptyConditionKey,
    /// A date that is neither W3C ISO 8601 nor epoch seconds.
    #[error(
        "{value:?} is not a valid date: expected ISO 8601 such as 2024-06-30T23:59:59Z \
         (or YYYY, YYYY-MM, YYYY-MM-DD, …±hh:mm) or epoch seconds"
    )]
    InvalidDate {
        /// The value as written.
        value: String,
    },
    /// A number that is not a decimal.
    #[error("{value:?} is not a valid number: expected an integer or decimal such as 10 or 2.5")]
    InvalidNumber {
        /// The value as written.
        value: String,
    },
    /// An IP block that is not an IPv4/IPv6 address with an optional prefix length.
    #[error("{value:?} is not a valid CIDR block: expected e.g. 203.0.113.0/24 or 2001:db8::/32")]
    InvalidCidr {
        /// The value as written.
        value: String,
    },
    /// A boolean that is not `true` or `false`.
    #[error("{value:?} is not a valid boolean: expected \"true\" or \"false\"")]
    InvalidBool {
        /// The value as written.
        value: String,
    },
    /// A `BinaryEquals` value that is not base64.
    #[error("{value:?} is not valid base64")]
    InvalidBase64 {
        /// The value as written.
        value: String,
    },
    /// A condition value of a JSON type IAM does not accept (null, object, nested array).
    #[error("condition values must be strings, numbers or booleans, found {found}")]
    InvalidConditionValue {
        /// The JSON type found.
        found: &'static str,
    },
    /// A `${...}` reference where the operator does not take policy variables.
    #[error(
        "policy variables are not allowed with {operator:?} \
         (only String, Arn and Bool operators take them)"
    )]
    VariableNotAllowed {
        /// The operator as written.
        operator: String,
    },
    /// A `${...}` reference in the partition, service, region or account of an ARN.
    #[error(
        "policy variables may appear only in the resource part of an ARN \
         (after the fifth colon): {resource:?}"
    )]
    VariableOutsideResourcePart {
        /// The resource as written.
        resource: String,
    },
    /// A malformed `${...}` reference.
    #[error("invalid policy variable in {text:?}: {reason}")]
    InvalidVariable {
        /// The text containing it.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (operator names are case-sensitive: did you mean {s:?}?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn display_points_at_statement_and_field() {
        let e = PolicyError::Invalid {
            location: Location {
                statement: Some(StatementLocation {
                    index: 1,
                    sid: Some("TimeBound".into()),
                }),
                path: vec![
                    "Condition".into(),
                    "DateLessThan".into(),
                    "aws:CurrentTime".into(),
                ],
            },
            problem: Problem::InvalidDate {
                value: "2024-13-01".into(),
            },
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "Statement[1] (Sid \"TimeBound\") › Condition › DateLessThan › aws:CurrentTime: \"2024-13-01\" is not a valid date"
            ),
            "{text}"
        );
        let root = PolicyError::Invalid {
            location: Location::default(),
            problem: Problem::MissingElement { name: "Statement" },
        };
        assert_eq!(root.to_string(), "policy: \"Statement\" is required");
    }
}
