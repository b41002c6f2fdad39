//! Real-client vectors: the SSM-shaped request of policy-and-api.md §4.5 (computed with botocore)
//! and the requests the real AWS CLI sent in `shared/testdata/plugin-captures`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;

use airlock_sigv4::{
    canonical_request, hex_sha256, parse, parse_amz_date, sign, signature, signing_key,
    string_to_sign, verify, Credentials, SigV4Error, VerifyConfig,
};
use common::{parse_raw, RawRequest};
use time::macros::datetime;

const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// The secret of the captures: note `/bP`, not `+bP`.
const CAPTURE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

const SSM_REQUEST: &str = "POST / HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Content-Type: application/x-amz-json-1.1\r\n\
X-Amz-Target: AmazonSSM.StartSession\r\n\
X-Amz-Date: 20150830T123600Z\r\n\
Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=e5710d3c443a9b862f8fd93a7350df044aebccc0db32846cea6826e9f3d7a3f1\r\n\
\r\n\
{\"Target\":\"i-0123456789abcdef0\",\"DocumentName\":\"SSM-SessionManagerRunShell\"}";

const SSM_CANONICAL: &str = "POST\n/\n\ncontent-type:application/x-amz-json-1.1\nhost:localhost:8080\nx-amz-date:20150830T123600Z\nx-amz-target:AmazonSSM.StartSession\n\ncontent-type;host;x-amz-date;x-amz-target\n4ed644a8fc12b77273a4e17facae6580705c33ca6fc1ed80c217aa10cc0d5afd";

fn us_east_1() -> Vec<String> {
    vec!["us-east-1".to_owned()]
}

#[test]
fn ssm_vector_canonical_request_and_signature() {
    let raw = parse_raw(SSM_REQUEST.as_bytes());
    let parsed = parse(&raw.as_request()).unwrap();
    let creq = canonical_request(
        &raw.as_request(),
        &parsed.signed_headers,
        true,
        &hex_sha256(&raw.body),
    )
    .unwrap();
    assert_eq!(creq, SSM_CANONICAL);
    assert_eq!(
        hex_sha256(creq.as_bytes()),
        "5e73598f8656f0fa1931be018d22d2cf7c098c24e6bba4e1f7fd3f963646c74c"
    );
    let sts = string_to_sign(
        "20150830T123600Z",
        "20150830/us-east-1/ssm/aws4_request",
        &creq,
    );
    let key = signing_key(SUITE_SECRET, "20150830", "us-east-1", "ssm");
    assert_eq!(
        signature(&key, &sts),
        "e5710d3c443a9b862f8fd93a7350df044aebccc0db32846cea6826e9f3d7a3f1"
    );
}

#[test]
fn ssm_vector_verifies() {
    let raw = parse_raw(SSM_REQUEST.as_bytes());
    let parsed = parse(&raw.as_request()).unwrap();
    assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
    assert_eq!(parsed.service, "ssm");
    assert!(!parsed.presigned);
    let regions = us_east_1();
    let cfg = VerifyConfig::new(&regions, "ssm", datetime!(2015-08-30 12:36:00 UTC));
    verify(&raw.as_request(), &parsed, SUITE_SECRET, &cfg).unwrap();

    // botocore writes ", "; others write ","; both parse.
    let mut compact = raw.clone();
    compact.map_header("authorization", |v| v.replace(", ", ","));
    let parsed = parse(&compact.as_request()).unwrap();
    verify(&compact.as_request(), &parsed, SUITE_SECRET, &cfg).unwrap();

    // The port is part of the signed host.
    let mut other_port = raw.clone();
    other_port.map_header("host", |_| "localhost:8081".to_owned());
    let parsed = parse(&other_port.as_request()).unwrap();
    let err = verify(&other_port.as_request(), &parsed, SUITE_SECRET, &cfg).unwrap_err();
    assert!(matches!(err, SigV4Error::SignatureMismatch { .. }));
}

#[test]
fn ssm_vector_is_what_sign_produces() {
    let raw = parse_raw(SSM_REQUEST.as_bytes());
    let mut unsigned = raw.clone();
    unsigned.remove_header("authorization");
    unsigned.remove_header("x-amz-date");
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SUITE_SECRET.into(),
        session_token: None,
    };
    let added = sign(
        &unsigned.as_request(),
        &creds,
        "us-east-1",
        "ssm",
        datetime!(2015-08-30 12:36:00 UTC),
    )
    .unwrap();
    assert_eq!(
        added,
        vec![
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
            (
                "authorization".to_owned(),
                raw.header("authorization").unwrap().to_owned()
            ),
        ]
    );
}

/// Every request of the captures that carries an `Authorization` header, with its file name.
fn captured_requests() -> Vec<(String, RawRequest)> {
    let dir = common::testdata_dir().join("plugin-captures");
    assert!(dir.is_dir(), "captures missing at {}", dir.display());
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("api-http.jsonl")),
        "api-http.jsonl missing"
    );
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for line in fs::read_to_string(&file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["kind"] != "http" || v["dir"] != "plugin->server" {
                continue;
            }
            let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            let raw = parse_raw(&bytes);
            if raw.header("authorization").is_some() {
                out.push((name.clone(), raw));
            }
        }
    }
    out
}

#[test]
fn aws_cli_captured_requests_verify() {
    let requests = captured_requests();
    assert!(
        requests.iter().any(|(f, _)| f == "api-http.jsonl"),
        "no signed request in api-http.jsonl"
    );
    // The captures' README: all 15 POST signatures verify.
    assert_eq!(requests.len(), 15);
    let regions = us_east_1();
    for (file, raw) in &requests {
        let req = raw.as_request();
        let parsed = parse(&req).unwrap();
        assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
        assert_eq!(parsed.scope_date, "20261128");
        let now = parse_amz_date(raw.header("x-amz-date").unwrap()).unwrap();
        let cfg = VerifyConfig::new(&regions, "ssm", now);
        verify(&req, &parsed, CAPTURE_SECRET, &cfg)
            .unwrap_or_else(|e| panic!("{file}: {e:?}\n{}", e.detailed_message()));

        // The documentation's usual `+bP` secret is not the one used.
        let err = verify(&req, &parsed, SUITE_SECRET, &cfg).unwrap_err();
        assert!(
            matches!(err, SigV4Error::SignatureMismatch { .. }),
            "{file}"
        );
        // Clock skew both ways.
        let late = VerifyConfig {
            now: now + time::Duration::minutes(6),
            ..cfg
        };
        let err = verify(&req, &parsed, CAPTURE_SECRET, &late).unwrap_err();
        assert!(matches!(err, SigV4Error::SignatureExpired { .. }), "{file}");
        let early = VerifyConfig {
            now: now - time::Duration::minutes(6),
            ..cfg
        };
        let err = verify(&req, &parsed, CAPTURE_SECRET, &early).unwrap_err();
        assert!(
            matches!(err, SigV4Error::SignatureNotYetCurrent { .. }),
            "{file}"
        );
    }
}

#[test]
fn first_api_http_request_verifies() {
    let (file, raw) = captured_requests()
        .into_iter()
        .find(|(f, _)| f == "api-http.jsonl")
        .unwrap();
    let req = raw.as_request();
    assert_eq!(raw.header("x-amz-date"), Some("20261128T031313Z"));
    assert_eq!(
        raw.header("x-amz-target"),
        Some("AmazonSSM.StartSession"),
        "{file}"
    );
    let parsed = parse(&req).unwrap();
    assert_eq!(
        parsed.signed_headers,
        ["content-type", "host", "x-amz-date", "x-amz-target"]
    );
    let regions = us_east_1();
    let cfg = VerifyConfig::new(&regions, "ssm", datetime!(2026-11-28 03:13:13 UTC));
    verify(&req, &parsed, CAPTURE_SECRET, &cfg).unwrap();
}
