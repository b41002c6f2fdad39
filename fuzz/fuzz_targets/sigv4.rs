//! Builds a request from arbitrary bytes (method, target, headers and body separated by
//! newlines) and runs the server's SigV4 path on it: `parse`, then `verify` against a secret,
//! plus the canonical request. Mirrors `crates/sigv4/tests/fuzz.rs`. Run with
//! `cargo fuzz run sigv4` from fuzz/ (nightly toolchain).
#![no_main]

use airlock_sigv4::{canonical_request, parse, verify, Request, VerifyConfig};
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((name.to_owned(), value.to_owned()));
    }
    let body = lines.next().unwrap_or_default();
    let req = Request {
        method,
        path_and_query: target,
        headers: &headers,
        body: body.as_bytes(),
    };
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let _ = canonical_request(&req, &names, true, "hash");
    if let Ok(parsed) = parse(&req) {
        let regions = vec!["us-east-1".to_owned()];
        let now = datetime!(2026-06-23 12:10:00 UTC);
        let _ = verify(
            &req,
            &parsed,
            "secret",
            &VerifyConfig::new(&regions, "ssm", now),
        );
    }
});
