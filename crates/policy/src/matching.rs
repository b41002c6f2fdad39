//! Wildcard matching for actions, resources and the `StringLike`/`ArnLike` operators.
//!
//! A pattern is a list of [`Tok`]s rather than a string, so that text which must be
//! literal (the value of a policy variable, the escapes `${*}` and `${?}`) can sit next
//! to real wildcards without being able to widen the pattern (§1.4 of the design).
//!
//! Case: actions and `…IgnoreCase` comparisons use [`fold_case`]: each character is
//! replaced by its Unicode lowercase mapping (`char::to_lowercase`), which for ASCII is
//! plain ASCII lowercasing. Resources, `StringLike` and `ArnLike` are case-sensitive.

/// One element of a compiled wildcard pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// This exact character.
    Lit(char),
    /// `*`: any run of characters, including none.
    Star,
    /// `?`: exactly one character.
    One,
}

/// Folds `text` for case-insensitive comparison (see the module docs for the rule).
pub(crate) fn fold_case(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Appends `pattern` to `out`, treating `*` and `?` as wildcards.
pub(crate) fn push_glob(pattern: &str, out: &mut Vec<Tok>) {
    out.extend(pattern.chars().map(|c| match c {
        '*' => Tok::Star,
        '?' => Tok::One,
        c => Tok::Lit(c),
    }));
}

/// Appends `text` to `out` as literal characters (no wildcards).
pub(crate) fn push_literal(text: &str, out: &mut Vec<Tok>) {
    out.extend(text.chars().map(Tok::Lit));
}

/// Compiles `pattern` with `*` and `?` as wildcards.
pub(crate) fn glob(pattern: &str) -> Vec<Tok> {
    let mut out = Vec::with_capacity(pattern.len());
    push_glob(pattern, &mut out);
    out
}

/// Whether `pattern` matches the whole of `text`.
///
/// The classic linear-space algorithm: on a mismatch, retry from the most recent `*`
/// with it swallowing one more character. Worst case O(pattern × text).
pub(crate) fn glob_match(pattern: &[Tok], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    glob_match_chars(pattern, &text)
}

fn glob_match_chars(pattern: &[Tok], text: &[char]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // (index of the last `*` seen, text position it is currently matched up to)
    let mut backtrack: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        match pattern.get(p) {
            Some(Tok::Star) => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(l)) if *l == c => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, swallowed)) => {
                    p = star + 1;
                    t = swallowed + 1;
                    backtrack = Some((star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|t| *t == Tok::Star))
}

/// Whether an ARN pattern matches `value`, component by component.
///
/// Both sides are split on their first five colons (the sixth component keeps any
/// further colons); a wildcard never crosses a component boundary. They must have the
/// same number of components. A pattern that is exactly `*` matches anything, as the
/// bare `"*"` of a `Resource` element does.
pub(crate) fn arn_match(pattern: &[Tok], value: &str) -> bool {
    if pattern == [Tok::Star] {
        return true;
    }
    let pattern_parts = split_tokens(pattern);
    let value_parts: Vec<&str> = value.splitn(6, ':').collect();
    pattern_parts.len() == value_parts.len()
        && pattern_parts
            .iter()
            .zip(&value_parts)
            .all(|(p, v)| glob_match(p, v))
}

/// Splits a token pattern on its first five literal colons.
fn split_tokens(pattern: &[Tok]) -> Vec<&[Tok]> {
    let mut parts = Vec::with_capacity(6);
    let mut rest = pattern;
    while parts.len() < 5 {
        match rest.iter().position(|t| *t == Tok::Lit(':')) {
            Some(i) => {
                let (head, tail) = rest.split_at(i);
                parts.push(head);
                rest = tail.get(1..).unwrap_or_default();
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        glob_match(&glob(p), t)
    }

    #[test]
    fn glob_basics() {
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("*", ""));
        assert!(m("*", "anything/at:all"));
        assert!(m("ssm:*Session", "ssm:StartSession"));
        assert!(!m("ssm:*Session", "ssm:StartSessions"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("a?c", "abbc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(m("*a*a*a*", "aaa"));
        assert!(!m("*a*a*a*", "aa"));
        assert!(m("i-12345678?0abcdef0", "i-1234567890abcdef0"));
        assert!(m("??", "éü"), "? is one character, not one byte");
    }

    #[test]
    fn literal_tokens_do_not_wildcard() {
        let mut p = Vec::new();
        push_literal("a*", &mut p);
        assert!(glob_match(&p, "a*"));
        assert!(!glob_match(&p, "ab"));
    }

    #[test]
    fn arn_components() {
        let am = |p: &str, v: &str| arn_match(&glob(p), v);
        assert!(am("*", "arn:aws:ssm:us-east-2:1:session/x"));
        assert!(am("*", "*"));
        assert!(!am("arn:aws:ssm:*:*:*", "*"));
        assert!(am(
            "arn:aws:ssm:*:*:document/AWS-StartSSHSession",
            "arn:aws:ssm:us-east-2::document/AWS-StartSSHSession"
        ));
        assert!(!am(
            "arn:aws:ssm:us-east-2:123456789012:document/X",
            "arn:aws:ssm:us-east-2::document/X"
        ));
        // The IAM user guide's example: StringLike matches, ArnLike does not.
        let p = "arn:aws:someservice:*:111122223333:finance/*";
        let v = "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt";
        assert!(m(p, v));
        assert!(!am(p, v));
        // `*` in the resource component matches `/` and `:`.
        assert!(am(
            "arn:aws:s3:::bucket/1/*/test/*",
            "arn:aws:s3:::bucket/1/2/3/test/4/object.jpg"
        ));
        assert!(am(
            "arn:aws:logs:*:*:log-group:*",
            "arn:aws:logs:r:1:log-group:a:b"
        ));
    }

    #[test]
    fn fold_case_is_lowercase() {
        assert_eq!(fold_case("SSM:StartSession"), "ssm:startsession");
        assert_eq!(fold_case("ÄÖ"), "äö");
    }
}
