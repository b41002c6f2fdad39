//! Session documents as operators write them (`CreateDocument` content, JSON or YAML): parsed,
//! checked, and turned into the `DocumentContent` an agent runs.
//!
//! A document is checked completely when it is stored, and again, from its stored text, before
//! a session runs it: nothing reaches an agent that this module has not accepted.
//!
//! - `schemaVersion` `1.0`; `sessionType` `Standard_Stream`, `InteractiveCommands`,
//!   `NonInteractiveCommands` or `Port`; `inputs` (the preferences fields, [`inputs`]);
//!   `parameters` ([`params`]); `properties` per session type.
//! - Command documents: `properties.linux.commands` is a template whose `{{ name }}`
//!   placeholders become **one single-quoted shell word each** — a parameter value can never run
//!   more than the document allows — except when the whole `commands` is one placeholder, where
//!   the parameter is the command. The rules, and why they are safe, are in [`shell`].
//! - Port documents: placeholders in `portNumber`, `localPortNumber` and `host` are replaced by
//!   the value as it is, and the result is checked as a port or host exactly as for the AWS
//!   port documents.
//! - Standard_Stream documents are shells; their parameters are checked but not used.
//! - A document's `inputs` are checked (as preferences) but a session's inputs are always the
//!   preferences in force (`SSM-SessionManagerRunShell`): a document a user may choose cannot
//!   loosen the operator's limits.
//!
//! Parsing is bounded: content is at most [`MAX_CONTENT_BYTES`] (AWS's 64 KB), nesting at most
//! [`MAX_DEPTH`], and YAML aliases are expanded by a parser that refuses a document whose
//! expansion explodes (a "billion laughs").

pub mod inputs;
pub mod params;
pub mod shell;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::preferences::Preferences;
pub use params::{ParamSpec, ParamType};

/// The errors of this module are API errors: they reach the caller as they are.
pub type SessionError = crate::api::ApiError;

/// AWS's size limit of a document's content.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Deepest nesting of maps and lists taken.
pub const MAX_DEPTH: usize = 16;

/// `InvalidDocumentContent` with `message`.
pub fn content_error(message: impl Into<String>) -> SessionError {
    SessionError::client("InvalidDocumentContent", message)
}

/// How a document's text is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// `JSON`, `YAML` (AWS's `DocumentFormat`); `TEXT` and others are refused.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "JSON" => Some(Format::Json),
            "YAML" => Some(Format::Yaml),
            _ => None,
        }
    }

    /// The `DocumentFormat` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

/// `Standard_Stream`, `InteractiveCommands`, `NonInteractiveCommands` or `Port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// A shell.
    StandardStream,
    /// One command in a PTY.
    InteractiveCommands,
    /// One command on pipes, stdout and stderr apart.
    NonInteractiveCommands,
    /// Port forwarding or a single stream to a port.
    Port,
}

impl SessionType {
    /// The `sessionType` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::StandardStream => "Standard_Stream",
            SessionType::InteractiveCommands => "InteractiveCommands",
            SessionType::NonInteractiveCommands => "NonInteractiveCommands",
            SessionType::Port => "Port",
        }
    }
}

/// A checked Session document.
#[derive(Clone, Debug)]
pub struct SessionDocument {
    /// `schemaVersion`.
    pub schema_version: String,
    /// `description`.
    pub description: String,
    /// `sessionType`.
    pub session_type: SessionType,
    /// `inputs` read as preferences (for `SSM-SessionManagerRunShell`, the ones in force).
    pub preferences: Preferences,
    /// `parameters`.
    pub parameters: BTreeMap<String, ParamSpec>,
    /// `properties`, as written.
    pub properties: Value,
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses document text (size and depth bounded; YAML alias bombs refused by the parser).
pub fn parse_text(text: &str, format: Format) -> Result<Value, SessionError> {
    if text.len() > MAX_CONTENT_BYTES {
        return Err(SessionError::client(
            "MaxDocumentSizeExceeded",
            format!(
                "The content is {} bytes; the size limit of a document is {MAX_CONTENT_BYTES} bytes.",
                text.len()
            ),
        ));
    }
    let v: Value = match format {
        Format::Json => serde_json::from_str(text)
            .map_err(|e| content_error(format!("The content is not valid JSON: {e}")))?,
        Format::Yaml => serde_norway::from_str(text)
            .map_err(|e| content_error(format!("The content is not valid YAML: {e}")))?,
    };
    if depth(&v) > MAX_DEPTH {
        return Err(content_error(format!(
            "The content nests deeper than {MAX_DEPTH} levels."
        )));
    }
    // What an alias expansion produced must itself fit the limit.
    if v.to_string().len() > 4 * MAX_CONTENT_BYTES {
        return Err(content_error("The content expands past the size limit."));
    }
    Ok(v)
}

/// `v` written as `format` (GetDocument's `DocumentFormat` conversion).
pub fn to_text(v: &Value, format: Format) -> Result<String, SessionError> {
    match format {
        Format::Json => serde_json::to_string_pretty(v).map_err(SessionError::internal),
        Format::Yaml => serde_norway::to_string(v).map_err(SessionError::internal),
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, SessionError> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(content_error(format!("{key} must be a string."))),
    }
}

/// The placeholders a string uses.
fn used(s: &str) -> Vec<String> {
    shell::pieces(s)
        .into_iter()
        .filter_map(|p| match p {
            shell::Piece::Param(n) => Some(n),
            shell::Piece::Text(_) => None,
        })
        .collect()
}

/// Checks a parsed document completely.
pub fn validate(v: &Value) -> Result<SessionDocument, SessionError> {
    let m = v
        .as_object()
        .ok_or_else(|| content_error("A Session document is a map (JSON object)."))?;
    const KEYS: &[&str] = &[
        "schemaVersion",
        "description",
        "sessionType",
        "inputs",
        "parameters",
        "properties",
    ];
    if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(content_error(format!(
            "A Session document has no field {shown}; its fields are {}.",
            KEYS.join(", ")
        )));
    }
    let schema_version = str_field(m, "schemaVersion")?.unwrap_or("");
    if schema_version != "1.0" {
        return Err(SessionError::client(
            "InvalidDocumentSchemaVersion",
            format!(
                "Session documents take schemaVersion 1.0, not '{}'.",
                schema_version.chars().take(32).collect::<String>()
            ),
        ));
    }
    let session_type = match str_field(m, "sessionType")? {
        Some("Standard_Stream") => SessionType::StandardStream,
        Some("InteractiveCommands") => SessionType::InteractiveCommands,
        Some("NonInteractiveCommands") => SessionType::NonInteractiveCommands,
        Some("Port") => SessionType::Port,
        _ => {
            return Err(content_error(
                "sessionType must be Standard_Stream, InteractiveCommands, NonInteractiveCommands or Port.",
            ))
        }
    };
    let description = str_field(m, "description")?.unwrap_or("").to_owned();
    let preferences = inputs::preferences(m.get("inputs"))?;
    let parameters = params::parse(m.get("parameters"))?;
    let properties = m.get("properties").cloned().unwrap_or(Value::Null);
    let mut names: Vec<String> = Vec::new();
    match session_type {
        SessionType::StandardStream => {}
        SessionType::InteractiveCommands | SessionType::NonInteractiveCommands => {
            let linux = properties
                .get("linux")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    content_error("A command document needs properties.linux.commands.")
                })?;
            for k in linux.keys() {
                if !["commands", "runAsElevated", "separateOutputStream"].contains(&k.as_str()) {
                    return Err(content_error(format!(
                        "properties.linux takes commands, runAsElevated and separateOutputStream, not {}.",
                        k.chars().take(64).collect::<String>()
                    )));
                }
            }
            let commands = match linux.get("commands") {
                Some(Value::String(c)) if !c.trim().is_empty() => c,
                _ => {
                    return Err(content_error(
                        "properties.linux.commands must be a non-empty string.",
                    ))
                }
            };
            if commands.contains('\0') {
                return Err(content_error("properties.linux.commands contains NUL."));
            }
            names.extend(shell::check_template(commands)?);
            match linux.get("runAsElevated") {
                None | Some(Value::Bool(false)) => {}
                Some(Value::String(s)) if s == "false" => {}
                _ => {
                    return Err(content_error(
                        "runAsElevated must be false: Airlock never runs a session as root.",
                    ))
                }
            }
            match linux.get("separateOutputStream") {
                None | Some(Value::Bool(_)) => {}
                Some(Value::String(s)) if s == "true" || s == "false" => {}
                Some(Value::String(s)) => {
                    let u = used(s);
                    if u.len() != 1 || shell::whole_command(s).is_none() {
                        return Err(content_error(
                            "separateOutputStream must be true, false or one {{ parameter }}.",
                        ));
                    }
                    names.extend(u);
                }
                Some(_) => {
                    return Err(content_error(
                        "separateOutputStream must be true, false or one {{ parameter }}.",
                    ))
                }
            }
        }
        SessionType::Port => {
            let props = properties.as_object().ok_or_else(|| {
                content_error("A Port document needs properties with portNumber.")
            })?;
            for (k, v) in props {
                let Value::String(s) = v else {
                    return Err(content_error(format!("properties.{k} must be a string.")));
                };
                match k.as_str() {
                    "portNumber" | "localPortNumber" | "host" => names.extend(used(s)),
                    "type" if s == "LocalPortForwarding" => {}
                    _ => {
                        return Err(content_error(format!(
                            "A Port document's properties are portNumber, localPortNumber, host and type (LocalPortForwarding), not {k}={}.",
                            s.chars().take(64).collect::<String>()
                        )))
                    }
                }
            }
            if !props.contains_key("portNumber") {
                return Err(content_error(
                    "A Port document needs properties.portNumber.",
                ));
            }
            if props.contains_key("host") && !props.contains_key("type") {
                return Err(content_error(
                    "A Port document with a host forwards local connections: give it type LocalPortForwarding.",
                ));
            }
        }
    }
    for n in &names {
        match parameters.get(n) {
            None => {
                return Err(content_error(format!(
                    "The placeholder {{{{ {n} }}}} names no declared parameter."
                )))
            }
            Some(p) if p.kind == ParamType::StringList && session_type == SessionType::Port => {
                return Err(content_error(format!(
                    "The parameter {n} is a StringList: a Port property takes one value."
                )))
            }
            Some(_) => {}
        }
    }
    Ok(SessionDocument {
        schema_version: schema_version.to_owned(),
        description,
        session_type,
        preferences,
        parameters,
        properties,
    })
}

/// The `DocumentContent` a session of document `name` runs (without `inputs`, which the
/// caller fills with the preferences in force): parameters checked and interpolated.
pub fn render(
    name: &str,
    doc: &SessionDocument,
    given: &BTreeMap<String, Vec<String>>,
) -> Result<Value, SessionError> {
    let values = params::resolve(name, &doc.parameters, given)?;
    let get = |n: &str| values.get(n).cloned().unwrap_or_default();
    let invalid = |m: String| SessionError::client("InvalidParameters", m);
    let properties = match doc.session_type {
        SessionType::StandardStream => Value::Null,
        SessionType::InteractiveCommands | SessionType::NonInteractiveCommands => {
            let linux = doc.properties.get("linux").cloned().unwrap_or(Value::Null);
            let template = linux.get("commands").and_then(Value::as_str).unwrap_or("");
            // Check again: what is stored was checked, but what runs is checked here too.
            shell::check_template(template)?;
            let whole = shell::whole_command(template);
            for (n, vs) in &values {
                if whole.as_deref() == Some(n.as_str()) {
                    continue;
                }
                let spec = doc.parameters.get(n);
                if let Some(v) = vs.iter().find(|v| v.starts_with('-')) {
                    if !spec.is_some_and(|s| s.explicitly_allows(v)) {
                        return Err(invalid(format!(
                            "The value '{}' of parameter {n} starts with '-': it would be an option to the command. \
                             A document admits such values only through allowedValues or allowedPattern.",
                            v.chars().take(64).collect::<String>()
                        )));
                    }
                }
            }
            let commands = shell::render(template, get);
            if commands.len() > crate::api::documents::MAX_COMMAND_BYTES {
                return Err(invalid(format!(
                    "The command is longer than {} bytes with its parameters.",
                    crate::api::documents::MAX_COMMAND_BYTES
                )));
            }
            let mut out = json!({ "commands": commands, "runAsElevated": false });
            if doc.session_type == SessionType::NonInteractiveCommands {
                let separate = match linux.get("separateOutputStream") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(Value::String(s)) => {
                        let s = match shell::whole_command(s) {
                            Some(p) => get(&p).first().cloned().unwrap_or_default(),
                            None => s.clone(),
                        };
                        match s.as_str() {
                            "true" => true,
                            "false" => false,
                            _ => {
                                return Err(invalid(
                                    "separateOutputStream must be true or false.".into(),
                                ))
                            }
                        }
                    }
                    Some(_) => false,
                };
                out["separateOutputStream"] = json!(separate);
            }
            json!({ "linux": out })
        }
        SessionType::Port => {
            let mut props = Map::new();
            if let Some(m) = doc.properties.as_object() {
                for (k, v) in m {
                    let s = v.as_str().unwrap_or("");
                    let filled: String = shell::pieces(s)
                        .into_iter()
                        .map(|p| match p {
                            shell::Piece::Text(t) => t,
                            shell::Piece::Param(n) => get(&n).first().cloned().unwrap_or_default(),
                        })
                        .collect();
                    props.insert(k.clone(), Value::String(filled.trim().to_owned()));
                }
            }
            crate::api::documents::check_port_properties(&props)?;
            Value::Object(props)
        }
    };
    Ok(json!({
        "schemaVersion": "1.0",
        "description": doc.description,
        "sessionType": doc.session_type.as_str(),
        "inputs": {},
        "properties": properties,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Values that would run something if pasted into a shell command: each must come out of
    /// the shell as exactly itself, one argument, with nothing else run.
    const HOSTILE: &[&str] = &[
        "; touch pwned",
        "&& touch pwned",
        "|| touch pwned",
        "| touch pwned",
        "$(touch pwned)",
        "`touch pwned`",
        "a\ntouch pwned",
        "a\r\ntouch pwned\n",
        "'; touch pwned; '",
        "'\"'\"'; touch pwned",
        "\"; touch pwned; \"",
        "\\'; touch pwned #",
        "\\",
        "'",
        "''",
        "$HOME ${PATH} $0 $$ $?",
        "* ? [a] {a,b} ~",
        "> pwned",
        "< /etc/passwd",
        "$'\\x27'; touch pwned",
        "x #; touch pwned",
        "\t; touch pwned\t",
        "\u{1b}[2J; touch pwned",
        "日本語; touch pwned",
    ];

    fn session_doc(v: Value) -> SessionDocument {
        validate(&v).unwrap_or_else(|e| panic!("{e}: {v}"))
    }

    fn one(name: &str, value: &str) -> BTreeMap<String, Vec<String>> {
        [(name.to_owned(), vec![value.to_owned()])].into()
    }

    fn shells() -> Vec<&'static str> {
        [
            "/bin/sh",
            "/bin/bash",
            "/usr/bin/bash",
            "/bin/dash",
            "/usr/bin/zsh",
        ]
        .into_iter()
        .filter(|s| std::path::Path::new(s).exists())
        .collect()
    }

    /// Runs `commands` with `shell -c` in a fresh directory; returns stdout and whether a file
    /// other than `out` appeared there.
    fn run(shell: &str, commands: &str) -> (Vec<u8>, Vec<String>) {
        let dir = std::env::temp_dir().join(format!(
            "airlock-doc-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(commands)
            .current_dir(&dir)
            .env("HOME", &dir)
            .output()
            .unwrap();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f != "out")
            .collect();
        files.sort();
        let _ = std::fs::remove_dir_all(&dir);
        (out.stdout, files)
    }

    fn command_doc(session_type: &str, template: &str) -> SessionDocument {
        session_doc(json!({
            "schemaVersion": "1.0",
            "sessionType": session_type,
            "parameters": {
                "v": {"type": "String"},
                "l": {"type": "StringList", "default": []}
            },
            "properties": {"linux": {"commands": template, "runAsElevated": false}}
        }))
    }

    fn commands_of(content: &Value) -> String {
        content["properties"]["linux"]["commands"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn hostile_values_are_one_inert_word_in_every_shell_and_command_type() {
        let shells = shells();
        assert!(!shells.is_empty());
        for session_type in ["InteractiveCommands", "NonInteractiveCommands"] {
            // printf writes exactly its one argument: the output proves the value arrived as
            // one word, unchanged; the directory listing proves nothing else ran.
            let doc = command_doc(session_type, "printf '%s|' {{ v }} {{l}}");
            for value in HOSTILE {
                let mut given = one("v", value);
                given.insert("l".into(), vec![(*value).to_owned(), "x y".into()]);
                let content = render("Custom", &doc, &given).unwrap();
                assert_eq!(content["sessionType"], session_type);
                let commands = commands_of(&content);
                for sh in &shells {
                    let (stdout, files) = run(sh, &commands);
                    assert!(
                        files.is_empty(),
                        "{sh} ran more than the document: {files:?} for {value:?} ({commands})"
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&stdout),
                        format!("{value}|{value}|x y|"),
                        "{sh}: {commands}"
                    );
                }
            }
        }
    }

    #[test]
    fn nul_long_and_option_values_are_refused() {
        let doc = command_doc("NonInteractiveCommands", "ls -l -- {{v}}");
        for bad in ["a\0b", "-rf", "--output=/tmp/x", "-"] {
            let e = render("Custom", &doc, &one("v", bad)).unwrap_err();
            assert_eq!(e.code, "InvalidParameters", "{bad:?}");
        }
        let long = "a".repeat(shell::MAX_VALUE_BYTES + 1);
        assert_eq!(
            render("Custom", &doc, &one("v", &long)).unwrap_err().code,
            "InvalidParameters"
        );
        let ok = "a".repeat(shell::MAX_VALUE_BYTES);
        let c = render("Custom", &doc, &one("v", &ok)).unwrap();
        assert_eq!(commands_of(&c), format!("ls -l -- '{ok}'"));
        // An option is taken when the document admits it explicitly.
        let doc = session_doc(json!({
            "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
            "parameters": {"v": {"type": "String", "allowedValues": ["-l", "-a"]}},
            "properties": {"linux": {"commands": "ls {{v}}"}}
        }));
        assert_eq!(
            commands_of(&render("C", &doc, &one("v", "-l")).unwrap()),
            "ls '-l'"
        );
        assert_eq!(
            render("C", &doc, &one("v", "-la; touch pwned"))
                .unwrap_err()
                .code,
            "InvalidParameters"
        );
    }

    #[test]
    fn a_whole_command_parameter_runs_only_what_its_constraints_admit() {
        let doc = session_doc(json!({
            "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
            "parameters": {"cmd": {"type": "String", "allowedValues": ["top", "uptime"]}},
            "properties": {"linux": {"commands": "{{ cmd }}"}}
        }));
        assert_eq!(
            commands_of(&render("C", &doc, &one("cmd", "uptime")).unwrap()),
            "uptime"
        );
        for bad in ["uptime; touch pwned", "top\n", "rm"] {
            assert_eq!(
                render("C", &doc, &one("cmd", bad)).unwrap_err().code,
                "InvalidParameters"
            );
        }
        let doc = session_doc(json!({
            "schemaVersion": "1.0", "sessionType": "NonInteractiveCommands",
            "parameters": {"unit": {"type": "String", "allowedPattern": "[a-z0-9-]+"}},
            "properties": {"linux": {"commands": "systemctl status {{unit}}", "separateOutputStream": true}}
        }));
        let c = render("C", &doc, &one("unit", "sshd")).unwrap();
        assert_eq!(c["properties"]["linux"]["separateOutputStream"], true);
        // The pattern is anchored: a matching prefix is not enough.
        for bad in ["sshd; touch pwned", "sshd\nid", "SSHD", ""] {
            assert_eq!(
                render("C", &doc, &one("unit", bad)).unwrap_err().code,
                "InvalidParameters",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn port_documents_take_only_ports_and_hosts() {
        let doc = session_doc(json!({
            "schemaVersion": "1.0", "sessionType": "Port",
            "parameters": {
                "host": {"type": "String"},
                "port": {"type": "String", "default": "5432"}
            },
            "properties": {"host": "{{host}}", "portNumber": "{{ port }}", "type": "LocalPortForwarding", "localPortNumber": "0"}
        }));
        let c = render("Db", &doc, &one("host", "db.internal")).unwrap();
        assert_eq!(
            c["properties"],
            json!({"host": "db.internal", "portNumber": "5432", "type": "LocalPortForwarding", "localPortNumber": "0"})
        );
        for value in HOSTILE {
            for key in ["host", "port"] {
                let mut given = one("host", "db.internal");
                given.insert(key.into(), vec![(*value).to_owned()]);
                let e = render("Db", &doc, &given).unwrap_err();
                assert_eq!(e.code, "InvalidParameters", "{key}={value:?}");
            }
        }
    }

    #[test]
    fn standard_stream_documents_are_shells_and_ignore_their_parameters() {
        let doc = session_doc(json!({
            "schemaVersion": "1.0", "sessionType": "Standard_Stream",
            "parameters": {"v": {"type": "String", "default": "x"}},
            "properties": {"linux": {"commands": "{{v}}"}}
        }));
        for value in HOSTILE {
            let c = render("S", &doc, &one("v", value)).unwrap();
            assert_eq!(c["properties"], Value::Null);
            assert!(!c.to_string().contains("pwned"), "{c}");
        }
        assert_eq!(
            render("S", &doc, &one("w", "x")).unwrap_err().code,
            "InvalidParameters"
        );
    }

    #[test]
    fn unsafe_templates_and_bad_documents_are_refused_at_validation() {
        let base = |commands: &str| {
            json!({
                "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
                "parameters": {"v": {"type": "String"}},
                "properties": {"linux": {"commands": commands}}
            })
        };
        for bad in [
            "echo '{{v}}'",
            "echo \"{{v}}\"",
            "echo `{{v}}`",
            "cat <<E\n{{v}}\nE",
            "echo {{w}}",
        ] {
            assert_eq!(
                validate(&base(bad)).unwrap_err().code,
                "InvalidDocumentContent",
                "{bad}"
            );
        }
        let mut v = base("echo {{v}}");
        v["schemaVersion"] = json!("2.2");
        assert_eq!(
            validate(&v).unwrap_err().code,
            "InvalidDocumentSchemaVersion"
        );
        for (path, value) in [
            ("/sessionType", json!("Command")),
            ("/properties/linux/runAsElevated", json!(true)),
            ("/parameters/v/type", json!("Integer")),
            ("/parameters/v/allowedPattern", json!("(")),
            ("/parameters/v/default", json!("-x")),
        ] {
            let mut v = base("echo {{v}}");
            if path == "/parameters/v/default" {
                v["parameters"]["v"]["allowedValues"] = json!(["a"]);
            }
            let (parent, key) = path.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut v
            } else {
                v.pointer_mut(parent).unwrap()
            };
            target[key] = value;
            assert_eq!(
                validate(&v).unwrap_err().code,
                "InvalidDocumentContent",
                "{path}"
            );
        }
        let mut v = base("echo {{v}}");
        v["extra"] = json!(1);
        assert_eq!(validate(&v).unwrap_err().code, "InvalidDocumentContent");
    }

    #[test]
    fn the_builtin_documents_pass_the_same_checks() {
        for (name, text) in crate::api::documents::BUILTIN {
            let v = parse_text(text, Format::Json).unwrap();
            let d = validate(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!d.parameters.is_empty(), "{name}");
        }
    }

    #[test]
    fn yaml_bombs_deep_nesting_and_oversize_content_are_refused() {
        // A "billion laughs": nine levels of nine aliases each.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!(
                "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let e = parse_text(&bomb, Format::Yaml).unwrap_err();
        assert_eq!(e.code, "InvalidDocumentContent", "{e}");
        // Refused by counting, not after building a billion strings (a generous bound).
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            parse_text(&deep, Format::Json).unwrap_err().code,
            "InvalidDocumentContent"
        );
        let deep_yaml = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            parse_text(&deep_yaml, Format::Yaml).unwrap_err().code,
            "InvalidDocumentContent"
        );
        // Nesting as deep as the size limit allows neither overflows the stack nor is taken.
        for format in [Format::Json, Format::Yaml] {
            let n = MAX_CONTENT_BYTES / 2 - 1;
            let deepest = format!("{}{}", "[".repeat(n), "]".repeat(n));
            assert_eq!(
                parse_text(&deepest, format).unwrap_err().code,
                "InvalidDocumentContent"
            );
            let maps = "a: ".repeat(MAX_CONTENT_BYTES / 4);
            assert!(parse_text(&maps, format).is_err());
        }
        let big = format!("{{\"description\": \"{}\"}}", "x".repeat(MAX_CONTENT_BYTES));
        assert_eq!(
            parse_text(&big, Format::Json).unwrap_err().code,
            "MaxDocumentSizeExceeded"
        );
        // Valid YAML reads as the same document as its JSON.
        let y = "schemaVersion: '1.0'\nsessionType: Port\nparameters:\n  p:\n    type: String\n    default: '22'\nproperties:\n  portNumber: '{{ p }}'\n";
        let d = validate(&parse_text(y, Format::Yaml).unwrap()).unwrap();
        assert_eq!(d.session_type, SessionType::Port);
        let back = to_text(&parse_text(y, Format::Yaml).unwrap(), Format::Json).unwrap();
        assert!(back.contains("\"portNumber\": \"{{ p }}\""), "{back}");
    }
}
