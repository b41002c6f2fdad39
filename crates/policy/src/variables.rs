//! Policy variables: `${key}`, `${key, 'default'}` and the escapes `${*}`, `${?}`, `${$}`.
//!
//! A [`Template`] is policy text split into pieces that are either the author's own text
//! (where `*`/`?` are wildcards if the operator globs), literal text (escapes), or a
//! variable. Variables are resolved against the [`RequestContext`] at evaluation time;
//! their values are always literal, so a tag value containing `*` cannot widen a
//! pattern. Only policies with `"Version": "2012-10-17"` have variables; older or
//! version-less policies use [`Template::plain`], which keeps `${...}` as literal text.

use crate::context::RequestContext;
use crate::matching::{fold_case, push_glob, push_literal, Tok};

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text as the author wrote it; `*` and `?` are wildcards where the operator globs.
    Text(String),
    /// Text that is always literal (from `${*}`, `${?}`, `${$}`).
    Literal(String),
    /// A variable; `key` is case-folded.
    Var {
        key: String,
        default: Option<String>,
    },
}

/// Policy text that may contain variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// `text` taken literally, with no variable parsing (2008-10-17 or no `Version`).
    pub(crate) fn plain(text: &str) -> Self {
        Template {
            parts: vec![Part::Text(text.to_owned())],
        }
    }

    /// Parses `${...}` references in `text`. The error says what is wrong with which
    /// reference.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let (before, from_dollar) = rest.split_at(start);
            if !before.is_empty() {
                parts.push(Part::Text(before.to_owned()));
            }
            let inner = from_dollar.get(2..).unwrap_or_default();
            let (part, after) = parse_reference(inner)?;
            parts.push(part);
            rest = after;
        }
        if !rest.is_empty() || parts.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Whether the text contains a `${...}` reference (variable or escape).
    pub(crate) fn has_references(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Text(_)))
    }

    /// The author's text before the first reference; used to check where in an ARN the
    /// first reference sits.
    pub(crate) fn leading_text(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// The text if it has no references.
    pub(crate) fn as_plain(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Substitutes variables, producing plain text (for operators that do not glob).
    /// `None` if a variable without a default is absent from the context.
    pub(crate) fn resolve_text(&self, ctx: &RequestContext) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) | Part::Literal(t) => out.push_str(t),
                Part::Var { key, default } => out.push_str(lookup(ctx, key, default.as_deref())?),
            }
        }
        Some(out)
    }

    /// Substitutes variables, producing a wildcard pattern in which only the author's
    /// own `*`/`?` are wildcards.
    /// `None` if a variable without a default is absent from the context.
    pub(crate) fn resolve_glob(&self, ctx: &RequestContext) -> Option<Vec<Tok>> {
        let mut out = Vec::new();
        for part in &self.parts {
            let (text, wild) = match part {
                Part::Text(t) => (t.as_str(), true),
                Part::Literal(t) => (t.as_str(), false),
                Part::Var { key, default } => (lookup(ctx, key, default.as_deref())?, false),
            };
            if wild {
                push_glob(text, &mut out);
            } else {
                push_literal(text, &mut out);
            }
        }
        Some(out)
    }
}

/// A variable's value: the context's single value, else the default.
fn lookup<'a>(ctx: &'a RequestContext, key: &str, default: Option<&'a str>) -> Option<&'a str> {
    ctx.single(key).or(default)
}

/// Parses what follows `${`, returning the part and the text after the closing `}`.
fn parse_reference(inner: &str) -> Result<(Part, &str), String> {
    let end = inner
        .find(['}', ','])
        .ok_or_else(|| "a \"${\" is not closed by \"}\"".to_owned())?;
    let (key_raw, rest) = inner.split_at(end);
    let key = key_raw.trim();
    if key.is_empty() {
        return Err("\"${}\" names no variable".to_owned());
    }
    let (default, after) = if let Some(after_comma) = rest.strip_prefix(',') {
        let (default, after) = parse_default(after_comma)?;
        (Some(default), after)
    } else {
        (None, rest.get(1..).unwrap_or_default())
    };
    let part = match key {
        "*" | "?" | "$" => {
            if default.is_some() {
                return Err(format!(
                    "the escape \"${{{key}}}\" cannot have a default value"
                ));
            }
            Part::Literal(key.to_owned())
        }
        _ => Part::Var {
            key: fold_case(key),
            default: default.map(str::to_owned),
        },
    };
    Ok((part, after))
}

/// Parses ` 'default' }` after the comma of `${key, 'default'}`.
fn parse_default(text: &str) -> Result<(&str, &str), String> {
    const SHAPE: &str = "a default value must be written as ${key, 'default'}";
    let quoted = text.trim_start().strip_prefix('\'').ok_or(SHAPE)?;
    let close = quoted.find('\'').ok_or(SHAPE)?;
    let (default, after_quote) = quoted.split_at(close);
    let after = after_quote
        .get(1..)
        .unwrap_or_default()
        .trim_start()
        .strip_prefix('}')
        .ok_or(SHAPE)?;
    Ok((default, after))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::matching::glob_match;

    fn ctx() -> RequestContext {
        RequestContext::new("x:y", "*")
            .with("aws:username", "alice")
            .with("aws:PrincipalTag/team", "a*b")
            .with_values("multi", ["1", "2"])
    }

    #[test]
    fn substitutes_case_insensitive_keys() {
        let t = Template::parse("session/${AWS:UserName}-*").unwrap();
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("session/alice-*"));
        let g = t.resolve_glob(&ctx()).unwrap();
        assert!(glob_match(&g, "session/alice-0123"));
        assert!(!glob_match(&g, "session/bob-0123"));
    }

    #[test]
    fn substituted_values_are_literal() {
        let t = Template::parse("${aws:PrincipalTag/team}").unwrap();
        let g = t.resolve_glob(&ctx()).unwrap();
        assert!(glob_match(&g, "a*b"));
        assert!(!glob_match(&g, "aXb"));
    }

    #[test]
    fn escapes() {
        let t = Template::parse("a${*}b${?}c${$}d*").unwrap();
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("a*b?c$d*"));
        let g = t.resolve_glob(&ctx()).unwrap();
        assert!(glob_match(&g, "a*b?c$dzzz"));
        assert!(!glob_match(&g, "aXb?c$d"));
    }

    #[test]
    fn defaults_and_missing() {
        let t = Template::parse("${aws:PrincipalTag/dept, 'company-wide'}").unwrap();
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("company-wide"));
        let t = Template::parse("${aws:username,'x'}").unwrap();
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("alice"));
        let t = Template::parse("${aws:userid}").unwrap();
        assert_eq!(t.resolve_text(&ctx()), None);
        // Multivalued keys cannot be variables.
        let t = Template::parse("${multi}").unwrap();
        assert_eq!(t.resolve_text(&ctx()), None);
    }

    #[test]
    fn malformed_references() {
        assert!(Template::parse("${aws:username").is_err());
        assert!(Template::parse("${}").is_err());
        assert!(Template::parse("${ }").is_err());
        assert!(Template::parse("${k, default}").is_err());
        assert!(Template::parse("${k, 'd'").is_err());
        assert!(Template::parse("${*, 'd'}").is_err());
        // A lone `$` or `{` is ordinary text.
        let t = Template::parse("a$b{c}").unwrap();
        assert_eq!(t.as_plain(), Some("a$b{c}"));
    }

    #[test]
    fn plain_keeps_references_literal() {
        let t = Template::plain("${aws:username}");
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("${aws:username}"));
        assert!(!t.has_references());
    }
}
