//! Property-based fuzzing of SigV4 on the stable toolchain (the libFuzzer target in `fuzz/`
//! mirrors it for nightly): `parse` on arbitrary requests and Authorization headers, canonical
//! request building on arbitrary paths, queries and headers, `verify` at arbitrary times, and
//! sign → verify over arbitrary inputs. Properties: nothing panics, and what the signer signs
//! the verifier accepts while any change is refused.
//!
//! Each property runs a bounded number of cases (well under 30 s for the file in a debug
//! build); set `AIRLOCK_FUZZ_CASES=N` to run N cases of each instead.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_sigv4::{
    amz_date, canonical_request, parse, parse_amz_date, presign, sign, uri_encode, verify,
    Credentials, Request, SignOptions, VerifyConfig,
};
use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-06-23 12:10:00 UTC);

/// `default` cases, or `AIRLOCK_FUZZ_CASES` when set.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("AIRLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn regions() -> Vec<String> {
    vec!["us-east-1".into()]
}

/// A piece of text that is sometimes SigV4 vocabulary, sometimes anything.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA512",
            "Credential=AKID/20260623/us-east-1/ssm/aws4_request",
            "Credential=AKID/20260623/us-east-1/ssm",
            "Credential=/////",
            "Credential=",
            "SignedHeaders=host;x-amz-date",
            "SignedHeaders=",
            "SignedHeaders=;;;",
            "Signature=00",
            "Signature=",
            "=",
            ",",
            " ",
            "\t",
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
    ]
}

fn authorization() -> impl Strategy<Value = String> {
    prop::collection::vec(word(), 0..8).prop_map(|w| w.join(""))
}

fn header() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "Host",
            "host ",
            "Authorization",
            "X-Amz-Date",
            "x-amz-date",
            "Date",
            "X-Amz-Security-Token",
            "x-amz-content-sha256",
            "X-Amz-Meta-A",
            "Content-Type",
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ];
    let value = prop_oneof![
        authorization(),
        prop::sample::select(vec![
            "20260623T121000Z",
            "20260623T121000",
            "99991231T235959Z",
            "00000101T000000Z",
            "Tue, 23 Jun 2026 12:10:00 GMT",
            "UNSIGNED-PAYLOAD",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ])
        .prop_map(str::to_owned),
        ".{0,40}",
    ];
    (name, value)
}

fn query_word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKID%2F20260623%2Fus-east-1%2Fssm%2Faws4_request",
            "X-Amz-Date=20260623T121000Z",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=abc",
            "X-Amz-Expires=300",
            "X-Amz-Expires=99999999999999999999999",
            "X-Amz-Expires=-1",
            "X-Amz-Security-Token=t",
            "X-Amz-Credential=%FF%FE",
            "%",
            "%zz",
            "&",
            "=",
            "?",
            "#",
        ])
        .prop_map(str::to_owned),
        ".{0,16}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            prop::sample::select(vec!["/", "", "//a//b/", "/./..", "/a/../../b/.", "/%2F%zz"])
                .prop_map(str::to_owned),
            ".{0,30}",
        ],
        prop::collection::vec(query_word(), 0..7),
    )
        .prop_map(|(path, q)| {
            if q.is_empty() {
                path
            } else {
                format!("{path}?{}", q.join("&"))
            }
        })
}

fn time_strategy() -> impl Strategy<Value = OffsetDateTime> {
    prop_oneof![
        (-600i64..600).prop_map(|s| NOW + Duration::seconds(s)),
        (-5_000_000_000i64..5_000_000_000).prop_map(|s| NOW + Duration::seconds(s)),
        Just(OffsetDateTime::UNIX_EPOCH),
        Just(datetime!(9999-12-31 23:59:59 UTC)),
        Just(datetime!(-9999-01-01 00:00:00 UTC)),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn parse_and_verify_survive_arbitrary_requests(
        method in prop_oneof![Just("POST".to_owned()), ".{0,8}"],
        target in target(),
        headers in prop::collection::vec(header(), 0..7),
        body in prop::collection::vec(any::<u8>(), 0..64),
        secret in ".{0,20}",
        now in time_strategy(),
        normalize in any::<bool>(),
        unsigned_token in any::<bool>(),
    ) {
        let req = Request { method: &method, path_and_query: &target, headers: &headers, body: &body };
        if let Ok(parsed) = parse(&req) {
            prop_assert!(!parsed.access_key_id.is_empty());
            let regions = regions();
            let mut cfg = VerifyConfig::new(&regions, "ssm", now);
            cfg.normalize_path = normalize;
            cfg.allow_unsigned_session_token = unsigned_token;
            let _ = verify(&req, &parsed, &secret, &cfg);
        }
    }

    #[test]
    fn authorization_headers_parse_or_fail_cleanly(
        value in authorization(),
        date in prop_oneof![Just("20260623T121000Z".to_owned()), ".{0,20}"],
    ) {
        let headers = vec![
            ("Host".to_owned(), "h".to_owned()),
            ("Authorization".to_owned(), value),
            ("X-Amz-Date".to_owned(), date),
        ];
        let req = Request { method: "POST", path_and_query: "/", headers: &headers, body: b"" };
        if let Ok(p) = parse(&req) {
            prop_assert!(!p.presigned);
            prop_assert!(!p.region.is_empty() && !p.service.is_empty());
            // SignedHeaders come back lower-cased, sorted and without duplicates.
            let mut sorted = p.signed_headers.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted, p.signed_headers);
        }
    }

    #[test]
    fn canonical_requests_are_total_and_deterministic(
        method in ".{0,8}",
        target in target(),
        headers in prop::collection::vec(header(), 0..6),
        signed in prop::collection::vec(prop_oneof![Just("host".to_owned()), ".{0,10}"], 0..5),
        normalize in any::<bool>(),
    ) {
        let req = Request { method: &method, path_and_query: &target, headers: &headers, body: b"" };
        let a = canonical_request(&req, &signed, normalize, "hash");
        let b = canonical_request(&req, &signed, normalize, "hash");
        prop_assert_eq!(&a, &b);
        if let Ok(c) = a {
            prop_assert!(c.starts_with(&method));
            prop_assert!(c.ends_with("\nhash"));
        }
    }

    #[test]
    fn amz_dates_parse_strictly_and_round_trip(
        s in prop_oneof![
            "[0-9]{8}T[0-9]{6}Z",
            ".{0,20}",
        ],
    ) {
        if let Ok(t) = parse_amz_date(&s) {
            prop_assert_eq!(amz_date(t), s);
        }
    }

    #[test]
    fn uri_encoding_is_unreserved_ascii(bytes in prop::collection::vec(any::<u8>(), 0..64), slash in any::<bool>()) {
        let e = uri_encode(&bytes, slash);
        prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%/".contains(&b)));
        prop_assert_eq!(e.contains('/'), !slash && bytes.contains(&b'/'));
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn what_is_signed_verifies_and_any_change_is_refused(
        path in ".{0,30}",
        query in prop::collection::vec((".{0,8}", ".{0,8}"), 0..4),
        meta in prop::collection::vec(".{0,20}", 0..3),
        body in prop::collection::vec(any::<u8>(), 0..64),
        token in prop::option::of("[A-Za-z0-9+/=]{1,24}"),
        change in 0u8..3,
    ) {
        // A request target as a client would send it: path and query percent-encoded.
        let mut target = format!("/{}", uri_encode(path.as_bytes(), false));
        if !query.is_empty() {
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", uri_encode(k.as_bytes(), true), uri_encode(v.as_bytes(), true)))
                .collect();
            target = format!("{target}?{}", pairs.join("&"));
        }
        let mut headers = vec![("Host".to_owned(), "airlock.example".to_owned())];
        for (i, v) in meta.iter().enumerate() {
            headers.push((format!("X-Amz-Meta-{i}"), v.clone()));
        }
        let creds = Credentials {
            access_key_id: "AKIAFUZZ".into(),
            secret_access_key: "s3cr3t".into(),
            session_token: token,
        };
        let req = Request { method: "POST", path_and_query: &target, headers: &headers, body: &body };
        let added = sign(&req, &creds, "us-east-1", "ssm", NOW).unwrap();
        let mut all = headers.clone();
        all.extend(added);
        let regions = regions();
        let cfg = VerifyConfig::new(&regions, "ssm", NOW);
        let signed = Request { headers: &all, ..req };
        let parsed = parse(&signed).unwrap();
        prop_assert_eq!(verify(&signed, &parsed, "s3cr3t", &cfg), Ok(()));
        prop_assert!(verify(&signed, &parsed, "s3cr3u", &cfg).is_err());

        // One change an attacker might make; each must be refused.
        let mut body2 = body.clone();
        let mut all2 = all.clone();
        let target2;
        let changed = match change {
            0 => {
                body2.push(b'!');
                Request { body: &body2, ..signed }
            }
            1 => {
                all2.push(("X-Amz-Target".into(), "AmazonSSM.TerminateSession".into()));
                Request { headers: &all2, ..signed }
            }
            _ => {
                target2 = if target.contains('?') { format!("{target}&x=1") } else { format!("{target}?x=1") };
                Request { path_and_query: &target2, ..signed }
            }
        };
        let parsed = parse(&changed).unwrap();
        prop_assert!(verify(&changed, &parsed, "s3cr3t", &cfg).is_err());

        // The presigned form of the same request verifies too.
        if !query.iter().any(|(k, _)| k.starts_with("X-Amz-")) {
            let url = presign(&req, &creds, "us-east-1", "ssm", NOW, 300, &SignOptions::default()).unwrap();
            let pre = Request { path_and_query: &url, ..req };
            let parsed = parse(&pre).unwrap();
            prop_assert_eq!(verify(&pre, &parsed, "s3cr3t", &cfg), Ok(()));
        }
    }
}
