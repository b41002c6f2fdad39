//! Declared document parameters (`parameters` in a Session document: `type`, `default`,
//! `allowedValues`, `allowedPattern`, `description`, and AWS's `minChars`/`maxChars`/
//! `minItems`/`maxItems`), and the check of the values a StartSession passes.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::shell::MAX_VALUE_BYTES;
use super::{content_error, SessionError};

/// Most parameters one document declares.
pub const MAX_PARAMETERS: usize = 50;
/// Longest `allowedPattern`, in bytes.
const MAX_PATTERN_BYTES: usize = 1024;
/// Most items a `StringList` value or `allowedValues` holds.
const MAX_ITEMS: usize = 100;

/// `String` (one value) or `StringList` (several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// Exactly one value.
    String,
    /// A list of values.
    StringList,
}

/// One declared parameter.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// `type`.
    pub kind: ParamType,
    /// `description`.
    pub description: String,
    /// `default` (a `StringList` default is a list); `None`: the parameter is required.
    pub default: Option<Vec<String>>,
    /// `allowedValues` (empty: any).
    pub allowed_values: Vec<String>,
    /// `allowedPattern`, matched against the whole value.
    pub allowed_pattern: Option<Regex>,
    /// `minChars` / `maxChars` of each value.
    pub chars: (usize, usize),
    /// `minItems` / `maxItems` of a `StringList`.
    pub items: (usize, usize),
}

impl ParamSpec {
    /// The `DefaultValue` DescribeDocument shows.
    pub fn default_text(&self) -> Option<String> {
        let d = self.default.as_ref()?;
        Some(match self.kind {
            ParamType::String => d.first().cloned().unwrap_or_default(),
            ParamType::StringList => d.join(","),
        })
    }

    /// Whether `v` is one of the values the document admits explicitly (by `allowedValues`
    /// or `allowedPattern`), which is what lets a word start with `-`.
    pub fn explicitly_allows(&self, v: &str) -> bool {
        (!self.allowed_values.is_empty() && self.allowed_values.iter().any(|a| a == v))
            || self.allowed_pattern.as_ref().is_some_and(|r| r.is_match(v))
    }

    /// Checks one value against the declared constraints.
    fn check_value(&self, name: &str, v: &str) -> Result<(), String> {
        let shown: String = v.chars().take(64).collect();
        if v.contains('\0') {
            return Err(format!("The parameter {name} must not contain NUL."));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "The parameter {name} is longer than {MAX_VALUE_BYTES} bytes."
            ));
        }
        let n = v.chars().count();
        if n < self.chars.0 || n > self.chars.1 {
            return Err(format!(
                "The parameter {name} must have between {} and {} characters.",
                self.chars.0, self.chars.1
            ));
        }
        if !self.allowed_values.is_empty() && !self.allowed_values.iter().any(|a| a == v) {
            return Err(format!(
                "The value '{shown}' of parameter {name} is not one of its allowedValues."
            ));
        }
        if let Some(re) = &self.allowed_pattern {
            if !re.is_match(v) {
                return Err(format!(
                    "The value '{shown}' of parameter {name} does not match its allowedPattern {}.",
                    re.as_str()
                ));
            }
        }
        Ok(())
    }

    /// Checks a list of values (one for a `String`).
    fn check_values(&self, name: &str, vs: &[String]) -> Result<(), String> {
        match self.kind {
            ParamType::String if vs.len() != 1 => {
                return Err(format!("The parameter {name} takes exactly one value."))
            }
            ParamType::StringList if vs.len() < self.items.0 || vs.len() > self.items.1 => {
                return Err(format!(
                    "The parameter {name} takes between {} and {} values.",
                    self.items.0, self.items.1
                ))
            }
            _ => {}
        }
        vs.iter().try_for_each(|v| self.check_value(name, v))
    }
}

fn str_list(v: &Value, what: &str) -> Result<Vec<String>, SessionError> {
    let arr = v
        .as_array()
        .ok_or_else(|| content_error(format!("{what} must be a list of strings.")))?;
    if arr.len() > MAX_ITEMS {
        return Err(content_error(format!(
            "{what} has more than {MAX_ITEMS} items."
        )));
    }
    arr.iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(content_error(format!("{what} must be a list of strings."))),
        })
        .collect()
}

fn count(v: Option<&Value>, what: &str) -> Result<Option<usize>, SessionError> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| content_error(format!("{what} must be a non-negative integer."))),
    }
}

/// Parses and checks the `parameters` map of a document.
pub fn parse(parameters: Option<&Value>) -> Result<BTreeMap<String, ParamSpec>, SessionError> {
    let Some(v) = parameters else {
        return Ok(BTreeMap::new());
    };
    let map = v.as_object().ok_or_else(|| {
        content_error("parameters must be a map of parameter name to definition.")
    })?;
    if map.len() > MAX_PARAMETERS {
        return Err(content_error(format!(
            "A document declares at most {MAX_PARAMETERS} parameters."
        )));
    }
    let mut out = BTreeMap::new();
    for (name, def) in map {
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(content_error(format!(
                "The parameter name '{}' must be 1 to 128 letters, digits or underscores.",
                name.chars().take(64).collect::<String>()
            )));
        }
        out.insert(name.clone(), parse_one(name, def)?);
    }
    Ok(out)
}

fn parse_one(name: &str, def: &Value) -> Result<ParamSpec, SessionError> {
    const KEYS: &[&str] = &[
        "type",
        "description",
        "default",
        "allowedValues",
        "allowedPattern",
        "minChars",
        "maxChars",
        "minItems",
        "maxItems",
        "displayType",
    ];
    let def: &Map<String, Value> = def
        .as_object()
        .ok_or_else(|| content_error(format!("The parameter {name} must be a map.")))?;
    if let Some(k) = def.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(content_error(format!(
            "The parameter {name} has an unknown field {k}; the fields are {}.",
            KEYS.join(", ")
        )));
    }
    let kind = match def.get("type").and_then(Value::as_str) {
        Some("String") => ParamType::String,
        Some("StringList") => ParamType::StringList,
        _ => {
            return Err(content_error(format!(
                "The parameter {name} must have type String or StringList."
            )))
        }
    };
    let description = match def.get("description") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(content_error(format!(
                "The description of parameter {name} must be a string."
            )))
        }
    };
    let allowed_values = match def.get("allowedValues") {
        None => Vec::new(),
        Some(v) => str_list(v, &format!("allowedValues of parameter {name}"))?,
    };
    let allowed_pattern = match def.get("allowedPattern") {
        None => None,
        Some(Value::String(p)) if p.len() <= MAX_PATTERN_BYTES => {
            // Anchored: the pattern must match the whole value, not some part of it.
            let re = regex::RegexBuilder::new(&format!("^(?:{p})$"))
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .nest_limit(64)
                .build()
                .map_err(|e| {
                    content_error(format!(
                        "The allowedPattern of parameter {name} is not a valid regular expression: {e}"
                    ))
                })?;
            Some(re)
        }
        Some(_) => {
            return Err(content_error(format!(
                "The allowedPattern of parameter {name} must be a string of at most {MAX_PATTERN_BYTES} bytes."
            )))
        }
    };
    let min_chars = count(def.get("minChars"), "minChars")?.unwrap_or(0);
    let max_chars = count(def.get("maxChars"), "maxChars")?.unwrap_or(MAX_VALUE_BYTES);
    let min_items = count(def.get("minItems"), "minItems")?.unwrap_or(0);
    let max_items = count(def.get("maxItems"), "maxItems")?.unwrap_or(MAX_ITEMS);
    if min_chars > max_chars || min_items > max_items {
        return Err(content_error(format!(
            "The parameter {name} has a minimum above its maximum."
        )));
    }
    let mut spec = ParamSpec {
        kind,
        description,
        default: None,
        allowed_values,
        allowed_pattern,
        chars: (min_chars, max_chars),
        items: (min_items, max_items.min(MAX_ITEMS)),
    };
    spec.default = match (kind, def.get("default")) {
        (_, None) => None,
        (ParamType::String, Some(Value::String(s))) => Some(vec![s.clone()]),
        (ParamType::String, Some(Value::Number(n))) => Some(vec![n.to_string()]),
        (ParamType::String, Some(Value::Bool(b))) => Some(vec![b.to_string()]),
        (ParamType::StringList, Some(v)) => {
            Some(str_list(v, &format!("The default of parameter {name}"))?)
        }
        _ => {
            return Err(content_error(format!(
                "The default of parameter {name} must be a string."
            )))
        }
    };
    if let Some(d) = &spec.default {
        spec.check_values(name, d).map_err(|e| {
            content_error(format!(
                "The default does not satisfy its own constraints: {e}"
            ))
        })?;
    }
    Ok(spec)
}

/// The values a session runs with: each given value checked, defaults filled in, unknown
/// names and missing required parameters refused (`InvalidParameters`).
pub fn resolve(
    document: &str,
    specs: &BTreeMap<String, ParamSpec>,
    given: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, SessionError> {
    let invalid = |m: String| SessionError::client("InvalidParameters", m);
    for name in given.keys() {
        if !specs.contains_key(name) {
            let names: Vec<&str> = specs.keys().map(String::as_str).collect();
            let shown: String = name.chars().take(64).collect();
            return Err(invalid(format!(
                "{shown} is not a parameter of {document}; it takes {}.",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    let mut out = BTreeMap::new();
    for (name, spec) in specs {
        let values = match given.get(name) {
            Some(v) if !v.is_empty() => v.clone(),
            _ => spec
                .default
                .clone()
                .ok_or_else(|| invalid(format!("{document} requires the parameter {name}.")))?,
        };
        spec.check_values(name, &values).map_err(invalid)?;
        out.insert(name.clone(), values);
    }
    Ok(out)
}
