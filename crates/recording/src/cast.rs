//! asciicast v2: the session metadata header, events, parsing a `.cast` text and exporting chunks.

use crate::FormatError;
use serde_json::{json, Value};

/// What a recording is of: written into the asciicast header (`airlock` object) so a `.cast` file
/// exported on its own still says which session, host, user and document it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Session id (`<user>-<random>`).
    pub session: String,
    /// Target (managed instance id).
    pub target: String,
    /// Owner: the user who started the session.
    pub owner: String,
    /// Session document name.
    pub document: String,
    /// Terminal columns at the start.
    pub width: u16,
    /// Terminal rows at the start.
    pub height: u16,
    /// Start time, Unix seconds.
    pub timestamp: i64,
    /// `TERM` of the client, for players that care.
    pub term: String,
}

impl Meta {
    /// The asciicast v2 header line (no trailing newline).
    pub fn header_line(&self) -> String {
        json!({
            "version": 2,
            "width": self.width,
            "height": self.height,
            "timestamp": self.timestamp,
            "title": format!("airlock session {} on {}", self.session, self.target),
            "env": {"TERM": self.term},
            "airlock": {
                "session": self.session,
                "target": self.target,
                "owner": self.owner,
                "document": self.document,
            },
        })
        .to_string()
    }
}

/// The three asciicast event codes Airlock records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `"o"`: what the terminal printed.
    Output,
    /// `"i"`: what the user typed (only when input logging is on).
    Input,
    /// `"r"`: the terminal was resized; data is `"COLSxROWS"`.
    Resize,
}

impl EventKind {
    /// The asciicast code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            EventKind::Output => "o",
            EventKind::Input => "i",
            EventKind::Resize => "r",
        }
    }

    /// The kind for an asciicast code; `None` for codes Airlock does not use (e.g. `"m"` markers).
    pub fn from_code(code: &str) -> Option<EventKind> {
        match code {
            "o" => Some(EventKind::Output),
            "i" => Some(EventKind::Input),
            "r" => Some(EventKind::Resize),
            _ => None,
        }
    }
}

/// One asciicast event: `[t, code, data]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start of the recording.
    pub t: f64,
    /// Output, input or resize.
    pub kind: EventKind,
    /// The text (UTF-8; invalid bytes were recorded as U+FFFD).
    pub data: String,
}

impl Event {
    /// The asciicast line of this event (no trailing newline). `t` is kept to the microsecond.
    pub fn line(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 24);
        self.write_line(&mut out);
        out
    }

    /// Appends the asciicast line (no trailing newline) to `out`, without intermediate copies:
    /// the recorder writes every relayed byte through here.
    pub fn write_line(&self, out: &mut String) {
        use std::fmt::Write;
        out.push('[');
        let _ = write!(out, "{}", event_time(self.t));
        out.push_str(",\"");
        out.push_str(self.kind.code());
        out.push_str("\",");
        push_json_str(out, &self.data);
        out.push(']');
    }
}

/// `t` as written: not negative, finite, kept to the microsecond.
pub(crate) fn event_time(t: f64) -> f64 {
    let t = (t.max(0.0) * 1_000_000.0).round() / 1_000_000.0;
    if t.is_finite() {
        t
    } else {
        0.0
    }
}

/// Appends `s` as a JSON string literal, escaping exactly what JSON requires (`"`, `\\` and
/// control characters), copying the runs in between whole.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so `i` is a character boundary.
        out.push_str(s.get(run..i).unwrap_or_default());
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(esc);
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or_default());
    out.push('"');
}

/// The parsed asciicast v2 header: the fields players need plus the whole object.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Terminal columns.
    pub width: u16,
    /// Terminal rows.
    pub height: u16,
    /// Start time, Unix seconds (0 when the header has none).
    pub timestamp: i64,
    /// The whole header object, including Airlock's `airlock` metadata.
    pub raw: Value,
}

fn line_err(line: usize, reason: impl Into<String>) -> FormatError {
    FormatError::Line {
        line,
        reason: reason.into(),
    }
}

fn parse_header(line_no: usize, line: &str) -> Result<Header, FormatError> {
    let raw: Value = serde_json::from_str(line)
        .map_err(|e| line_err(line_no, format!("header is not JSON: {e}")))?;
    let obj = raw
        .as_object()
        .ok_or_else(|| line_err(line_no, "header is not a JSON object"))?;
    if obj.get("version").and_then(Value::as_u64) != Some(2) {
        return Err(line_err(line_no, "not asciicast version 2"));
    }
    let dim = |name: &str| -> Result<u16, FormatError> {
        obj.get(name)
            .and_then(Value::as_u64)
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| line_err(line_no, format!("header has no valid {name}")))
    };
    let width = dim("width")?;
    let height = dim("height")?;
    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| line_err(line_no, "header timestamp is not an integer"))?,
    };
    Ok(Header {
        width,
        height,
        timestamp,
        raw,
    })
}

fn parse_event(line_no: usize, line: &str) -> Result<Option<Event>, FormatError> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| line_err(line_no, format!("event is not JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| line_err(line_no, "event is not a JSON array"))?;
    let [t, code, data] = arr.as_slice() else {
        return Err(line_err(line_no, "event is not [time, code, data]"));
    };
    let t = t
        .as_f64()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| line_err(line_no, "event time is not a non-negative number"))?;
    let code = code
        .as_str()
        .ok_or_else(|| line_err(line_no, "event code is not a string"))?;
    let data = data
        .as_str()
        .ok_or_else(|| line_err(line_no, "event data is not a string"))?;
    Ok(EventKind::from_code(code).map(|kind| Event {
        t,
        kind,
        data: data.to_string(),
    }))
}

/// Parses a `.cast` (asciicast v2) text: header + events. Errors name the line (1-based). Blank
/// lines are skipped; event codes Airlock does not use (markers `"m"`, …) are skipped as players do.
pub fn parse_cast(text: &str) -> Result<(Header, Vec<Event>), FormatError> {
    let mut header = None;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if header.is_none() {
            header = Some(parse_header(line_no, line)?);
        } else if let Some(ev) = parse_event(line_no, line)? {
            events.push(ev);
        }
    }
    let header = header.ok_or(FormatError::Empty)?;
    Ok((header, events))
}

/// Splits one chunk into its header line and body. Chunks are UTF-8 and have a header line.
pub(crate) fn split_chunk(pos: u64, bytes: &[u8]) -> Result<(&str, &str), FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Chunk {
        index: pos,
        reason: format!("not UTF-8: {e}"),
    })?;
    text.split_once('\n').ok_or_else(|| FormatError::Chunk {
        index: pos,
        reason: "no header line".to_string(),
    })
}

/// Concatenates chunk bodies in the order given (index order) into a `.cast` text, with no
/// verification (that is [`crate::verify`]'s job).
pub fn export(chunks: &[Vec<u8>]) -> Result<String, FormatError> {
    let mut out = String::with_capacity(chunks.iter().map(Vec::len).sum());
    for (pos, chunk) in chunks.iter().enumerate() {
        let (_, body) = split_chunk(pos as u64, chunk)?;
        out.push_str(body);
    }
    Ok(out)
}
