//! Parsing failures, AWS error codes and AWS message wording (policy-and-api.md §4.2 and §5.2),
//! the `Date` header fallback, and that secrets never show in `Debug` output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_sigv4::{
    amz_date, canonical_request, hex_sha256, parse, sign, signature, signing_key, string_to_sign,
    verify, Credentials, Request, SigV4Error, VerifyConfig,
};
use time::macros::datetime;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn parse_with(
    target: &str,
    headers: &[(String, String)],
) -> Result<airlock_sigv4::Parsed, SigV4Error> {
    parse(&Request {
        method: "POST",
        path_and_query: target,
        headers,
        body: b"{}",
    })
}

#[test]
fn missing_authentication() {
    let err = parse_with("/", &[h("Host", "x"), h("X-Amz-Date", "20150830T123600Z")]).unwrap_err();
    assert_eq!(err, SigV4Error::MissingAuthentication);
    assert_eq!(err.aws_code(), "MissingAuthenticationTokenException");
    assert_eq!(err.to_string(), "Missing Authentication Token");
    // A lone X-Amz-Date query parameter is not query authentication.
    let err = parse_with("/?X-Amz-Date=20150830T123600Z", &[h("Host", "x")]).unwrap_err();
    assert_eq!(err, SigV4Error::MissingAuthentication);
}

#[test]
fn incomplete_header_messages_use_aws_wording() {
    let err = parse_with(
        "/",
        &[
            h("Host", "x"),
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", "AWS xxxxx:yyyyyyy"),
        ],
    )
    .unwrap_err();
    assert_eq!(err.aws_code(), "IncompleteSignatureException");
    assert_eq!(
        err.to_string(),
        "Authorization header requires 'Credential' parameter. Authorization header requires \
         'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. \
         Authorization=AWS xxxxx:yyyyyyy"
    );

    let err = parse_with("/", &[h("Authorization", "eyJ0eXAi.token")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Authorization header requires 'Credential' parameter. Authorization header requires \
         'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. \
         Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. \
         Authorization=eyJ0eXAi.token"
    );

    let value = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request, \
                 SignedHeaders=host;x-amz-date";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", value),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SigV4Error::IncompleteSignature(format!(
            "Authorization header requires 'Signature' parameter. Authorization={value}"
        ))
    );

    let value = "AWS4-HMAC-SHA256 Credential= AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", value),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "'AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request' not a valid key=value pair \
             (missing equal-sign) in Authorization header: '{value}'."
        )
    );

    let value = "AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20150830/ssm/aws4_request, \
                 SignedHeaders=host, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", value),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Unsupported AWS 'algorithm': 'AWS4-ECDSA-P256-SHA256'"
    );

    let value = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, \
                 SignedHeaders=host, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", value),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(err, SigV4Error::IncompleteSignature(ref m) if m.contains("Credential is mal-formed"))
    );

    let value = "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, \
                 Credential=B/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", value),
        ],
    )
    .unwrap_err();
    assert_eq!(err.aws_code(), "IncompleteSignatureException");

    let ok = "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "20150830T123600Z"),
            h("Authorization", ok),
            h("authorization", ok),
        ],
    )
    .unwrap_err();
    assert_eq!(err.aws_code(), "IncompleteSignatureException");
}

#[test]
fn bad_dates() {
    let ok = "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=abc";
    let err = parse_with(
        "/",
        &[
            h("X-Amz-Date", "2015-08-30T12:36:00Z"),
            h("Authorization", ok),
        ],
    )
    .unwrap_err();
    assert_eq!(err, SigV4Error::BadDate("2015-08-30T12:36:00Z".into()));
    assert_eq!(err.aws_code(), "IncompleteSignatureException");
    assert_eq!(
        err.to_string(),
        "Date must be in ISO-8601 'basic format'. Got '2015-08-30T12:36:00Z'. See \
         http://en.wikipedia.org/wiki/ISO_8601"
    );
    let err = parse_with("/", &[h("Date", "yesterday"), h("Authorization", ok)]).unwrap_err();
    assert_eq!(err, SigV4Error::BadDate("yesterday".into()));
}

#[test]
fn presigned_parse_errors() {
    let base = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=A%2F20150830%2Fus-east-1%2Fssm%2Faws4_request\
                &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";
    let headers = [h("Host", "x")];

    let err = parse_with(&format!("/?{base}"), &headers).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, \
         X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
    );
    assert_eq!(err.aws_code(), "IncompleteSignatureException");

    let parsed = parse_with(&format!("/?{base}&X-Amz-Expires=60"), &headers).unwrap();
    assert!(parsed.presigned);
    assert_eq!(parsed.access_key_id, "A");
    assert_eq!(parsed.expires, Some(60));

    for (extra, needle) in [
        ("&X-Amz-Expires=604801", "less than a week"),
        ("&X-Amz-Expires=-1", "should be a number"),
        ("&X-Amz-Expires=60&X-Amz-Expires=61", "more than one"),
    ] {
        let err = parse_with(&format!("/?{base}{extra}"), &headers).unwrap_err();
        assert!(
            matches!(err, SigV4Error::IncompleteSignature(ref m) if m.contains(needle)),
            "{extra}: {err:?}"
        );
    }
    let wrong_alg = base.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1") + "&X-Amz-Expires=60";
    let err = parse_with(&format!("/?{wrong_alg}"), &headers).unwrap_err();
    assert_eq!(
        err.to_string(),
        "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""
    );

    let mut both = headers.to_vec();
    both.push(h("Authorization", "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=abc"));
    let err = parse_with(&format!("/?{base}&X-Amz-Expires=60"), &both).unwrap_err();
    assert_eq!(err, SigV4Error::ConflictingAuthentication);
}

fn regions() -> Vec<String> {
    vec!["us-east-1".to_owned()]
}

fn signed_at(t: time::OffsetDateTime) -> Vec<(String, String)> {
    let headers = vec![
        h("Host", "localhost:8080"),
        h("X-Amz-Target", "AmazonSSM.StartSession"),
    ];
    let req = Request {
        method: "POST",
        path_and_query: "/",
        headers: &headers,
        body: b"{}",
    };
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SECRET.into(),
        session_token: None,
    };
    let mut all = headers.clone();
    all.extend(sign(&req, &creds, "us-east-1", "ssm", t).unwrap());
    all
}

fn verify_at(headers: &[(String, String)], now: time::OffsetDateTime) -> Result<(), SigV4Error> {
    let req = Request {
        method: "POST",
        path_and_query: "/",
        headers,
        body: b"{}",
    };
    let parsed = parse(&req)?;
    let regions = regions();
    verify(
        &req,
        &parsed,
        SECRET,
        &VerifyConfig::new(&regions, "ssm", now),
    )
}

#[test]
fn clock_skew_messages() {
    let headers = signed_at(datetime!(2026-06-23 12:00:00 UTC));
    let err = verify_at(&headers, datetime!(2026-06-23 12:10:00 UTC)).unwrap_err();
    assert_eq!(err.aws_code(), "InvalidSignatureException");
    assert_eq!(
        err.to_string(),
        "Signature expired: 20260623T120000Z is now earlier than 20260623T120500Z \
         (20260623T121000Z - 5 min.)"
    );
    let headers = signed_at(datetime!(2026-06-23 12:20:00 UTC));
    let err = verify_at(&headers, datetime!(2026-06-23 12:10:00 UTC)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Signature not yet current: 20260623T122000Z is still later than 20260623T121500Z \
         (20260623T121000Z + 5 min.)"
    );
    // Exactly at the limits is accepted.
    let headers = signed_at(datetime!(2026-06-23 12:05:00 UTC));
    verify_at(&headers, datetime!(2026-06-23 12:10:00 UTC)).unwrap();
    verify_at(&headers, datetime!(2026-06-23 12:00:00 UTC)).unwrap();
}

#[test]
fn scope_messages() {
    assert_eq!(
        SigV4Error::WrongRegion("x".into()).to_string(),
        "Credential should be scoped to a valid Region, not 'x'"
    );
    assert_eq!(
        SigV4Error::WrongService {
            expected: "ssm".into(),
            got: "ec2".into()
        }
        .to_string(),
        "Credential should be scoped to correct service: 'ssm'"
    );
    assert_eq!(
        SigV4Error::WrongTerminator("aws4_requestx".into()).to_string(),
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws4_requestx'"
    );
    assert_eq!(
        SigV4Error::ScopeDateMismatch {
            scope_date: "20150831".into(),
            request_date: "20150830".into(),
            source_name: "x-amz-date".into()
        }
        .to_string(),
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: \
         '20150831' != '20150830', from 'x-amz-date'."
    );
}

#[test]
fn mismatch_message_and_details() {
    let mut headers = signed_at(datetime!(2026-06-23 12:00:00 UTC));
    headers[1].1 = "AmazonSSM.TerminateSession".into();
    let err = verify_at(&headers, datetime!(2026-06-23 12:00:00 UTC)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The request signature we calculated does not match the signature you provided. Check your \
         AWS Secret Access Key and signing method. Consult the service documentation for details."
    );
    assert_eq!(err.aws_code(), "InvalidSignatureException");
    let details = err.detailed_message();
    assert!(details.contains("x-amz-target:AmazonSSM.TerminateSession"));
    assert!(details
        .contains("The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20260623T120000Z"));
    assert!(!details.contains(SECRET));
}

#[test]
fn every_code() {
    let cases = [
        (
            SigV4Error::MissingAuthentication,
            "MissingAuthenticationTokenException",
        ),
        (
            SigV4Error::IncompleteSignature(String::new()),
            "IncompleteSignatureException",
        ),
        (
            SigV4Error::ConflictingAuthentication,
            "IncompleteSignatureException",
        ),
        (
            SigV4Error::BadDate(String::new()),
            "IncompleteSignatureException",
        ),
        (SigV4Error::HostNotSigned, "IncompleteSignatureException"),
        (
            SigV4Error::HeaderNotSigned(String::new()),
            "IncompleteSignatureException",
        ),
        (
            SigV4Error::SignedHeaderMissing(String::new()),
            "IncompleteSignatureException",
        ),
        (
            SigV4Error::WrongRegion(String::new()),
            "InvalidSignatureException",
        ),
        (
            SigV4Error::WrongTerminator(String::new()),
            "InvalidSignatureException",
        ),
        (SigV4Error::PayloadHashMismatch, "InvalidSignatureException"),
        (
            SigV4Error::UnsignedPayloadRefused,
            "InvalidSignatureException",
        ),
        (
            SigV4Error::UnrecognizedClient,
            "UnrecognizedClientException",
        ),
        (SigV4Error::ExpiredToken, "ExpiredTokenException"),
    ];
    for (err, code) in cases {
        assert_eq!(err.aws_code(), code, "{err:?}");
    }
    assert_eq!(
        SigV4Error::UnrecognizedClient.to_string(),
        "The security token included in the request is invalid."
    );
    assert_eq!(
        SigV4Error::ExpiredToken.to_string(),
        "The security token included in the request is expired"
    );
    assert_eq!(
        SigV4Error::HostNotSigned.to_string(),
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    );
}

/// Without `X-Amz-Date`, the HTTP `Date` header dates the request.
#[test]
fn date_header_fallback() {
    let t = datetime!(2015-08-30 12:36:00 UTC);
    let mut headers = vec![
        h("Host", "example.com"),
        h("Date", "Sun, 30 Aug 2015 12:36:00 GMT"),
    ];
    let req = Request {
        method: "GET",
        path_and_query: "/",
        headers: &headers,
        body: b"",
    };
    let names = vec!["date".to_owned(), "host".to_owned()];
    let creq = canonical_request(&req, &names, true, &hex_sha256(b"")).unwrap();
    let sts = string_to_sign(&amz_date(t), "20150830/us-east-1/ssm/aws4_request", &creq);
    let sig = signature(&signing_key(SECRET, "20150830", "us-east-1", "ssm"), &sts);
    headers.push(h(
        "Authorization",
        &format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request,SignedHeaders=date;host,Signature={sig}"
        ),
    ));
    let req = Request {
        method: "GET",
        path_and_query: "/",
        headers: &headers,
        body: b"",
    };
    let parsed = parse(&req).unwrap();
    assert_eq!(parsed.amz_date, "20150830T123600Z");
    assert_eq!(parsed.date(), t);
    let regions = regions();
    verify(
        &req,
        &parsed,
        SECRET,
        &VerifyConfig::new(&regions, "ssm", t),
    )
    .unwrap();

    // The scope date must match the Date header's day.
    let tampered: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), v.replace("/20150830/", "/20150829/")))
        .collect();
    let req = Request {
        headers: &tampered,
        ..req
    };
    let parsed = parse(&req).unwrap();
    let err = verify(
        &req,
        &parsed,
        SECRET,
        &VerifyConfig::new(&regions, "ssm", t),
    )
    .unwrap_err();
    assert_eq!(
        err,
        SigV4Error::ScopeDateMismatch {
            scope_date: "20150829".into(),
            request_date: "20150830".into(),
            source_name: "date".into()
        }
    );
}

#[test]
fn debug_output_hides_secrets() {
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SECRET.into(),
        session_token: Some("the-session-token".into()),
    };
    let shown = format!("{creds:?}");
    assert!(shown.contains("AKIDEXAMPLE"));
    assert!(!shown.contains(SECRET));
    assert!(!shown.contains("the-session-token"));
}
