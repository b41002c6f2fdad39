//! The session documents StartSession runs, and the `DocumentContent` the agent receives for
//! each (protocol.md §9): the shell document, and the three AWS port documents with their
//! parameters validated and substituted into `properties` as AWS does (§5, §8.2).
//!
//! | document | parameters (default) | properties |
//! |---|---|---|
//! | `SSM-SessionManagerRunShell` | — | `null` (a shell) |
//! | `AWS-StartPortForwardingSession` | `portNumber` (80), `localPortNumber` (0) | `portNumber`, `type: LocalPortForwarding`, `localPortNumber` |
//! | `AWS-StartPortForwardingSessionToRemoteHost` | `host` (required), `portNumber` (80), `localPortNumber` (0) | the same plus `host` |
//! | `AWS-StartSSHSession` | `portNumber` (22) | `portNumber` only: a standard stream |
//!
//! Validation happens here, before anything reaches an agent, so a bad port or host is a
//! clear API error rather than a session that fails on the host.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

use super::ApiError;

/// The default shell document, used when StartSession names none.
pub const SHELL: &str = "SSM-SessionManagerRunShell";
/// Forwards local connections to a port on the target.
pub const PORT_FORWARDING: &str = "AWS-StartPortForwardingSession";
/// Forwards local connections to a host and port reachable from the target.
pub const PORT_FORWARDING_TO_REMOTE_HOST: &str = "AWS-StartPortForwardingSessionToRemoteHost";
/// One stream to the target's SSH port (`ssh -o ProxyCommand`).
pub const SSH: &str = "AWS-StartSSHSession";
/// Runs one command in a PTY (parameter `command`).
pub const INTERACTIVE_COMMAND: &str = "AWS-StartInteractiveCommand";
/// Runs one command without a PTY; with `separateOutputStream` stdout and stderr stay apart
/// and the exit status follows as `ExitCode`.
pub const NON_INTERACTIVE_COMMAND: &str = "AWS-StartNonInteractiveCommand";

/// Longest command a command document takes, in bytes.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// One parameter of a port document.
struct Param {
    name: &'static str,
    default: Option<&'static str>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1–65535.
    Port,
    /// 0–65535 (0: any free port, chosen by the client).
    LocalPort,
    /// A DNS name or an IP address.
    Host,
}

fn invalid_parameters(message: String) -> ApiError {
    ApiError::client("InvalidParameters", message)
}

/// The `DocumentContent` for document `name` with `parameters` substituted, or the error
/// StartSession returns (`InvalidDocument`, `InvalidParameters`).
pub fn session_document(
    name: &str,
    parameters: &BTreeMap<String, Vec<String>>,
) -> Result<Value, ApiError> {
    const PORT: Param = Param {
        name: "portNumber",
        default: Some("80"),
        kind: Kind::Port,
    };
    const LOCAL_PORT: Param = Param {
        name: "localPortNumber",
        default: Some("0"),
        kind: Kind::LocalPort,
    };
    const HOST: Param = Param {
        name: "host",
        default: None,
        kind: Kind::Host,
    };
    const SSH_PORT: Param = Param {
        name: "portNumber",
        default: Some("22"),
        kind: Kind::Port,
    };
    let (description, params, forwarding): (&str, &[Param], bool) = match name {
        SHELL => {
            return Ok(json!({
                "schemaVersion": "1.0",
                "description": "Shell session",
                "sessionType": "Standard_Stream",
                "inputs": {"runAsEnabled": false, "runAsDefaultUser": "", "shellProfile": {"linux": "", "windows": ""}},
                "properties": null,
            }))
        }
        PORT_FORWARDING => ("Port forwarding session", &[PORT, LOCAL_PORT], true),
        PORT_FORWARDING_TO_REMOTE_HOST => (
            "Port forwarding session to a remote host",
            &[HOST, PORT, LOCAL_PORT],
            true,
        ),
        SSH => ("SSH session", &[SSH_PORT], false),
        INTERACTIVE_COMMAND | NON_INTERACTIVE_COMMAND => {
            return command_document(name, parameters);
        }
        _ => {
            return Err(ApiError::client(
                "InvalidDocument",
                format!(
                    "Document {name} does not exist or is not a Session document this server runs."
                ),
            ))
        }
    };
    for given in parameters.keys() {
        if !params.iter().any(|p| p.name == given) {
            let names: Vec<&str> = params.iter().map(|p| p.name).collect();
            return Err(invalid_parameters(format!(
                "{given} is not a parameter of {name}; it takes {}.",
                names.join(", ")
            )));
        }
    }
    let mut properties = Map::new();
    for p in params {
        let value = match parameters.get(p.name).map(Vec::as_slice) {
            None | Some([]) => p.default.map(str::to_owned).ok_or_else(|| {
                invalid_parameters(format!("{name} requires the parameter {}.", p.name))
            })?,
            Some([one]) => one.trim().to_owned(),
            Some(_) => {
                return Err(invalid_parameters(format!(
                    "The parameter {} takes exactly one value.",
                    p.name
                )))
            }
        };
        check(p, &value)?;
        properties.insert(p.name.to_owned(), Value::String(value));
    }
    if forwarding {
        properties.insert("type".into(), json!("LocalPortForwarding"));
    }
    Ok(json!({
        "schemaVersion": "1.0",
        "description": description,
        "sessionType": "Port",
        "inputs": {},
        "properties": properties,
    }))
}

/// The two AWS command documents: `command` runs as given (the parameter *is* the command,
/// so the document allows any), inside the run-as user's login shell.
fn command_document(
    name: &str,
    parameters: &BTreeMap<String, Vec<String>>,
) -> Result<Value, ApiError> {
    let interactive = name == INTERACTIVE_COMMAND;
    let allowed: &[&str] = if interactive {
        &["command"]
    } else {
        &["command", "separateOutputStream"]
    };
    for given in parameters.keys() {
        if !allowed.contains(&given.as_str()) {
            return Err(invalid_parameters(format!(
                "{given} is not a parameter of {name}; it takes {}.",
                allowed.join(", ")
            )));
        }
    }
    let one = |key: &str| -> Result<Option<&str>, ApiError> {
        match parameters.get(key).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([v]) => Ok(Some(v.as_str())),
            Some(_) => Err(invalid_parameters(format!(
                "The parameter {key} takes exactly one value."
            ))),
        }
    };
    let command = one("command")?
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| invalid_parameters(format!("{name} requires the parameter command.")))?;
    if command.len() > MAX_COMMAND_BYTES || command.contains('\0') {
        return Err(invalid_parameters(format!(
            "The parameter command must be at most {MAX_COMMAND_BYTES} bytes with no NUL."
        )));
    }
    let mut linux = json!({ "commands": command, "runAsElevated": false });
    if !interactive {
        let separate = match one("separateOutputStream")?.unwrap_or("false") {
            "true" => true,
            "false" => false,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(invalid_parameters(format!(
                    "The parameter separateOutputStream must be true or false, not '{shown}'."
                )));
            }
        };
        linux["separateOutputStream"] = json!(separate);
    }
    Ok(json!({
        "schemaVersion": "1.0",
        "description": if interactive { "Interactive command session" } else { "Non-interactive command session" },
        "sessionType": if interactive { "InteractiveCommands" } else { "NonInteractiveCommands" },
        "inputs": {},
        "properties": { "linux": linux },
    }))
}

/// Checks the `properties` of a Port session after interpolation, as the AWS port documents'
/// parameters are checked: `portNumber` 1–65535, `localPortNumber` 0–65535, `host` a name or an
/// address.
pub fn check_port_properties(props: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in props {
        let kind = match k.as_str() {
            "portNumber" => Kind::Port,
            "localPortNumber" => Kind::LocalPort,
            "host" => Kind::Host,
            _ => continue,
        };
        let name = match kind {
            Kind::Port => "portNumber",
            Kind::LocalPort => "localPortNumber",
            Kind::Host => "host",
        };
        check(
            &Param {
                name,
                default: None,
                kind,
            },
            v.as_str().unwrap_or(""),
        )?;
    }
    Ok(())
}

/// What a literal link-local or cloud-metadata address in `host` is, if it is one: port
/// sessions are refused such destinations at StartSession while the preference
/// `denyLinkLocalDestinations` is on (the agent checks every resolved address as well).
pub fn link_local_literal(host: &str) -> Option<&'static str> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(host);
    let v4 = |a: Ipv4Addr| -> Option<&'static str> {
        let o = a.octets();
        if a == Ipv4Addr::new(100, 100, 100, 200) || a == Ipv4Addr::new(168, 63, 129, 16) {
            Some("a cloud metadata address")
        } else if o[0] == 169 && o[1] == 254 {
            Some("an IPv4 link-local address (169.254.0.0/16, cloud metadata)")
        } else {
            None
        }
    };
    if let Ok(a) = unbracketed.parse::<Ipv4Addr>() {
        return v4(a);
    }
    let a = unbracketed.parse::<Ipv6Addr>().ok()?;
    if let Some(m) = a.to_ipv4_mapped() {
        return v4(m);
    }
    let seg = a.segments();
    if seg[0] & 0xffc0 == 0xfe80 {
        return Some("an IPv6 link-local address (fe80::/10)");
    }
    if seg[0] == 0xfd00 && seg[1] == 0x0ec2 {
        return Some("an AWS IPv6 metadata address (fd00:ec2::/32)");
    }
    // IPv4-compatible, NAT64 and 6to4 forms of a link-local IPv4 address.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4(embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return v4(embedded(seg[1], seg[2]));
    }
    None
}

/// The AWS-owned session documents Airlock serves: each is listed and readable with Owner
/// `Amazon`, and none can be changed or deleted. The texts are what GetDocument shows; what a
/// session of each runs is built by [`session_document`].
pub const BUILTIN: &[(&str, &str)] = &[
    (
        PORT_FORWARDING,
        r#"{
  "schemaVersion": "1.0",
  "description": "Document to start port forwarding session over Session Manager",
  "sessionType": "Port",
  "parameters": {
    "portNumber": {"type": "String", "description": "(Optional) Port number of the server on the instance", "allowedPattern": "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$", "default": "80"},
    "localPortNumber": {"type": "String", "description": "(Optional) Port number on local machine to forward traffic to. An open port is chosen at run-time if not provided", "allowedPattern": "^([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$", "default": "0"}
  },
  "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}"}
}"#,
    ),
    (
        PORT_FORWARDING_TO_REMOTE_HOST,
        r#"{
  "schemaVersion": "1.0",
  "description": "Document to start port forwarding session over Session Manager to a remote host",
  "sessionType": "Port",
  "parameters": {
    "host": {"type": "String", "description": "(Required) The IP address or host name of the remote host"},
    "portNumber": {"type": "String", "description": "(Optional) Port number of the server on the remote host", "allowedPattern": "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$", "default": "80"},
    "localPortNumber": {"type": "String", "description": "(Optional) Port number on local machine to forward traffic to. An open port is chosen at run-time if not provided", "allowedPattern": "^([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$", "default": "0"}
  },
  "properties": {"host": "{{ host }}", "portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}"}
}"#,
    ),
    (
        SSH,
        r#"{
  "schemaVersion": "1.0",
  "description": "Document to start SSH session",
  "sessionType": "Port",
  "parameters": {
    "portNumber": {"type": "String", "description": "(Optional) Port number of SSH server on the instance", "allowedPattern": "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$", "default": "22"}
  },
  "properties": {"portNumber": "{{ portNumber }}"}
}"#,
    ),
    (
        INTERACTIVE_COMMAND,
        r#"{
  "schemaVersion": "1.0",
  "description": "Document to run single interactive command on an instance",
  "sessionType": "InteractiveCommands",
  "parameters": {
    "command": {"type": "String", "description": "The command to run on the instance"}
  },
  "properties": {"linux": {"commands": "{{ command }}", "runAsElevated": false}}
}"#,
    ),
    (
        NON_INTERACTIVE_COMMAND,
        r#"{
  "schemaVersion": "1.0",
  "description": "Document to run single non-interactive command on an instance",
  "sessionType": "NonInteractiveCommands",
  "parameters": {
    "command": {"type": "String", "description": "The command to run on the instance"},
    "separateOutputStream": {"type": "String", "description": "(Optional) Whether stdout and stderr stay apart, with the exit code after them", "allowedValues": ["true", "false"], "default": "false"}
  },
  "properties": {"linux": {"commands": "{{ command }}", "runAsElevated": false, "separateOutputStream": "{{ separateOutputStream }}"}}
}"#,
    ),
];

/// The text of a built-in AWS document.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The `DocumentContent` a StartSession of document `name` runs: a built-in document, or the
/// default version of a stored one, parameters checked and interpolated; `inputs` are the
/// preferences in force. Port destinations that are literal link-local or metadata addresses
/// are refused here while `denyLinkLocalDestinations` is on. Also returns which version ran
/// (`"1:<sha256>"` for a stored version, `"builtin"`), for the session's audit record.
pub async fn resolve(
    state: &crate::state::AppState,
    name: &str,
    parameters: &BTreeMap<String, Vec<String>>,
) -> Result<(Value, String), ApiError> {
    let prefs = state.preferences.get();
    let mut which = "builtin".to_owned();
    let mut content = if name == SHELL || builtin(name).is_some() {
        session_document(name, parameters)?
    } else {
        let Some((_, version)) = state.store.document_at(name, None).await? else {
            return Err(ApiError::client(
                "InvalidDocument",
                format!(
                    "Document {name} does not exist or is not a Session document this server runs."
                ),
            ));
        };
        let format = crate::document::Format::parse(&version.format)
            .unwrap_or(crate::document::Format::Json);
        let parsed = crate::document::parse_text(&version.content, format)?;
        let doc = crate::document::validate(&parsed)?;
        which = format!("{}:{}", version.version, version.hash);
        crate::document::render(name, &doc, parameters)?
    };
    if prefs.deny_link_local_destinations && content["sessionType"] == "Port" {
        if let Some(host) = content["properties"]["host"].as_str() {
            if let Some(what) = link_local_literal(host) {
                return Err(invalid_parameters(format!(
                    "The host {host} is {what}; port sessions may not reach it while the \
                     preference denyLinkLocalDestinations is on."
                )));
            }
        }
    }
    content["inputs"] = crate::document::inputs::to_inputs(&prefs);
    Ok((content, which))
}

fn check(p: &Param, value: &str) -> Result<(), ApiError> {
    let ok = match p.kind {
        Kind::Port => parse_port(value).is_some_and(|n| n >= 1),
        Kind::LocalPort => parse_port(value).is_some(),
        Kind::Host => valid_host(value),
    };
    if ok {
        return Ok(());
    }
    let what = match p.kind {
        Kind::Port => "a port number from 1 to 65535",
        Kind::LocalPort => "a port number from 0 to 65535 (0: any free port)",
        Kind::Host => "a host name or an IP address",
    };
    let shown: String = value.chars().take(64).collect();
    Err(invalid_parameters(format!(
        "The parameter {} must be {what}, not '{shown}'.",
        p.name
    )))
}

/// Digits only (no sign, no spaces), at most 5 of them, up to 65535.
fn parse_port(v: &str) -> Option<u16> {
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A DNS name (labels of letters, digits, `-` and `_`, not starting or ending with `-`, at most
/// 63 bytes each and 253 in all, an optional final dot), an IPv4 address, or an IPv6 address
/// with or without brackets.
pub fn valid_host(h: &str) -> bool {
    if h.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let unbracketed = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if unbracketed.parse::<Ipv6Addr>().is_ok() {
        return true;
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
            .collect()
    }

    #[test]
    fn port_forwarding_properties_as_the_capture_shows() {
        let d = session_document(
            PORT_FORWARDING,
            &params(&[("portNumber", "80"), ("localPortNumber", "18950")]),
        )
        .unwrap();
        assert_eq!(d["sessionType"], "Port");
        assert_eq!(
            d["properties"],
            json!({"portNumber":"80","type":"LocalPortForwarding","localPortNumber":"18950"})
        );
        let d = session_document(PORT_FORWARDING, &BTreeMap::new()).unwrap();
        assert_eq!(d["properties"]["portNumber"], "80");
        assert_eq!(d["properties"]["localPortNumber"], "0");
    }

    #[test]
    fn remote_host_requires_a_valid_host() {
        let e = session_document(
            PORT_FORWARDING_TO_REMOTE_HOST,
            &params(&[("portNumber", "5432")]),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidParameters");
        assert!(
            e.message.contains("requires the parameter host"),
            "{}",
            e.message
        );
        let d = session_document(
            PORT_FORWARDING_TO_REMOTE_HOST,
            &params(&[("host", "db.internal"), ("portNumber", "5432")]),
        )
        .unwrap();
        assert_eq!(d["properties"]["host"], "db.internal");
        assert_eq!(d["properties"]["type"], "LocalPortForwarding");
        for bad in [
            "",
            "a b",
            "-x.com",
            "x..y",
            "evil;rm",
            &"a".repeat(64),
            "http://x",
        ] {
            let e = session_document(PORT_FORWARDING_TO_REMOTE_HOST, &params(&[("host", bad)]))
                .unwrap_err();
            assert_eq!(e.code, "InvalidParameters", "{bad}");
        }
        for good in ["10.0.0.5", "::1", "[fe80::1]", "db-1.internal.", "my_host"] {
            assert!(valid_host(good), "{good}");
        }
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        for bad in ["0", "65536", "-1", "80a", "", " ", "+80", "999999"] {
            let e = session_document(SSH, &params(&[("portNumber", bad)])).unwrap_err();
            assert_eq!(e.code, "InvalidParameters", "{bad:?}");
        }
        let e = session_document(PORT_FORWARDING, &params(&[("localPortNumber", "70000")]))
            .unwrap_err();
        assert!(e.message.contains("localPortNumber"), "{}", e.message);
        let d = session_document(SSH, &BTreeMap::new()).unwrap();
        assert_eq!(d["properties"], json!({"portNumber": "22"}));
    }

    #[test]
    fn literal_link_local_and_metadata_hosts_are_recognised() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "[fe80::1]",
            "fe80::1%eth0".split('%').next().unwrap(),
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "[::ffff:a9fe:a9fe]",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::169.254.169.254",
            "100.100.100.200",
            "168.63.129.16",
        ] {
            assert!(link_local_literal(bad).is_some(), "{bad}");
        }
        for good in [
            "10.0.0.1",
            "db.internal",
            "::1",
            "127.0.0.1",
            "169.255.0.1",
            "fec0::1",
        ] {
            assert_eq!(link_local_literal(good), None, "{good}");
        }
    }

    #[test]
    fn run_as_follows_the_preferences() {
        use crate::api::sessions::run_as_user;
        let mut p = crate::preferences::Preferences::default();
        assert_eq!(run_as_user(&p, Some("alice")), "alice");
        assert_eq!(run_as_user(&p, None), "");
        p.run_as_default_user = "ops".into();
        assert_eq!(run_as_user(&p, None), "ops");
        assert_eq!(run_as_user(&p, Some("")), "ops");
        assert_eq!(run_as_user(&p, Some("alice")), "alice");
        p.run_as_enabled = false;
        assert_eq!(run_as_user(&p, Some("alice")), "");
    }

    #[test]
    fn unknown_documents_and_parameters() {
        assert_eq!(
            session_document("AWS-Nope", &BTreeMap::new())
                .unwrap_err()
                .code,
            "InvalidDocument"
        );
        let e = session_document(SSH, &params(&[("port", "22")])).unwrap_err();
        assert!(
            e.message.contains("port is not a parameter"),
            "{}",
            e.message
        );
        let mut two = BTreeMap::new();
        two.insert(
            "portNumber".to_owned(),
            vec!["1".to_owned(), "2".to_owned()],
        );
        assert_eq!(
            session_document(SSH, &two).unwrap_err().code,
            "InvalidParameters"
        );
    }
}
