//! Sign → verify round trips: a table of request shapes with and without a session token, both
//! header and presigned forms, and a property test over arbitrary paths, queries, header values
//! and bodies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_sigv4::{
    parse, presign, sign, uri_encode, verify, Credentials, Request, SigV4Error, SignOptions,
    VerifyConfig,
};
use proptest::prelude::*;
use time::macros::datetime;
use time::OffsetDateTime;

const NOW: OffsetDateTime = datetime!(2026-06-23 12:10:00 UTC);

fn creds(token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: "AKIAAIRLOCKTEST".into(),
        secret_access_key: "s3cr3t/with+chars=".into(),
        session_token: token.map(str::to_owned),
    }
}

fn regions() -> Vec<String> {
    vec!["us-east-1".into(), "eu-west-1".into()]
}

/// Signs with the header method and returns the complete header list.
fn signed_headers(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    creds: &Credentials,
) -> Result<Vec<(String, String)>, SigV4Error> {
    let req = Request {
        method,
        path_and_query: target,
        headers,
        body,
    };
    let added = sign(&req, creds, "eu-west-1", "ssm", NOW)?;
    let mut all = headers.to_vec();
    all.extend(added);
    Ok(all)
}

fn check(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    secret: &str,
) -> Result<(), SigV4Error> {
    let req = Request {
        method,
        path_and_query: target,
        headers,
        body,
    };
    let parsed = parse(&req)?;
    let regions = regions();
    verify(
        &req,
        &parsed,
        secret,
        &VerifyConfig::new(&regions, "ssm", NOW),
    )
}

fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// Method, request target, headers, body.
type Shape<'a> = (&'a str, &'a str, Vec<(String, String)>, &'a [u8]);

#[test]
fn table_round_trips() {
    let shapes: Vec<Shape> = vec![
        (
            "POST",
            "/",
            vec![
                h("Host", "127.0.0.1:18900"),
                h("Content-Type", "application/x-amz-json-1.1"),
                h("X-Amz-Target", "AmazonSSM.StartSession"),
                h("User-Agent", "airlock/0.1"),
            ],
            br#"{"Target":"i-0123456789abcdef0"}"#,
        ),
        ("GET", "/", vec![h("host", "example.com")], b""),
        (
            "GET",
            "/a/./b/../c//d/?z=1&a=%2F&a=b+c&empty&utf=%E2%9C%93",
            vec![h("HOST", "example.com"), h("x-amz-meta", "  a   b  ")],
            b"",
        ),
        (
            "PUT",
            "/path with space/\u{00e9}t\u{00e9}",
            vec![
                h("Host", "example.com"),
                h("X-Amz-Dup", "1"),
                h("x-amz-dup", "2"),
                h("Content-Type", "text/plain"),
            ],
            b"\x00\xffbinary",
        ),
        (
            "POST",
            "/",
            vec![
                h("Host", "example.com"),
                h(
                    "x-amz-content-sha256",
                    &airlock_sigv4::hex_sha256(b"payload"),
                ),
            ],
            b"payload",
        ),
    ];
    for token in [None, Some("FQoGZXIvYXdzEXAMPLE+/=token")] {
        let creds = creds(token);
        for (method, target, headers, body) in &shapes {
            let all = signed_headers(method, target, headers, body, &creds).unwrap();
            let req = Request {
                method,
                path_and_query: target,
                headers: &all,
                body,
            };
            let parsed = parse(&req).unwrap();
            assert_eq!(parsed.session_token.as_deref(), token);
            assert_eq!(parsed.region, "eu-west-1");
            if token.is_some() {
                assert!(parsed
                    .signed_headers
                    .contains(&"x-amz-security-token".to_owned()));
            }
            assert!(!parsed.signed_headers.contains(&"user-agent".to_owned()));
            check(method, target, &all, body, &creds.secret_access_key)
                .unwrap_or_else(|e| panic!("{method} {target}: {e:?}"));

            // Tampering.
            let mut body2 = body.to_vec();
            body2.push(b'!');
            assert!(check(method, target, &all, &body2, &creds.secret_access_key).is_err());
            assert!(check("DELETE", target, &all, body, &creds.secret_access_key).is_err());
            let other_target = format!("{target}x");
            assert!(check(method, &other_target, &all, body, &creds.secret_access_key).is_err());
            assert!(check(method, target, &all, body, "other").is_err());
            // Unsigned headers may change freely.
            let mut with_ua = all.clone();
            with_ua.push(h("user-agent", "something else"));
            check(method, target, &with_ua, body, &creds.secret_access_key).unwrap();
        }
    }
}

#[test]
fn unsigned_session_token_is_refused_by_default() {
    use airlock_sigv4::{sign_with, SessionTokenMode};
    let creds = creds(Some("tok"));
    let headers = vec![h("Host", "example.com")];
    let req = Request {
        method: "POST",
        path_and_query: "/",
        headers: &headers,
        body: b"{}",
    };
    let opts = SignOptions {
        session_token: SessionTokenMode::AppendedAfterSigning,
        ..SignOptions::default()
    };
    let mut all = headers.clone();
    all.extend(sign_with(&req, &creds, "us-east-1", "ssm", NOW, &opts).unwrap());
    let req = Request {
        headers: &all,
        ..req
    };
    let parsed = parse(&req).unwrap();
    assert_eq!(parsed.session_token.as_deref(), Some("tok"));
    let regions = regions();
    let cfg = VerifyConfig::new(&regions, "ssm", NOW);
    assert_eq!(
        verify(&req, &parsed, &creds.secret_access_key, &cfg),
        Err(SigV4Error::HeaderNotSigned("x-amz-security-token".into()))
    );
    let lenient = VerifyConfig {
        allow_unsigned_session_token: true,
        ..cfg
    };
    verify(&req, &parsed, &creds.secret_access_key, &lenient).unwrap();
}

#[test]
fn presigned_round_trip_with_token() {
    let creds = creds(Some("a/b+c=="));
    let headers = vec![h("Host", "gateway.example:8443")];
    for target in ["/v1/data-channel/s-1?role=publish_subscribe", "/ws", "/ws?"] {
        let req = Request {
            method: "GET",
            path_and_query: target,
            headers: &headers,
            body: b"",
        };
        let url = presign(
            &req,
            &creds,
            "us-east-1",
            "ssmmessages",
            NOW,
            60,
            &SignOptions::default(),
        )
        .unwrap();
        assert!(url.contains(&format!(
            "X-Amz-Security-Token={}",
            uri_encode(b"a/b+c==", true)
        )));
        let req = Request {
            path_and_query: &url,
            ..req
        };
        let parsed = parse(&req).unwrap();
        assert!(parsed.presigned);
        assert_eq!(parsed.expires, Some(60));
        assert_eq!(parsed.session_token.as_deref(), Some("a/b+c=="));
        let regions = regions();
        let cfg = VerifyConfig::new(&regions, "ssmmessages", NOW);
        verify(&req, &parsed, &creds.secret_access_key, &cfg).unwrap();
        let later = VerifyConfig {
            now: NOW + time::Duration::seconds(61),
            ..cfg
        };
        assert!(matches!(
            verify(&req, &parsed, &creds.secret_access_key, &later),
            Err(SigV4Error::PresignedUrlExpired { .. })
        ));
        // Any change to the query breaks the signature.
        let tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
        let req2 = Request {
            path_and_query: &tampered,
            ..req
        };
        let parsed2 = parse(&req2).unwrap();
        assert!(matches!(
            verify(&req2, &parsed2, &creds.secret_access_key, &cfg),
            Err(SigV4Error::SignatureMismatch { .. })
        ));
    }
}

#[test]
fn signing_refuses_bad_input() {
    let creds = creds(Some("tok"));
    let cases: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![h("Host", "x"), h("Authorization", "x")],
        vec![h("Host", "x"), h("X-Amz-Date", "20260623T121000Z")],
        vec![h("Host", "x"), h("X-Amz-Security-Token", "tok")],
    ];
    for headers in cases {
        let req = Request {
            method: "GET",
            path_and_query: "/",
            headers: &headers,
            body: b"",
        };
        let err = sign(&req, &creds, "us-east-1", "ssm", NOW).unwrap_err();
        assert!(
            matches!(err, SigV4Error::InvalidSigningInput(_)),
            "{headers:?}"
        );
    }
    let headers = vec![h("Host", "x")];
    let req = Request {
        method: "GET",
        path_and_query: "/",
        headers: &headers,
        body: b"",
    };
    for (region, service) in [("", "ssm"), ("us east", "ssm"), ("us-east-1", "s/m")] {
        assert!(sign(&req, &creds, region, service, NOW).is_err());
    }
    for expires in [0, 604_801] {
        assert!(presign(
            &req,
            &creds,
            "us-east-1",
            "ssm",
            NOW,
            expires,
            &SignOptions::default()
        )
        .is_err());
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(String::new()),
        "[a-zA-Z0-9 %+=@:._~\u{e9}\u{1234}-]{1,8}",
    ]
}

fn query_part() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /+=&?%\u{e9}-]{0,6}".prop_map(|s| uri_encode(s.as_bytes(), true))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify(
        segments in proptest::collection::vec(segment(), 0..5),
        trailing_slash in any::<bool>(),
        query in proptest::collection::vec((query_part(), query_part()), 0..4),
        header_values in proptest::collection::vec("[ -~]{0,12}", 0..3),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        token in proptest::option::of("[A-Za-z0-9+/=]{1,24}"),
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
    ) {
        let mut target = format!("/{}", segments.join("/"));
        if trailing_slash {
            target.push('/');
        }
        if !query.is_empty() {
            target.push('?');
            let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            target.push_str(&pairs.join("&"));
        }
        let mut headers = vec![h("Host", "airlock.example:443")];
        for (i, value) in header_values.iter().enumerate() {
            headers.push(h(&format!("X-Amz-Meta-{}", i % 2), value));
        }
        let creds = creds(token.as_deref());
        let all = signed_headers(method, &target, &headers, &body, &creds).unwrap();
        prop_assert_eq!(check(method, &target, &all, &body, &creds.secret_access_key), Ok(()));

        let mut body2 = body.clone();
        body2.push(0);
        prop_assert!(check(method, &target, &all, &body2, &creds.secret_access_key).is_err());

        // Presigned form of the same request (GET, no body hash header).
        let req = Request { method, path_and_query: &target, headers: &headers, body: &body };
        if !query.iter().any(|(k, _)| k.starts_with("X-Amz-")) {
            let url = presign(&req, &creds, "us-east-1", "ssm", NOW, 300, &SignOptions::default()).unwrap();
            let req = Request { path_and_query: &url, ..req };
            let parsed = parse(&req).unwrap();
            let regions = regions();
            prop_assert_eq!(
                verify(&req, &parsed, &creds.secret_access_key, &VerifyConfig::new(&regions, "ssm", NOW)),
                Ok(())
            );
        }
    }
}
