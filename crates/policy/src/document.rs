//! Policy documents: the grammar of §1.1, validated and compiled in one pass.
//!
//! [`Policy::parse`] refuses anything IAM would refuse for an identity-based policy
//! (unknown or duplicated elements, `Principal`, a bad `Version`, empty lists, unknown
//! condition operators, unparsable dates/numbers/CIDRs/base64, misplaced variables) and
//! compiles the rest, so a stored policy is either whole or not stored at all, and its
//! evaluation cannot fail.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::condition::{Condition, Operator};
use crate::context::RequestContext;
use crate::error::{Location, PolicyError, Problem, StatementLocation};
use crate::json::Json;
use crate::matching::{arn_match, fold_case, glob, glob_match, Tok};
use crate::variables::Template;

/// The `Version` of a policy document, which decides whether `${...}` is substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PolicyVersion {
    /// `"2012-10-17"`: policy variables are substituted.
    V2012_10_17,
    /// `"2008-10-17"`: `${...}` is literal text.
    V2008_10_17,
    /// No `Version` element: like 2008-10-17, `${...}` is literal text.
    Unspecified,
}

impl PolicyVersion {
    /// Whether this version substitutes policy variables.
    pub fn has_variables(self) -> bool {
        self == PolicyVersion::V2012_10_17
    }
}

/// Whether a statement grants or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Effect {
    /// Grants the request (subject to denies and any permissions boundary).
    Allow,
    /// Forbids the request, whatever else allows it.
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
        })
    }
}

/// A validated, compiled identity-based policy document.
///
/// Keeps the original text, so the server can store and show exactly what was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    source: String,
    version: PolicyVersion,
    statements: Vec<Statement>,
}

/// One statement of a [`Policy`].
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    actions: Patterns<Vec<Tok>>,
    resources: Patterns<Template>,
    conditions: Vec<Condition>,
}

/// `Action` (match any) or `NotAction` (match none), and likewise for resources.
#[derive(Debug, Clone, PartialEq)]
struct Patterns<P> {
    negated: bool,
    patterns: Vec<P>,
}

impl Policy {
    /// Parses and validates `json`; the error names the statement and field at fault.
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        let root: Json = serde_json::from_str(json).map_err(|e| PolicyError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let at = Cursor::root();
        let Json::Object(members) = &root else {
            return Err(at.fail(Problem::WrongType {
                expected: "a JSON object",
                found: root.kind(),
            }));
        };
        at.no_duplicates(members)?;
        for (name, _) in members {
            if !matches!(name.as_str(), "Version" | "Id" | "Statement") {
                return Err(at.fail(Problem::UnknownElement { name: name.clone() }));
            }
        }
        let version = match member(members, "Version") {
            None => PolicyVersion::Unspecified,
            Some(Json::String(v)) if v == "2012-10-17" => PolicyVersion::V2012_10_17,
            Some(Json::String(v)) if v == "2008-10-17" => PolicyVersion::V2008_10_17,
            Some(Json::String(v)) => {
                return Err(at
                    .field("Version")
                    .fail(Problem::UnsupportedVersion { found: v.clone() }))
            }
            Some(other) => return Err(at.field("Version").wrong_type("a string", other)),
        };
        // `Id` is accepted and ignored: AWS documents carry it, and it means nothing here.
        if let Some(id) = member(members, "Id") {
            if !matches!(id, Json::String(_)) {
                return Err(at.field("Id").wrong_type("a string", id));
            }
        }
        let raw_statements = match member(members, "Statement") {
            None => return Err(at.fail(Problem::MissingElement { name: "Statement" })),
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(at.field("Statement").fail(Problem::Empty))
            }
            Some(Json::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(one @ Json::Object(_)) => vec![one],
            Some(other) => {
                return Err(at
                    .field("Statement")
                    .wrong_type("an object or an array of objects", other))
            }
        };
        let mut statements = Vec::with_capacity(raw_statements.len());
        let mut sids = BTreeSet::new();
        for (index, raw) in raw_statements.into_iter().enumerate() {
            let statement = Statement::parse(index, raw, version)?;
            if let Some(sid) = statement.sid.as_deref() {
                if !sids.insert(sid.to_owned()) {
                    return Err(Cursor::statement(index, statement.sid.clone())
                        .field("Sid")
                        .fail(Problem::DuplicateSid {
                            sid: sid.to_owned(),
                        }));
                }
            }
            statements.push(statement);
        }
        Ok(Policy {
            source: json.to_owned(),
            version,
            statements,
        })
    }

    /// The document exactly as it was given to [`Policy::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The document's `Version`.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The statements, in document order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s)
    }
}

impl Statement {
    /// The statement's `Sid`, if it has one.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// Whether the statement allows or denies.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Whether the statement applies to the request: action, resource and every
    /// condition match. `folded_action` is `ctx.action` case-folded (done once per
    /// evaluation rather than once per statement).
    pub(crate) fn matches(&self, ctx: &RequestContext, folded_action: &str) -> bool {
        let action_hit = self
            .actions
            .patterns
            .iter()
            .any(|p| glob_match(p, folded_action));
        if action_hit == self.actions.negated {
            return false;
        }
        // An entry whose variable cannot be resolved matches nothing (§1.4).
        let resource_hit = self.resources.patterns.iter().any(|t| {
            t.resolve_glob(ctx)
                .is_some_and(|p| arn_match(&p, &ctx.resource))
        });
        if resource_hit == self.resources.negated {
            return false;
        }
        self.conditions.iter().all(|c| c.holds(ctx))
    }

    fn parse(index: usize, raw: &Json, version: PolicyVersion) -> Result<Statement, PolicyError> {
        let mut at = Cursor::statement(index, None);
        let Json::Object(members) = raw else {
            return Err(at.wrong_type("an object", raw));
        };
        // Read the Sid first so that every later error can name the statement by it.
        let sid = match member(members, "Sid") {
            None => None,
            Some(Json::String(sid)) => {
                if !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(at
                        .field("Sid")
                        .fail(Problem::InvalidSid { sid: sid.clone() }));
                }
                // An empty Sid names nothing; treat it as absent.
                Some(sid.clone()).filter(|s| !s.is_empty())
            }
            Some(other) => return Err(at.field("Sid").wrong_type("a string", other)),
        };
        at = Cursor::statement(index, sid.clone());
        at.no_duplicates(members)?;
        for (name, _) in members {
            match name.as_str() {
                "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource"
                | "Condition" => {}
                "Principal" | "NotPrincipal" => {
                    return Err(at
                        .field(name)
                        .fail(Problem::PrincipalNotAllowed { name: name.clone() }))
                }
                _ => return Err(at.fail(Problem::UnknownElement { name: name.clone() })),
            }
        }
        let effect = match member(members, "Effect") {
            None => return Err(at.fail(Problem::MissingElement { name: "Effect" })),
            Some(Json::String(e)) if e == "Allow" => Effect::Allow,
            Some(Json::String(e)) if e == "Deny" => Effect::Deny,
            Some(Json::String(e)) => {
                return Err(at
                    .field("Effect")
                    .fail(Problem::InvalidEffect { found: e.clone() }))
            }
            Some(other) => return Err(at.field("Effect").wrong_type("a string", other)),
        };
        let actions = either(&at, members, "Action", "NotAction", |at, s| {
            compile_action(s).map_err(|reason| {
                at.fail(Problem::InvalidAction {
                    action: s.to_owned(),
                    reason,
                })
            })
        })?;
        let resources = either(&at, members, "Resource", "NotResource", |at, s| {
            compile_resource(s, version).map_err(|p| at.fail(p))
        })?;
        let conditions = match member(members, "Condition") {
            None => Vec::new(),
            Some(raw) => parse_conditions(&at.field("Condition"), raw, version)?,
        };
        Ok(Statement {
            sid,
            effect,
            actions,
            resources,
            conditions,
        })
    }
}

/// Parses exactly one of `positive`/`negative` (e.g. `Action`/`NotAction`): a string or
/// a non-empty array of strings, each compiled by `compile`.
fn either<P>(
    at: &Cursor,
    members: &[(String, Json)],
    positive: &'static str,
    negative: &'static str,
    compile: impl Fn(&Cursor, &str) -> Result<P, PolicyError>,
) -> Result<Patterns<P>, PolicyError> {
    let (name, negated, raw) = match (member(members, positive), member(members, negative)) {
        (Some(_), Some(_)) => {
            return Err(at.fail(Problem::ConflictingElements {
                first: positive,
                second: negative,
            }))
        }
        (Some(raw), None) => (positive, false, raw),
        (None, Some(raw)) => (negative, true, raw),
        (None, None) => {
            return Err(at.fail(Problem::MissingElement {
                name: if positive == "Action" {
                    "Action or NotAction"
                } else {
                    "Resource or NotResource"
                },
            }))
        }
    };
    let field = at.field(name);
    let patterns = match raw {
        Json::String(s) => vec![compile(&field, s)?],
        Json::Array(items) if items.is_empty() => return Err(field.fail(Problem::Empty)),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_at = at.field(&format!("{name}[{i}]"));
                match item {
                    Json::String(s) => compile(&item_at, s),
                    other => Err(item_at.wrong_type("a string", other)),
                }
            })
            .collect::<Result<_, _>>()?,
        other => return Err(field.wrong_type("a string or an array of strings", other)),
    };
    Ok(Patterns { negated, patterns })
}

/// `*`, or `service:Name` where the name may hold `*`/`?` wildcards. Case-folded.
fn compile_action(action: &str) -> Result<Vec<Tok>, &'static str> {
    if action == "*" {
        return Ok(vec![Tok::Star]);
    }
    let (service, name) = action
        .split_once(':')
        .ok_or("expected \"*\" or service:Action, e.g. ssm:StartSession")?;
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err("the service prefix may contain only letters, digits and '-' (no wildcards)");
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '?' | '-' | '_' | '.'))
    {
        return Err("the action name may contain only letters, digits and the wildcards * and ?");
    }
    Ok(glob(&fold_case(action)))
}

/// `*`, or an ARN pattern `arn:partition:service:region:account:resource`: wildcards
/// anywhere but the service; variables only in the resource part.
fn compile_resource(resource: &str, version: PolicyVersion) -> Result<Template, Problem> {
    let invalid = |reason| Problem::InvalidResource {
        resource: resource.to_owned(),
        reason,
    };
    if resource == "*" {
        return Ok(Template::plain(resource));
    }
    let template = if version.has_variables() {
        Template::parse(resource).map_err(|reason| Problem::InvalidVariable {
            text: resource.to_owned(),
            reason,
        })?
    } else {
        Template::plain(resource)
    };
    let head: Vec<&str> = template.leading_text().splitn(6, ':').collect();
    if head.len() < 6 {
        return Err(
            if template.has_references() && resource.matches(':').count() >= 5 {
                Problem::VariableOutsideResourcePart {
                    resource: resource.to_owned(),
                }
            } else {
                invalid("expected \"*\" or an ARN, arn:partition:service:region:account:resource")
            },
        );
    }
    if head.first() != Some(&"arn") {
        return Err(invalid("an ARN must start with \"arn:\""));
    }
    match head.get(2) {
        Some(&"") => Err(invalid("the service part of the ARN is empty")),
        Some(service) if service.contains(['*', '?']) => Err(invalid(
            "wildcards are not allowed in the service part of an ARN",
        )),
        _ => Ok(template),
    }
}

fn parse_conditions(
    at: &Cursor,
    raw: &Json,
    version: PolicyVersion,
) -> Result<Vec<Condition>, PolicyError> {
    let Json::Object(operators) = raw else {
        return Err(at.wrong_type("an object of condition operators", raw));
    };
    at.no_duplicates(operators)?;
    let mut conditions = Vec::new();
    for (op_name, block) in operators {
        let op_at = at.field(op_name);
        let operator = Operator::parse(op_name).map_err(|p| op_at.fail(p))?;
        let Json::Object(keys) = block else {
            return Err(op_at.wrong_type("an object of condition keys", block));
        };
        op_at.no_duplicates(keys)?;
        for (key, values) in keys {
            let key_at = op_at.field(key);
            let values = condition_values(&key_at, values)?;
            let condition = Condition::compile(&operator, key, &values, version.has_variables())
                .map_err(|p| key_at.fail(p))?;
            conditions.push(condition);
        }
    }
    Ok(conditions)
}

/// A condition value or non-empty array of them, each as a string (§1.1: numbers and
/// booleans may be written without quotes).
fn condition_values(at: &Cursor, raw: &Json) -> Result<Vec<String>, PolicyError> {
    let scalar = |j: &Json| match j {
        Json::String(s) | Json::Number(s) => Ok(s.clone()),
        Json::Bool(b) => Ok(b.to_string()),
        other => Err(at.fail(Problem::InvalidConditionValue {
            found: other.kind(),
        })),
    };
    match raw {
        Json::Array(items) if items.is_empty() => Err(at.fail(Problem::Empty)),
        Json::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

/// The value of the (first) member called `name`.
fn member<'a>(members: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
    members.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Where the parser is, for building errors.
#[derive(Debug, Clone)]
struct Cursor {
    location: Location,
}

impl Cursor {
    fn root() -> Self {
        Cursor {
            location: Location::default(),
        }
    }

    fn statement(index: usize, sid: Option<String>) -> Self {
        Cursor {
            location: Location {
                statement: Some(StatementLocation { index, sid }),
                path: Vec::new(),
            },
        }
    }

    fn field(&self, name: &str) -> Cursor {
        let mut location = self.location.clone();
        location.path.push(name.to_owned());
        Cursor { location }
    }

    fn fail(&self, problem: Problem) -> PolicyError {
        PolicyError::Invalid {
            location: self.location.clone(),
            problem,
        }
    }

    fn wrong_type(&self, expected: &'static str, found: &Json) -> PolicyError {
        self.fail(Problem::WrongType {
            expected,
            found: found.kind(),
        })
    }

    /// Refuses an object in which a key appears twice.
    fn no_duplicates(&self, members: &[(String, Json)]) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for (name, _) in members {
            if !seen.insert(name.as_str()) {
                return Err(self.fail(Problem::DuplicateElement { name: name.clone() }));
            }
        }
        Ok(())
    }
}
