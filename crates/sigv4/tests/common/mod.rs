//! Helpers shared by the integration tests: locating the shared test data, reading raw HTTP
//! requests as the AWS suite and the captures write them, and small request mutations.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use airlock_sigv4::Request;

/// `/work/shared/testdata`, found relative to this crate (the repo sits at `/work/main`, shared
/// data at `/work/shared`). Panics loudly when missing: these tests must never be skipped.
pub fn testdata_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata");
    assert!(
        dir.is_dir(),
        "shared test data not found at {} (expected the repo at /work/main and shared data at \
         /work/shared)",
        dir.display()
    );
    dir
}

/// An owned HTTP request read from raw bytes.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Borrows it as the crate's [`Request`].
    pub fn as_request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path_and_query: &self.target,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Applies `f` to every value of header `name`.
    pub fn map_header(&mut self, name: &str, f: impl Fn(&str) -> String) {
        for (n, v) in &mut self.headers {
            if n.eq_ignore_ascii_case(name) {
                *v = f(v);
            }
        }
    }

    /// Removes every header called `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// Parses a raw HTTP/1.1 request: request line (the target may contain spaces, the version may be
/// missing), `Name:value` header lines, continuation lines starting with whitespace (kept, joined
/// with a newline, as an obs-folded value), a blank line, then the body. Accepts LF or CRLF.
pub fn parse_raw(bytes: &[u8]) -> RawRequest {
    let (head, body) = split_head(bytes);
    let head = std::str::from_utf8(head).expect("request head is UTF-8");
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().expect("request line");
    let (method, rest) = request_line.split_once(' ').expect("method");
    let target = match rest.rsplit_once(' ') {
        Some((target, version)) if version.starts_with("HTTP/") => target,
        _ => rest,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let last = headers
                .last_mut()
                .expect("continuation line after a header");
            last.1.push('\n');
            last.1.push_str(line);
            continue;
        }
        let (name, value) = line.split_once(':').expect("header line has a colon");
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    RawRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: body.to_vec(),
    }
}

fn split_head(bytes: &[u8]) -> (&[u8], &[u8]) {
    let crlf = find(bytes, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(bytes, b"\n\n").map(|i| (i, 2));
    let split = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match split {
        Some((i, len)) => (&bytes[..i], &bytes[i + len..]),
        None => (bytes, &[]),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Changes the last character of a hex signature so that it no longer matches.
pub fn flip_last_hex(s: &str) -> String {
    let mut out = s.to_owned();
    let last = out.pop().expect("non-empty");
    out.push(if last == 'a' { 'b' } else { 'a' });
    out
}
