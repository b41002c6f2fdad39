//! Parameter values in a `commands` string, safe by construction.
//!
//! A command document's `properties.linux.commands` is a shell script template with
//! `{{ name }}` placeholders (AWS's spacing variants `{{name}}`, `{{ name}}` … all work). The
//! agent runs the finished string with `$SHELL -c`, so a value pasted in as it is would be shell
//! code: `; rm -rf ~` in a "file name" would run. Airlock never pastes a value:
//!
//! 1. A placeholder becomes exactly **one shell word**: the value single-quoted, each `'` in it
//!    written `'\''`. Inside single quotes the shell interprets nothing (no `$`, backtick, `\`,
//!    glob, newline or `;`), so the value is one literal argument whatever it holds. A
//!    `StringList` value becomes one such word per item.
//! 2. That is only true where the template itself is outside any quoting, so the template is
//!    checked when the document is created (and again before a session runs it): a placeholder
//!    inside `'…'` or `"…"`, after a `\` or a `$`, inside backticks, in a `#` comment, or
//!    anywhere after a here-document (`<<`) is refused — in each of those places a quoted value
//!    could end the surrounding quoting or be re-read as code.
//! 3. The one exception is a `commands` that is nothing but one `String` placeholder
//!    (`"{{ command }}"`, as in `AWS-StartInteractiveCommand`): there the parameter *is* the
//!    command, the document allows any command, and the value runs as given. Such a document
//!    restricts what runs only through the parameter's `allowedValues` / `allowedPattern`.
//! 4. A value is at most [`MAX_VALUE_BYTES`] bytes with no NUL, and a quoted word that starts
//!    with `-` is refused unless the parameter's `allowedValues` or `allowedPattern` admit it
//!    explicitly: one word is still an option to the program it is given to (`--output=…`).

use std::fmt::Write as _;

use super::{content_error, SessionError};

/// Longest value one parameter takes, in bytes (the whole-command form takes
/// [`crate::api::documents::MAX_COMMAND_BYTES`]).
pub const MAX_VALUE_BYTES: usize = 4096;

/// One piece of a parsed template: literal shell text, or a placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Shell text, copied as it is.
    Text(String),
    /// A `{{ name }}` placeholder.
    Param(String),
}

/// Splits `s` into text and `{{ name }}` placeholders (names of letters, digits and `_`).
/// Braces that do not form a placeholder stay text.
pub fn pieces(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let parsed = after.find("}}").and_then(|end| {
            let name = after[..end].trim_matches(|c| c == ' ' || c == '\t');
            (!name.is_empty()
                && name.len() <= 128
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then(|| (name.to_owned(), end + 2))
        });
        match parsed {
            Some((name, len)) => {
                text.push_str(&rest[..start]);
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Param(name));
                rest = &after[len..];
            }
            None => {
                text.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// The name of the placeholder when `commands` is exactly one placeholder (rule 3).
pub fn whole_command(commands: &str) -> Option<String> {
    match pieces(commands.trim()).as_slice() {
        [Piece::Param(name)] => Some(name.clone()),
        _ => None,
    }
}

/// Where in the shell grammar the scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Checks that every placeholder of a `commands` template stands where a single-quoted word
/// is one literal word (rule 2). Returns the names the template uses.
pub fn check_template(commands: &str) -> Result<Vec<String>, SessionError> {
    let ps = pieces(commands);
    if whole_command(commands).is_some() {
        return Ok(ps
            .into_iter()
            .filter_map(|p| match p {
                Piece::Param(n) => Some(n),
                Piece::Text(_) => None,
            })
            .collect());
    }
    let mut names = Vec::new();
    let mut quote = Quote::None;
    let mut escaped = false;
    let mut comment = false;
    let mut backtick = false;
    let mut heredoc = false;
    // The character before the current one, outside a placeholder ('\n' at the start).
    let mut prev = '\n';
    for p in ps {
        match p {
            Piece::Param(name) => {
                let refuse = |why: &str| {
                    Err(content_error(format!(
                        "The placeholder {{{{ {name} }}}} in commands is {why}: a parameter value \
                         is inserted as one single-quoted shell word, which is only safe outside \
                         any quoting. Put the placeholder outside quotes (it is quoted for you)."
                    )))
                };
                if comment {
                    return refuse("inside a # comment");
                }
                if escaped {
                    return refuse("after a backslash");
                }
                match quote {
                    Quote::Single => return refuse("inside single quotes"),
                    Quote::Double => return refuse("inside double quotes"),
                    Quote::None => {}
                }
                if backtick {
                    return refuse("inside backticks");
                }
                if heredoc {
                    return refuse("after a here-document (<<)");
                }
                if prev == '$' {
                    return refuse("right after a $");
                }
                names.push(name);
                prev = 'x';
            }
            Piece::Text(text) => {
                for c in text.chars() {
                    if comment {
                        if c == '\n' {
                            comment = false;
                        }
                        prev = c;
                        continue;
                    }
                    if escaped {
                        escaped = false;
                        prev = 'x';
                        continue;
                    }
                    match (quote, c) {
                        (Quote::Single, '\'') => quote = Quote::None,
                        (Quote::Single, _) => {}
                        (Quote::Double, '"') => quote = Quote::None,
                        (Quote::Double, '\\') => escaped = true,
                        (Quote::Double, '`') => backtick = !backtick,
                        (Quote::Double, _) => {}
                        (Quote::None, '\'') => quote = Quote::Single,
                        (Quote::None, '"') => quote = Quote::Double,
                        (Quote::None, '\\') => escaped = true,
                        (Quote::None, '`') => backtick = !backtick,
                        (Quote::None, '#') if word_boundary(prev) => comment = true,
                        (Quote::None, '<') if prev == '<' => heredoc = true,
                        (Quote::None, _) => {}
                    }
                    prev = c;
                }
            }
        }
    }
    Ok(names)
}

/// Whether a `#` after `prev` starts a comment (it begins a word).
fn word_boundary(prev: char) -> bool {
    prev.is_whitespace() || matches!(prev, ';' | '&' | '|' | '(' | ')' | '<' | '>')
}

/// `v` as one single-quoted shell word (`'` written `'\''`).
pub fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// The finished command string: the template with each placeholder replaced by its value(s),
/// each one quoted word — or, for a whole-command template, the value itself. `value` gives the
/// already validated values of a name.
pub fn render(commands: &str, value: impl Fn(&str) -> Vec<String>) -> String {
    if let Some(name) = whole_command(commands) {
        let v = value(&name);
        if let [one] = v.as_slice() {
            return one.clone();
        }
        return v.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    }
    let mut out = String::with_capacity(commands.len());
    for p in pieces(commands) {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Param(name) => {
                let words: Vec<String> = value(&name).iter().map(|w| quote(w)).collect();
                let _ = write!(out, "{}", words.join(" "));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn placeholders_in_every_spacing() {
        assert_eq!(
            pieces("a {{x}} b {{ y }}{{  z\t}} {{ no way }} {{}} {{w"),
            vec![
                Piece::Text("a ".into()),
                Piece::Param("x".into()),
                Piece::Text(" b ".into()),
                Piece::Param("y".into()),
                Piece::Param("z".into()),
                Piece::Text(" {{ no way }} {{}} {{w".into()),
            ]
        );
        assert_eq!(whole_command("  {{ command }}\n"), Some("command".into()));
        assert_eq!(whole_command("{{ a }} {{ b }}"), None);
        assert_eq!(whole_command("ls {{ a }}"), None);
    }

    #[test]
    fn placeholders_in_quoting_are_refused() {
        for bad in [
            "echo '{{x}}'",
            "echo \"{{x}}\"",
            "echo \\{{x}}",
            "echo `cat {{x}}`",
            "echo \"`cat {{x}}`\"",
            "echo hi # {{x}}",
            "cat <<EOF\n{{x}}\nEOF",
            "echo ${{x}}",
            "echo $'{{x}}'",
            "echo \"$(cat {{x}})\"",
        ] {
            let e = check_template(bad).unwrap_err();
            assert_eq!(e.code, "InvalidDocumentContent", "{bad}");
        }
        for good in [
            "echo {{x}}",
            "ls -l -- {{x}} | wc -l",
            "echo 'a' {{x}} \"b\" {{y}}",
            "a#b {{x}}",
            "echo '#' {{x}}",
            "echo hi # comment\necho {{x}}",
            "x={{x}}; echo \"$x\"",
            "echo $(cat {{x}})",
            "echo \\\\ {{x}}",
        ] {
            assert!(check_template(good).is_ok(), "{good}");
        }
        assert_eq!(
            check_template("cp {{ a }} {{b}}").unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn values_become_one_quoted_word() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        let r = render("ls -- {{ p }} {{l}}", |n| match n {
            "p" => vec!["a b; rm -rf /".into()],
            _ => vec!["x".into(), "$(y)".into()],
        });
        assert_eq!(r, "ls -- 'a b; rm -rf /' 'x' '$(y)'");
        assert_eq!(render("{{ c }}", |_| vec!["top -b".into()]), "top -b");
    }
}
