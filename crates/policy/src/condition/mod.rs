//! The `Condition` element: operator names, compiled values, and their evaluation.
//!
//! A [`Condition`] is one `OPERATOR: { KEY: VALUES }` entry. It is compiled when the
//! policy is parsed (dates, numbers, CIDR blocks and base64 are decoded up front, so a
//! stored policy can never fail at evaluation time) and evaluated per request by
//! [`Condition::holds`], following §2 of the design:
//!
//! - values listed for one key are ORed; for negated operators (`StringNotEquals`,
//!   `NotIpAddress`, …) the request value must match *none* of them;
//! - a missing key makes positive operators false and negated ones true, `…IfExists`
//!   true, `ForAllValues:` true and `ForAnyValue:` false (the set qualifier decides
//!   before `IfExists`, as observed on AWS); `Null` tests presence itself;
//! - without a set qualifier, a key with several request values matches if any value
//!   matches (negated operators: if none does).

mod date;
mod ip;
mod number;

use std::net::IpAddr;

use base64::Engine as _;

use crate::context::RequestContext;
use crate::error::Problem;
use crate::matching::{arn_match, fold_case, glob_match, Tok};
use crate::variables::Template;

use self::ip::Cidr;
use self::number::Decimal;

/// `ForAllValues:` / `ForAnyValue:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    ForAllValues,
    ForAnyValue,
}

/// How a `Numeric*` / `Date*` operator compares the request value with a policy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    /// `request OP policy`.
    fn test<T: Ord>(self, request: &T, policy: &T) -> bool {
        match self {
            Cmp::Eq => request == policy,
            Cmp::Lt => request < policy,
            Cmp::Le => request <= policy,
            Cmp::Gt => request > policy,
            Cmp::Ge => request >= policy,
        }
    }
}

/// The family of an operator, without negation, qualifier or `IfExists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Numeric(Cmp),
    Date(Cmp),
    Bool,
    Binary,
    Ip,
    Arn,
    Null,
}

impl Kind {
    /// Whether `${...}` references are substituted in this operator's values.
    /// `Bool` takes them: the design settles the AWS pages' contradiction that way.
    fn takes_variables(self) -> bool {
        matches!(
            self,
            Kind::StringEquals
                | Kind::StringEqualsIgnoreCase
                | Kind::StringLike
                | Kind::Arn
                | Kind::Bool
        )
    }
}

/// Every base operator: (name, kind, negated).
const BASE_OPERATORS: &[(&str, Kind, bool)] = &[
    ("StringEquals", Kind::StringEquals, false),
    ("StringNotEquals", Kind::StringEquals, true),
    (
        "StringEqualsIgnoreCase",
        Kind::StringEqualsIgnoreCase,
        false,
    ),
    (
        "StringNotEqualsIgnoreCase",
        Kind::StringEqualsIgnoreCase,
        true,
    ),
    ("StringLike", Kind::StringLike, false),
    ("StringNotLike", Kind::StringLike, true),
    ("NumericEquals", Kind::Numeric(Cmp::Eq), false),
    ("NumericNotEquals", Kind::Numeric(Cmp::Eq), true),
    ("NumericLessThan", Kind::Numeric(Cmp::Lt), false),
    ("NumericLessThanEquals", Kind::Numeric(Cmp::Le), false),
    ("NumericGreaterThan", Kind::Numeric(Cmp::Gt), false),
    ("NumericGreaterThanEquals", Kind::Numeric(Cmp::Ge), false),
    ("DateEquals", Kind::Date(Cmp::Eq), false),
    ("DateNotEquals", Kind::Date(Cmp::Eq), true),
    ("DateLessThan", Kind::Date(Cmp::Lt), false),
    ("DateLessThanEquals", Kind::Date(Cmp::Le), false),
    ("DateGreaterThan", Kind::Date(Cmp::Gt), false),
    ("DateGreaterThanEquals", Kind::Date(Cmp::Ge), false),
    ("Bool", Kind::Bool, false),
    ("BinaryEquals", Kind::Binary, false),
    ("IpAddress", Kind::Ip, false),
    ("NotIpAddress", Kind::Ip, true),
    ("ArnEquals", Kind::Arn, false),
    ("ArnLike", Kind::Arn, false),
    ("ArnNotEquals", Kind::Arn, true),
    ("ArnNotLike", Kind::Arn, true),
    ("Null", Kind::Null, false),
];

const FOR_ALL: &str = "ForAllValues:";
const FOR_ANY: &str = "ForAnyValue:";
const IF_EXISTS: &str = "IfExists";

/// A parsed operator name such as `ForAllValues:StringLikeIfExists`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Operator {
    name: String,
    qualifier: Option<SetQualifier>,
    kind: Kind,
    negated: bool,
    if_exists: bool,
}

impl Operator {
    /// Parses an operator name (case-sensitive, as IAM's are).
    pub(crate) fn parse(name: &str) -> Result<Operator, Problem> {
        let unknown = || Problem::UnknownOperator {
            name: name.to_owned(),
            suggestion: suggest(name),
        };
        let (qualifier, rest) = if let Some(rest) = name.strip_prefix(FOR_ALL) {
            (Some(SetQualifier::ForAllValues), rest)
        } else if let Some(rest) = name.strip_prefix(FOR_ANY) {
            (Some(SetQualifier::ForAnyValue), rest)
        } else {
            (None, name)
        };
        let (base, if_exists) = match rest.strip_suffix(IF_EXISTS) {
            Some(base) => (base, true),
            None => (rest, false),
        };
        let &(_, kind, negated) = BASE_OPERATORS
            .iter()
            .find(|(n, _, _)| *n == base)
            .ok_or_else(unknown)?;
        if kind == Kind::Null && if_exists {
            return Err(Problem::InvalidOperator {
                name: name.to_owned(),
                reason: "Null already tests whether the key exists; it has no IfExists form",
            });
        }
        if kind == Kind::Null && qualifier.is_some() {
            return Err(Problem::InvalidOperator {
                name: name.to_owned(),
                reason: "Null takes no ForAllValues:/ForAnyValue: qualifier",
            });
        }
        Ok(Operator {
            name: name.to_owned(),
            qualifier,
            kind,
            negated,
            if_exists,
        })
    }
}

/// The correctly-cased spelling of `name`, if it differs from a valid operator only in
/// case.
fn suggest(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let (qualifier, rest) = [FOR_ALL, FOR_ANY]
        .iter()
        .find_map(|q| {
            lower
                .strip_prefix(&q.to_ascii_lowercase())
                .map(|rest| (*q, rest))
        })
        .unwrap_or(("", lower.as_str()));
    let suffix_lower = IF_EXISTS.to_ascii_lowercase();
    let (base, suffix) = match rest.strip_suffix(&suffix_lower) {
        Some(base) => (base, IF_EXISTS),
        None => (rest, ""),
    };
    let (canonical, _, _) = BASE_OPERATORS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(base))?;
    let suggestion = format!("{qualifier}{canonical}{suffix}");
    (suggestion != name).then_some(suggestion)
}

/// Policy values, decoded for the operator that uses them.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    /// String, Arn and Bool operators (which may contain variables).
    Text(Vec<Template>),
    Numbers(Vec<Decimal>),
    /// Nanoseconds since the epoch.
    Dates(Vec<i128>),
    Bytes(Vec<Vec<u8>>),
    Cidrs(Vec<Cidr>),
    /// `Null`: `true` = "the key must be absent".
    Null(Vec<bool>),
}

/// Values with their variables substituted for one request.
enum Resolved<'a> {
    /// Exact text (StringEquals, Bool); `None` marks an unresolvable variable.
    Exact(Vec<Option<String>>),
    /// Wildcard patterns (StringLike, Arn*); `None` marks an unresolvable variable.
    Globs(Vec<Option<Vec<Tok>>>),
    /// Values without variables.
    Fixed(&'a Values),
}

/// One `OPERATOR: { KEY: VALUES }` test.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    operator: Operator,
    /// The key, case-folded.
    key: String,
    values: Values,
}

impl Condition {
    /// Compiles one key's values for `operator`. `variables` says whether the policy's
    /// version substitutes `${...}`. `values` are the JSON values already turned into
    /// strings; there is at least one.
    pub(crate) fn compile(
        operator: &Operator,
        key: &str,
        values: &[String],
        variables: bool,
    ) -> Result<Condition, Problem> {
        if key.is_empty() {
            return Err(Problem::EmptyConditionKey);
        }
        let kind = operator.kind;
        if variables && !kind.takes_variables() && values.iter().any(|v| v.contains("${")) {
            return Err(Problem::VariableNotAllowed {
                operator: operator.name.clone(),
            });
        }
        let each = |f: &dyn Fn(&str) -> Option<()>, err: fn(String) -> Problem| {
            values
                .iter()
                .try_for_each(|v| f(v).ok_or_else(|| err(v.clone())))
        };
        let compiled = match kind {
            Kind::StringEquals
            | Kind::StringEqualsIgnoreCase
            | Kind::StringLike
            | Kind::Arn
            | Kind::Bool => {
                let mut templates = Vec::with_capacity(values.len());
                for v in values {
                    let template = if variables {
                        Template::parse(v).map_err(|reason| Problem::InvalidVariable {
                            text: v.clone(),
                            reason,
                        })?
                    } else {
                        Template::plain(v)
                    };
                    if kind == Kind::Bool {
                        if let Some(plain) = template.as_plain() {
                            if parse_bool(plain).is_none() {
                                return Err(Problem::InvalidBool { value: v.clone() });
                            }
                        }
                    }
                    templates.push(template);
                }
                Values::Text(templates)
            }
            Kind::Numeric(_) => {
                each(&|v| Decimal::parse(v).map(drop), |value| {
                    Problem::InvalidNumber { value }
                })?;
                Values::Numbers(values.iter().filter_map(|v| Decimal::parse(v)).collect())
            }
            Kind::Date(_) => {
                each(&|v| date::parse_instant(v).map(drop), |value| {
                    Problem::InvalidDate { value }
                })?;
                Values::Dates(
                    values
                        .iter()
                        .filter_map(|v| date::parse_instant(v))
                        .collect(),
                )
            }
            Kind::Binary => {
                each(&|v| decode_base64(v).map(drop), |value| {
                    Problem::InvalidBase64 { value }
                })?;
                Values::Bytes(values.iter().filter_map(|v| decode_base64(v)).collect())
            }
            Kind::Ip => {
                each(&|v| Cidr::parse(v).map(drop), |value| {
                    Problem::InvalidCidr { value }
                })?;
                Values::Cidrs(values.iter().filter_map(|v| Cidr::parse(v)).collect())
            }
            Kind::Null => {
                each(&|v| parse_bool(v).map(drop), |value| Problem::InvalidBool {
                    value,
                })?;
                Values::Null(values.iter().filter_map(|v| parse_bool(v)).collect())
            }
        };
        Ok(Condition {
            operator: operator.clone(),
            key: fold_case(key),
            values: compiled,
        })
    }

    /// Whether this condition holds for `ctx` (the §2.8 algorithm).
    pub(crate) fn holds(&self, ctx: &RequestContext) -> bool {
        let op = &self.operator;
        let request = ctx.values(&self.key);
        if let Values::Null(wants_absent) = &self.values {
            return wants_absent.iter().any(|&w| w == request.is_none());
        }
        let Some(request) = request else {
            return match op.qualifier {
                Some(SetQualifier::ForAllValues) => true,
                Some(SetQualifier::ForAnyValue) => false,
                None => op.if_exists || op.negated,
            };
        };
        let resolved = self.resolve(ctx);
        let positive = |x: &String| self.matches_any(&resolved, x);
        match op.qualifier {
            Some(SetQualifier::ForAllValues) => request.iter().all(|x| positive(x) != op.negated),
            Some(SetQualifier::ForAnyValue) => request.iter().any(|x| positive(x) != op.negated),
            None => request.iter().any(positive) != op.negated,
        }
    }

    /// Substitutes variables once per evaluation.
    fn resolve(&self, ctx: &RequestContext) -> Resolved<'_> {
        let Values::Text(templates) = &self.values else {
            return Resolved::Fixed(&self.values);
        };
        match self.operator.kind {
            Kind::StringLike | Kind::Arn => {
                Resolved::Globs(templates.iter().map(|t| t.resolve_glob(ctx)).collect())
            }
            _ => Resolved::Exact(templates.iter().map(|t| t.resolve_text(ctx)).collect()),
        }
    }

    /// Whether the request value `x` matches at least one policy value under the
    /// positive form of the operator. Unresolvable variables match nothing, and a request
    /// value that cannot be read as the operator's type (a non-date for `Date*`) matches
    /// nothing.
    fn matches_any(&self, resolved: &Resolved<'_>, x: &str) -> bool {
        match (self.operator.kind, resolved) {
            (Kind::StringEquals, Resolved::Exact(vs)) => vs.iter().flatten().any(|v| v == x),
            (Kind::StringEqualsIgnoreCase, Resolved::Exact(vs)) => {
                let x = fold_case(x);
                vs.iter().flatten().any(|v| fold_case(v) == x)
            }
            (Kind::Bool, Resolved::Exact(vs)) => {
                let Some(x) = parse_bool(x) else {
                    return false;
                };
                vs.iter().flatten().any(|v| parse_bool(v) == Some(x))
            }
            (Kind::StringLike, Resolved::Globs(ps)) => {
                ps.iter().flatten().any(|p| glob_match(p, x))
            }
            (Kind::Arn, Resolved::Globs(ps)) => ps.iter().flatten().any(|p| arn_match(p, x)),
            (Kind::Numeric(cmp), Resolved::Fixed(Values::Numbers(ns))) => {
                Decimal::parse(x).is_some_and(|x| ns.iter().any(|n| cmp.test(&x, n)))
            }
            (Kind::Date(cmp), Resolved::Fixed(Values::Dates(ds))) => {
                date::parse_instant(x).is_some_and(|x| ds.iter().any(|d| cmp.test(&x, d)))
            }
            (Kind::Binary, Resolved::Fixed(Values::Bytes(bs))) => {
                decode_base64(x).is_some_and(|x| bs.contains(&x))
            }
            (Kind::Ip, Resolved::Fixed(Values::Cidrs(cs))) => x
                .parse::<IpAddr>()
                .is_ok_and(|a| cs.iter().any(|c| c.contains(a))),
            // Unreachable by construction (compile pairs kinds with their values);
            // matching nothing is the fail-closed answer for an Allow.
            _ => false,
        }
    }
}

/// `true`/`false` in any case (policy literals and request values alike).
fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Standard base64, with or without padding.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .ok()
}

#[cfg(test)]
mod tests;
