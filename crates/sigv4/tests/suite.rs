//! AWS's SigV4 test suite (`shared/testdata/sigv4/v4`, 40 cases), run in full.
//!
//! For every case: the canonical request, string to sign and signature are recomputed byte for
//! byte for both the header and the query (presigned) variants, [`sign_with`] / [`presign`]
//! reproduce the signed requests, [`verify`] accepts the signed requests at the case's time, and a
//! set of tamperings (signature, body, signed header, clock, scope, dropped or unsigned headers) is
//! each rejected with the right error and AWS code. A missing suite folder fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_sigv4::{
    amz_date, canonical_request, hex_sha256, parse, parse_amz_date, presign, sign_with, signature,
    signing_key, string_to_sign, uri_encode, verify, Credentials, HeaderSelection, Parsed,
    SessionTokenMode, SigV4Error, SignOptions, VerifyConfig,
};
use common::{flip_last_hex, parse_raw, RawRequest};
use time::OffsetDateTime;

const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn suite_dir() -> PathBuf {
    let dir = common::testdata_dir().join("sigv4/v4");
    assert!(dir.is_dir(), "AWS SigV4 suite missing at {}", dir.display());
    dir
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(suite_dir())
        .expect("read suite dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 40, "the v4 suite has 40 cases");
    cases
}

fn read(dir: &Path, file: &str) -> String {
    let path = dir.join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_bytes(dir: &Path, file: &str) -> Vec<u8> {
    let path = dir.join(file);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An expected-output file without its trailing newline (some files have one, some not; none of
/// the expected values ends in one).
fn expected(dir: &Path, file: &str) -> String {
    read(dir, file).trim_end_matches(['\n', '\r']).to_owned()
}

#[derive(Debug)]
struct Context {
    creds: Credentials,
    region: String,
    service: String,
    time: OffsetDateTime,
    normalize: bool,
    sign_body: bool,
    omit_token: bool,
    expires: u64,
}

impl Context {
    fn load(dir: &Path) -> Context {
        let v: serde_json::Value = serde_json::from_str(&read(dir, "context.json")).unwrap();
        let c = &v["credentials"];
        let time = time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        Context {
            creds: Credentials {
                access_key_id: c["access_key_id"].as_str().unwrap().to_owned(),
                secret_access_key: c["secret_access_key"].as_str().unwrap().to_owned(),
                session_token: c["token"].as_str().map(str::to_owned),
            },
            region: v["region"].as_str().unwrap().to_owned(),
            service: v["service"].as_str().unwrap().to_owned(),
            time,
            normalize: v["normalize"].as_bool().unwrap(),
            sign_body: v["sign_body"].as_bool().unwrap(),
            omit_token: v["omit_session_token"].as_bool().unwrap_or(false),
            expires: v["expiration_in_seconds"].as_u64().unwrap(),
        }
    }

    fn day(&self) -> String {
        amz_date(self.time)[..8].to_owned()
    }

    fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.day(),
            self.region,
            self.service
        )
    }

    fn options(&self) -> SignOptions {
        SignOptions {
            normalize_path: self.normalize,
            headers: HeaderSelection::All,
            add_content_sha256: self.sign_body,
            session_token: if self.omit_token {
                SessionTokenMode::AppendedAfterSigning
            } else {
                SessionTokenMode::Signed
            },
        }
    }

    fn config<'a>(&self, regions: &'a [String], service: &'a str) -> VerifyConfig<'a> {
        VerifyConfig {
            regions,
            service,
            max_skew: Duration::from_secs(300),
            now: self.time,
            normalize_path: self.normalize,
            allow_unsigned_session_token: self.omit_token,
        }
    }
}

/// `request.txt` of a case, with the request target as it goes on the wire, i.e. as in the signed
/// requests. They differ in one case only: `get-space-normalized` writes the path of
/// `request.txt` pre-encoded (`/example%20space/`) while its signed requests and expected canonical
/// request are for the literal `/example space/`; a wire path of `%20` would be double-encoded to
/// `%2520` by every non-S3 signer (botocore included).
fn load_request(dir: &Path) -> RawRequest {
    let mut raw = parse_raw(&read_bytes(dir, "request.txt"));
    let signed = parse_raw(&read_bytes(dir, "header-signed-request.txt"));
    if signed.target != raw.target {
        assert!(dir.ends_with("get-space-normalized"), "{}", dir.display());
        assert_eq!(raw.target, "/example%20space/");
        raw.target = signed.target;
    }
    raw
}

fn lower_names(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect()
}

fn normalized_multiset(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    v.sort();
    v
}

/// Removes one query parameter from a request target (test helper for the token appended after
/// signing).
fn without_param(target: &str, name: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split_once('=').map_or(*p, |(n, _)| n) != name)
        .collect();
    format!("{path}?{}", kept.join("&"))
}

/// Everything an error may show must be free of the secret and of the signing key.
fn assert_no_secret(err: &SigV4Error, ctx: &Context) {
    let key = hex::encode(signing_key(
        &ctx.creds.secret_access_key,
        &ctx.day(),
        &ctx.region,
        &ctx.service,
    ));
    let shown = format!("{err}\n{err:?}\n{}", err.detailed_message());
    assert!(
        !shown.contains(&ctx.creds.secret_access_key),
        "secret leaked: {shown}"
    );
    assert!(!shown.contains(&key), "signing key leaked: {shown}");
}

#[test]
fn every_case_is_covered() {
    let mut with_context = 0;
    for dir in cases() {
        assert!(dir.join("request.txt").is_file(), "{}", dir.display());
        assert!(
            dir.join("header-canonical-request.txt").is_file(),
            "{}",
            dir.display()
        );
        if dir.join("context.json").is_file() {
            with_context += 1;
            for f in [
                "header-string-to-sign.txt",
                "header-signature.txt",
                "header-signed-request.txt",
                "query-canonical-request.txt",
                "query-string-to-sign.txt",
                "query-signature.txt",
                "query-signed-request.txt",
            ] {
                assert!(dir.join(f).is_file(), "{}/{f}", dir.display());
            }
        }
    }
    assert_eq!(with_context, 38);
}

/// Header variant: canonical request, string to sign and signature byte for byte, then
/// `sign_with` reproduces `header-signed-request.txt`.
#[test]
fn header_signing_matches_suite() {
    for dir in cases() {
        if !dir.join("context.json").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = Context::load(&dir);
        let raw = load_request(&dir);
        let date = amz_date(ctx.time);

        // Independent construction of what is signed.
        let mut headers = raw.headers.clone();
        headers.push(("X-Amz-Date".into(), date.clone()));
        if ctx.sign_body {
            headers.push(("x-amz-content-sha256".into(), hex_sha256(&raw.body)));
        }
        if let (Some(token), false) = (&ctx.creds.session_token, ctx.omit_token) {
            headers.push(("X-Amz-Security-Token".into(), token.clone()));
        }
        let req = airlock_sigv4::Request {
            headers: &headers,
            ..raw.as_request()
        };
        let creq = canonical_request(
            &req,
            &lower_names(&headers),
            ctx.normalize,
            &hex_sha256(&raw.body),
        )
        .unwrap();
        assert_eq!(
            creq,
            expected(&dir, "header-canonical-request.txt"),
            "{name}"
        );
        let sts = string_to_sign(&date, &ctx.scope(), &creq);
        assert_eq!(sts, expected(&dir, "header-string-to-sign.txt"), "{name}");
        let key = signing_key(
            &ctx.creds.secret_access_key,
            &ctx.day(),
            &ctx.region,
            &ctx.service,
        );
        let sig = signature(&key, &sts);
        assert_eq!(sig, expected(&dir, "header-signature.txt"), "{name}");

        // The library signer produces the same signed request.
        let added = sign_with(
            &raw.as_request(),
            &ctx.creds,
            &ctx.region,
            &ctx.service,
            ctx.time,
            &ctx.options(),
        )
        .unwrap();
        let signed = parse_raw(&read_bytes(&dir, "header-signed-request.txt"));
        let mut ours = raw.headers.clone();
        ours.extend(added.iter().cloned());
        assert_eq!(
            normalized_multiset(&ours),
            normalized_multiset(&signed.headers),
            "{name}"
        );
        assert_eq!(signed.target, raw.target, "{name}");
        assert_eq!(signed.body, raw.body, "{name}");
    }
}

/// Query variant: canonical request, string to sign and signature byte for byte, and `presign`
/// reproduces the request line of `query-signed-request.txt` exactly.
#[test]
fn query_signing_matches_suite() {
    for dir in cases() {
        if !dir.join("context.json").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = Context::load(&dir);
        let raw = load_request(&dir);
        let signed = parse_raw(&read_bytes(&dir, "query-signed-request.txt"));

        let target = presign(
            &raw.as_request(),
            &ctx.creds,
            &ctx.region,
            &ctx.service,
            ctx.time,
            ctx.expires,
            &ctx.options(),
        )
        .unwrap();
        assert_eq!(target, signed.target, "{name}");
        assert_eq!(
            normalized_multiset(&raw.headers),
            normalized_multiset(&signed.headers),
            "{name}"
        );

        // Recompute from the signed request itself (X-Amz-Signature is left out by the
        // canonicalizer; a token appended after signing is removed here).
        let signed_target = if ctx.omit_token {
            without_param(&signed.target, "X-Amz-Security-Token")
        } else {
            signed.target.clone()
        };
        let req = airlock_sigv4::Request {
            path_and_query: &signed_target,
            ..signed.as_request()
        };
        let creq = canonical_request(
            &req,
            &lower_names(&raw.headers),
            ctx.normalize,
            &hex_sha256(&raw.body),
        )
        .unwrap();
        assert_eq!(
            creq,
            expected(&dir, "query-canonical-request.txt"),
            "{name}"
        );
        let sts = string_to_sign(&amz_date(ctx.time), &ctx.scope(), &creq);
        assert_eq!(sts, expected(&dir, "query-string-to-sign.txt"), "{name}");
        let key = signing_key(
            &ctx.creds.secret_access_key,
            &ctx.day(),
            &ctx.region,
            &ctx.service,
        );
        assert_eq!(
            signature(&key, &sts),
            expected(&dir, "query-signature.txt"),
            "{name}"
        );
    }
}

/// The two cases without `context.json` (`double-encode-path`, `double-url-encode`) only ship the
/// canonical request (and, for one, the string to sign and a signed request).
#[test]
fn double_encoding_cases_match_suite() {
    // double-encode-path: canonical request only. Its files disagree on the date: request.txt and
    // the signed request say 20150830T123600Z, the canonical request 20210511T154045Z (the signed
    // request is also for an unknown key), so the date of the canonical request is used and the
    // signed request cannot be verified.
    let dir = suite_dir().join("double-encode-path");
    let mut raw = parse_raw(&read_bytes(&dir, "request.txt"));
    assert_eq!(raw.header("x-amz-date"), Some("20150830T123600Z"));
    raw.map_header("x-amz-date", |_| "20210511T154045Z".to_owned());
    let creq = canonical_request(
        &raw.as_request(),
        &lower_names(&raw.headers),
        true,
        &hex_sha256(&raw.body),
    )
    .unwrap();
    assert_eq!(creq, expected(&dir, "header-canonical-request.txt"));
    assert!(creq.contains("\n/test/%40connections/JBDvjfGEIAMCERw%253D\n"));

    // double-url-encode: canonical request, string to sign, and the signed request verifies with
    // the suite's usual secret in us-east-2 / lambda.
    let dir = suite_dir().join("double-url-encode");
    let raw = parse_raw(&read_bytes(&dir, "request.txt"));
    let creq = canonical_request(
        &raw.as_request(),
        &lower_names(&raw.headers),
        true,
        &hex_sha256(&raw.body),
    )
    .unwrap();
    assert_eq!(creq, expected(&dir, "header-canonical-request.txt"));
    let date = raw.header("x-amz-date").unwrap().to_owned();
    let sts = string_to_sign(&date, "20210511/us-east-2/lambda/aws4_request", &creq);
    assert_eq!(sts, expected(&dir, "header-string-to-sign.txt"));

    let signed = parse_raw(&read_bytes(&dir, "header-signed-request.txt"));
    let parsed = parse(&signed.as_request()).unwrap();
    assert_eq!(parsed.region, "us-east-2");
    assert_eq!(parsed.service, "lambda");
    let regions = vec!["us-east-2".to_owned()];
    let mut cfg = VerifyConfig::new(&regions, "lambda", parse_amz_date(&date).unwrap());
    cfg.normalize_path = true;
    verify(&signed.as_request(), &parsed, EXAMPLE_SECRET, &cfg).unwrap();
}

/// Which variant of a signed request a negative test tampers with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Header,
    Query,
}

struct Signed {
    variant: Variant,
    raw: RawRequest,
}

impl Signed {
    fn load(dir: &Path, variant: Variant) -> Signed {
        let file = match variant {
            Variant::Header => "header-signed-request.txt",
            Variant::Query => "query-signed-request.txt",
        };
        Signed {
            variant,
            raw: parse_raw(&read_bytes(dir, file)),
        }
    }

    /// Replaces text in the signature-carrying part (Authorization header or query).
    fn edit_auth(&self, from: &str, to: &str) -> RawRequest {
        let mut raw = self.raw.clone();
        match self.variant {
            Variant::Header => {
                let before = raw.header("authorization").unwrap().to_owned();
                raw.map_header("authorization", |v| v.replacen(from, to, 1));
                assert_ne!(
                    raw.header("authorization").unwrap(),
                    before,
                    "edit {from} -> {to}"
                );
            }
            Variant::Query => {
                let before = raw.target.clone();
                raw.target = raw.target.replacen(from, to, 1);
                assert_ne!(raw.target, before, "edit {from} -> {to}");
            }
        }
        raw
    }

    /// The credential as written in the signed request.
    fn credential(&self, ctx: &Context) -> String {
        let plain = format!("{}/{}", ctx.creds.access_key_id, ctx.scope());
        match self.variant {
            Variant::Header => plain,
            Variant::Query => uri_encode(plain.as_bytes(), true),
        }
    }

    fn with_scope(
        &self,
        ctx: &Context,
        day: &str,
        region: &str,
        service: &str,
        term: &str,
    ) -> RawRequest {
        let new = format!(
            "{}/{day}/{region}/{service}/{term}",
            ctx.creds.access_key_id
        );
        let new = match self.variant {
            Variant::Header => new,
            Variant::Query => uri_encode(new.as_bytes(), true),
        };
        self.edit_auth(&self.credential(ctx), &new)
    }

    /// The request with `host` removed from SignedHeaders.
    fn without_signed_host(&self, parsed: &Parsed) -> RawRequest {
        let others: Vec<&str> = parsed
            .signed_headers
            .iter()
            .map(String::as_str)
            .filter(|h| *h != "host")
            .collect();
        let (from, to) = (parsed.signed_headers.join(";"), others.join(";"));
        match self.variant {
            Variant::Header => self.edit_auth(
                &format!("SignedHeaders={from}"),
                &format!("SignedHeaders={to}"),
            ),
            Variant::Query => self.edit_auth(
                &format!("X-Amz-SignedHeaders={}", uri_encode(from.as_bytes(), true)),
                &format!("X-Amz-SignedHeaders={}", uri_encode(to.as_bytes(), true)),
            ),
        }
    }

    fn flipped_signature(&self, parsed: &Parsed) -> RawRequest {
        self.edit_auth(&parsed.signature, &flip_last_hex(&parsed.signature))
    }
}

fn check(raw: &RawRequest, secret: &str, cfg: &VerifyConfig) -> Result<(), SigV4Error> {
    let parsed = parse(&raw.as_request())?;
    verify(&raw.as_request(), &parsed, secret, cfg)
}

fn expect_err(
    what: &str,
    result: Result<(), SigV4Error>,
    ctx: &Context,
    matches: impl Fn(&SigV4Error) -> bool,
    code: &str,
) {
    match result {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => {
            assert!(matches(&e), "{what}: unexpected error {e:?}");
            assert_eq!(e.aws_code(), code, "{what}: {e:?}");
            assert_no_secret(&e, ctx);
        }
    }
}

fn is_mismatch(e: &SigV4Error) -> bool {
    matches!(e, SigV4Error::SignatureMismatch { .. })
}

const INVALID: &str = "InvalidSignatureException";
const INCOMPLETE: &str = "IncompleteSignatureException";

/// Every signed request of the suite verifies at its time; every tampering is refused.
#[test]
fn suite_signed_requests_verify_and_tampering_is_refused() {
    let mut checked = 0;
    for dir in cases() {
        if !dir.join("context.json").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = Context::load(&dir);
        let secret = ctx.creds.secret_access_key.clone();
        let regions = vec![ctx.region.clone()];
        let cfg = ctx.config(&regions, &ctx.service);

        for variant in [Variant::Header, Variant::Query] {
            let what = |s: &str| format!("{name} {variant:?}: {s}");
            let signed = Signed::load(&dir, variant);
            let req = signed.raw.as_request();

            // Positive.
            let parsed = parse(&req).unwrap_or_else(|e| panic!("{}: {e:?}", what("parse")));
            assert_eq!(parsed.access_key_id, ctx.creds.access_key_id, "{name}");
            assert_eq!(parsed.region, ctx.region);
            assert_eq!(parsed.service, ctx.service);
            assert_eq!(parsed.scope_date, ctx.day());
            assert_eq!(parsed.amz_date, amz_date(ctx.time));
            assert_eq!(parsed.presigned, variant == Variant::Query);
            assert_eq!(
                parsed.expires,
                (variant == Variant::Query).then_some(ctx.expires)
            );
            assert_eq!(parsed.session_token, ctx.creds.session_token);
            assert!(parsed.signed_headers.contains(&"host".to_owned()));
            verify(&req, &parsed, &secret, &cfg)
                .unwrap_or_else(|e| panic!("{}: {e:?}", what("verify")));
            checked += 1;

            // An unsigned session token is refused unless allowed.
            if ctx.omit_token {
                let strict = VerifyConfig {
                    allow_unsigned_session_token: false,
                    ..cfg
                };
                let r = verify(&req, &parsed, &secret, &strict);
                match variant {
                    Variant::Header => expect_err(
                        &what("unsigned token"),
                        r,
                        &ctx,
                        |e| *e == SigV4Error::HeaderNotSigned("x-amz-security-token".into()),
                        INCOMPLETE,
                    ),
                    Variant::Query => {
                        expect_err(&what("unsigned token"), r, &ctx, is_mismatch, INVALID)
                    }
                }
            }

            // Wrong secret.
            expect_err(
                &what("wrong secret"),
                verify(
                    &req,
                    &parsed,
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                    &cfg,
                ),
                &ctx,
                is_mismatch,
                INVALID,
            );

            // Flipped signature.
            expect_err(
                &what("flipped signature"),
                check(&signed.flipped_signature(&parsed), &secret, &cfg),
                &ctx,
                is_mismatch,
                INVALID,
            );

            // Changed body.
            let mut raw = signed.raw.clone();
            raw.body.push(b'x');
            let body_error = |e: &SigV4Error| {
                if ctx.sign_body && variant == Variant::Header {
                    *e == SigV4Error::PayloadHashMismatch
                } else {
                    is_mismatch(e)
                }
            };
            expect_err(
                &what("body"),
                check(&raw, &secret, &cfg),
                &ctx,
                body_error,
                INVALID,
            );

            // Changed value of each signed header.
            for header in &parsed.signed_headers {
                let mut raw = signed.raw.clone();
                match header.as_str() {
                    // The date is checked against the scope first; the hash against the body.
                    "x-amz-date" => {
                        raw.map_header(header, |_| amz_date(ctx.time + Duration::from_secs(1)))
                    }
                    "x-amz-content-sha256" => continue,
                    _ => raw.map_header(header, |v| format!("{v}x")),
                }
                expect_err(
                    &what(&format!("changed {header}")),
                    check(&raw, &secret, &cfg),
                    &ctx,
                    is_mismatch,
                    INVALID,
                );
            }

            // Clock.
            let at = |secs: i64| VerifyConfig {
                now: ctx.time + time::Duration::seconds(secs),
                ..cfg
            };
            match variant {
                Variant::Header => {
                    expect_err(
                        &what("+6 min"),
                        verify(&req, &parsed, &secret, &at(360)),
                        &ctx,
                        |e| matches!(e, SigV4Error::SignatureExpired { .. }),
                        INVALID,
                    );
                    verify(&req, &parsed, &secret, &at(300)).unwrap();
                    verify(&req, &parsed, &secret, &at(-300)).unwrap();
                }
                Variant::Query => {
                    verify(&req, &parsed, &secret, &at(360)).unwrap();
                    verify(&req, &parsed, &secret, &at(3600)).unwrap();
                    expect_err(
                        &what("after expiry"),
                        verify(&req, &parsed, &secret, &at(3601)),
                        &ctx,
                        |e| matches!(e, SigV4Error::PresignedUrlExpired { .. }),
                        INVALID,
                    );
                }
            }
            expect_err(
                &what("-6 min"),
                verify(&req, &parsed, &secret, &at(-360)),
                &ctx,
                |e| matches!(e, SigV4Error::SignatureNotYetCurrent { .. }),
                INVALID,
            );

            // Region and service the server does not serve.
            let other_regions = vec!["eu-west-1".to_owned(), "us-west-2".to_owned()];
            expect_err(
                &what("region"),
                verify(
                    &req,
                    &parsed,
                    &secret,
                    &VerifyConfig {
                        regions: &other_regions,
                        ..cfg
                    },
                ),
                &ctx,
                |e| *e == SigV4Error::WrongRegion(ctx.region.clone()),
                INVALID,
            );
            expect_err(
                &what("service"),
                verify(
                    &req,
                    &parsed,
                    &secret,
                    &VerifyConfig {
                        service: "ssm",
                        ..cfg
                    },
                ),
                &ctx,
                |e| {
                    *e == SigV4Error::WrongService {
                        expected: "ssm".into(),
                        got: ctx.service.clone(),
                    }
                },
                INVALID,
            );

            // Tampered scope: date, region (served, but not the one signed), service, terminator.
            let day = ctx.day();
            expect_err(
                &what("scope date"),
                check(
                    &signed.with_scope(&ctx, "20150831", &ctx.region, &ctx.service, "aws4_request"),
                    &secret,
                    &cfg,
                ),
                &ctx,
                |e| {
                    *e == SigV4Error::ScopeDateMismatch {
                        scope_date: "20150831".into(),
                        request_date: day.clone(),
                        source_name: match variant {
                            Variant::Header => "x-amz-date".into(),
                            Variant::Query => "X-Amz-Date".into(),
                        },
                    }
                },
                INVALID,
            );
            let both = vec![ctx.region.clone(), "us-west-2".to_owned()];
            expect_err(
                &what("scope region"),
                check(
                    &signed.with_scope(&ctx, &day, "us-west-2", &ctx.service, "aws4_request"),
                    &secret,
                    &VerifyConfig {
                        regions: &both,
                        ..cfg
                    },
                ),
                &ctx,
                is_mismatch,
                INVALID,
            );
            expect_err(
                &what("scope region not served"),
                check(
                    &signed.with_scope(&ctx, &day, "us-west-2", &ctx.service, "aws4_request"),
                    &secret,
                    &cfg,
                ),
                &ctx,
                |e| *e == SigV4Error::WrongRegion("us-west-2".into()),
                INVALID,
            );
            expect_err(
                &what("scope service"),
                check(
                    &signed.with_scope(&ctx, &day, &ctx.region, "ssm", "aws4_request"),
                    &secret,
                    &cfg,
                ),
                &ctx,
                |e| matches!(e, SigV4Error::WrongService { got, .. } if got == "ssm"),
                INVALID,
            );
            expect_err(
                &what("scope terminator"),
                check(
                    &signed.with_scope(&ctx, &day, &ctx.region, &ctx.service, "aws4_requesx"),
                    &secret,
                    &cfg,
                ),
                &ctx,
                |e| *e == SigV4Error::WrongTerminator("aws4_requesx".into()),
                INVALID,
            );

            // Each signed header dropped.
            for header in &parsed.signed_headers {
                let mut raw = signed.raw.clone();
                raw.remove_header(header);
                let r = check(&raw, &secret, &cfg);
                if header == "x-amz-date" {
                    expect_err(
                        &what("no x-amz-date"),
                        r,
                        &ctx,
                        |e| matches!(e, SigV4Error::IncompleteSignature(m) if m.contains("'X-Amz-Date' or a 'Date' header")),
                        INCOMPLETE,
                    );
                } else {
                    expect_err(
                        &what(&format!("dropped {header}")),
                        r,
                        &ctx,
                        |e| *e == SigV4Error::SignedHeaderMissing(header.clone()),
                        INCOMPLETE,
                    );
                }
            }

            // host left out of SignedHeaders.
            let unsigned_host = signed.without_signed_host(&parsed);
            expect_err(
                &what("host not signed"),
                check(&unsigned_host, &secret, &cfg),
                &ctx,
                |e| *e == SigV4Error::HostNotSigned,
                INCOMPLETE,
            );

            // An x-amz-* header added after signing.
            let mut raw = signed.raw.clone();
            raw.headers
                .push(("X-Amz-Target".into(), "AmazonSSM.StartSession".into()));
            expect_err(
                &what("unsigned x-amz header"),
                check(&raw, &secret, &cfg),
                &ctx,
                |e| *e == SigV4Error::HeaderNotSigned("x-amz-target".into()),
                INCOMPLETE,
            );

            // Both authentication methods at once.
            if variant == Variant::Query {
                let mut raw = signed.raw.clone();
                let header = Signed::load(&dir, Variant::Header);
                raw.headers.push((
                    "Authorization".into(),
                    header.raw.header("authorization").unwrap().into(),
                ));
                expect_err(
                    &what("both methods"),
                    check(&raw, &secret, &cfg),
                    &ctx,
                    |e| *e == SigV4Error::ConflictingAuthentication,
                    INCOMPLETE,
                );
            }
        }
    }
    assert_eq!(checked, 76);
}

/// `x-amz-content-sha256` rules on the suite's signed-body case.
#[test]
fn content_sha256_rules() {
    let dir = suite_dir().join("post-x-www-form-urlencoded");
    let ctx = Context::load(&dir);
    let regions = vec![ctx.region.clone()];
    let cfg = ctx.config(&regions, &ctx.service);
    let signed = Signed::load(&dir, Variant::Header);
    let secret = &ctx.creds.secret_access_key;

    // Header and body changed together (the hash matches the body, not the signature).
    let mut raw = signed.raw.clone();
    raw.body = b"Param1=value2".to_vec();
    raw.map_header("x-amz-content-sha256", |_| hex_sha256(b"Param1=value2"));
    expect_err(
        "re-hashed body",
        check(&raw, secret, &cfg),
        &ctx,
        is_mismatch,
        INVALID,
    );

    for literal in [
        "UNSIGNED-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    ] {
        let mut raw = signed.raw.clone();
        raw.map_header("x-amz-content-sha256", |_| literal.to_owned());
        expect_err(
            literal,
            check(&raw, secret, &cfg),
            &ctx,
            |e| *e == SigV4Error::UnsignedPayloadRefused,
            INVALID,
        );
    }

    // Present but not signed.
    let raw = signed.edit_auth("x-amz-content-sha256;", "");
    expect_err(
        "unsigned content hash",
        check(&raw, secret, &cfg),
        &ctx,
        |e| *e == SigV4Error::HeaderNotSigned("x-amz-content-sha256".into()),
        INCOMPLETE,
    );
}
