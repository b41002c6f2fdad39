//! Server side: parsing the signature a request carries ([`parse`]) and checking it ([`verify`]).
//!
//! The split lets the server look up the secret (and the session token) by access key ID between
//! the two steps. [`verify`] implements the server rules of policy-and-api.md §4: scope, clock skew,
//! which headers must be signed, `x-amz-content-sha256`, and a constant-time signature comparison.

use std::time::Duration;

use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::canonical::{
    canonical_request_excluding, header_values, hex_sha256, normalize_signed_headers, query_pairs,
    signature, signing_key, single_header, split_target, string_to_sign, ALGORITHM, TERMINATOR,
};
use crate::date::{amz_date, parse_amz_date, parse_http_date, skew_text};
use crate::{Request, SigV4Error};

/// The longest validity a presigned URL may ask for (7 days), as S3 caps it.
pub const MAX_PRESIGNED_EXPIRES: u64 = 604_800;

/// The clock skew AWS JSON services allow, and our default.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

const QUERY_ALGORITHM: &str = "X-Amz-Algorithm";
const QUERY_CREDENTIAL: &str = "X-Amz-Credential";
const QUERY_DATE: &str = "X-Amz-Date";
const QUERY_SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
const QUERY_SIGNATURE: &str = "X-Amz-Signature";
const QUERY_EXPIRES: &str = "X-Amz-Expires";
const QUERY_TOKEN: &str = "X-Amz-Security-Token";

/// What the server learns from a request's signature before it can look up the secret.
///
/// Only [`parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The access key ID of the credential scope: the key to look the secret up by.
    pub access_key_id: String,
    /// `X-Amz-Security-Token` (header, or query parameter when presigned), if sent.
    pub session_token: Option<String>,
    /// The request date as it enters the string to sign, `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: String,
    /// The date of the credential scope, `YYYYMMDD` as sent.
    pub scope_date: String,
    /// The region of the credential scope.
    pub region: String,
    /// The service of the credential scope.
    pub service: String,
    /// The terminator of the credential scope (must be `aws4_request`; checked by [`verify`]).
    pub terminator: String,
    /// SignedHeaders, lower-cased and sorted.
    pub signed_headers: Vec<String>,
    /// The signature as sent.
    pub signature: String,
    /// Whether the request uses query authentication (a presigned URL).
    pub presigned: bool,
    /// `X-Amz-Expires` of a presigned URL, in seconds.
    pub expires: Option<u64>,
    /// The request date.
    date: OffsetDateTime,
    /// Where the date came from, for error messages: `x-amz-date`, `date` or `X-Amz-Date`.
    date_source: &'static str,
}

impl Parsed {
    /// The request date as a time.
    pub fn date(&self) -> OffsetDateTime {
        self.date
    }
}

/// Server settings for [`verify`].
#[derive(Debug, Clone, Copy)]
pub struct VerifyConfig<'a> {
    /// Regions the server accepts in the credential scope.
    pub regions: &'a [String],
    /// The service name the credential scope must carry (`ssm` for the SSM API).
    pub service: &'a str,
    /// Largest accepted difference between the request date and `now`, either way (5 min).
    pub max_skew: Duration,
    /// The server's current time.
    pub now: OffsetDateTime,
    /// Normalize the path when building the canonical request (true for every service but S3).
    pub normalize_path: bool,
    /// Accept an `X-Amz-Security-Token` that is not covered by the signature (off by default).
    pub allow_unsigned_session_token: bool,
}

impl<'a> VerifyConfig<'a> {
    /// A configuration with the defaults: 5 minutes of skew, path normalization on, unsigned
    /// session tokens refused.
    pub fn new(regions: &'a [String], service: &'a str, now: OffsetDateTime) -> Self {
        VerifyConfig {
            regions,
            service,
            max_skew: DEFAULT_MAX_SKEW,
            now,
            normalize_path: true,
            allow_unsigned_session_token: false,
        }
    }
}

/// Reads the signature of `req`: the `Authorization` header, or the presigned query parameters.
///
/// The header is parsed leniently (parts separated by `,` and/or spaces, as botocore writes
/// `, ` and others `,`). Errors: [`SigV4Error::MissingAuthentication`] when there is neither,
/// [`SigV4Error::ConflictingAuthentication`] when there are both,
/// [`SigV4Error::IncompleteSignature`] (with AWS's wording) when either is malformed,
/// [`SigV4Error::BadDate`] when the date does not parse.
pub fn parse(req: &Request) -> Result<Parsed, SigV4Error> {
    let (_, query) = split_target(req.path_and_query);
    let params = query_pairs(query);
    let presigned = params.iter().any(|(name, _)| {
        [QUERY_ALGORITHM, QUERY_CREDENTIAL, QUERY_SIGNATURE]
            .iter()
            .any(|p| name.as_slice() == p.as_bytes())
    });
    let authorization = single_header(req.headers, "authorization").map_err(|()| {
        SigV4Error::IncompleteSignature(
            "The request carries more than one Authorization header.".into(),
        )
    })?;
    match (authorization, presigned) {
        (Some(_), true) => Err(SigV4Error::ConflictingAuthentication),
        (Some(value), false) => parse_header(req, value),
        (None, true) => parse_query(&params),
        (None, false) => Err(SigV4Error::MissingAuthentication),
    }
}

fn parse_header(req: &Request, value: &str) -> Result<Parsed, SigV4Error> {
    let value = value.trim();
    let (algorithm, rest) = match value.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((algorithm, rest)) => (algorithm, rest),
        None => (value, ""),
    };

    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    if algorithm == ALGORITHM {
        for part in rest
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|p| !p.is_empty())
        {
            let Some((key, val)) = part.split_once('=') else {
                return Err(SigV4Error::IncompleteSignature(format!(
                    "'{part}' not a valid key=value pair (missing equal-sign) in Authorization \
                     header: '{value}'."
                )));
            };
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => continue,
            };
            if slot.replace(val).is_some() {
                return Err(SigV4Error::IncompleteSignature(format!(
                    "Authorization header has a duplicate '{key}' parameter: '{value}'."
                )));
            }
        }
    } else if algorithm.starts_with("AWS4-") {
        return Err(SigV4Error::IncompleteSignature(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'"
        )));
    }

    let date = header_date(req)?;
    let mut missing = String::new();
    if credential.is_none() {
        missing.push_str("Authorization header requires 'Credential' parameter. ");
    }
    if signature.is_none() {
        missing.push_str("Authorization header requires 'Signature' parameter. ");
    }
    if signed_headers.is_none() {
        missing.push_str("Authorization header requires 'SignedHeaders' parameter. ");
    }
    if date.is_none() {
        missing.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    let (Some(credential), Some(signature), Some(signed_headers), Some(date)) =
        (credential, signature, signed_headers, date)
    else {
        return Err(SigV4Error::IncompleteSignature(format!(
            "{missing}Authorization={value}"
        )));
    };

    let scope = parse_credential(credential).ok_or_else(|| {
        SigV4Error::IncompleteSignature(
            "The authorization header is malformed; the Credential is mal-formed; expecting \
             \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
                .into(),
        )
    })?;
    let session_token = single_header(req.headers, "x-amz-security-token")
        .map_err(|()| {
            SigV4Error::IncompleteSignature(
                "The request carries more than one X-Amz-Security-Token header.".into(),
            )
        })?
        .map(|t| t.trim().to_owned());

    Ok(Parsed {
        access_key_id: scope.access_key_id,
        session_token,
        amz_date: date.amz,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        terminator: scope.terminator,
        signed_headers: split_signed_headers(signed_headers),
        signature: signature.to_owned(),
        presigned: false,
        expires: None,
        date: date.date,
        date_source: date.source,
    })
}

/// The date of a request and where it came from.
struct RequestDate {
    /// As it enters the string to sign, `YYYYMMDD'T'HHMMSS'Z'`.
    amz: String,
    date: OffsetDateTime,
    /// `x-amz-date` or `date`.
    source: &'static str,
}

/// The request date of header authentication: `X-Amz-Date`, else the HTTP `Date` header.
/// `Ok(None)` when there is neither.
fn header_date(req: &Request) -> Result<Option<RequestDate>, SigV4Error> {
    let duplicate = |name: &str| {
        SigV4Error::IncompleteSignature(format!("The request carries more than one {name} header."))
    };
    if let Some(value) =
        single_header(req.headers, "x-amz-date").map_err(|()| duplicate("X-Amz-Date"))?
    {
        let value = value.trim();
        let date = parse_amz_date(value)?;
        return Ok(Some(RequestDate {
            amz: value.to_owned(),
            date,
            source: "x-amz-date",
        }));
    }
    if let Some(value) = single_header(req.headers, "date").map_err(|()| duplicate("Date"))? {
        let date = parse_http_date(value)?;
        return Ok(Some(RequestDate {
            amz: amz_date(date),
            date,
            source: "date",
        }));
    }
    Ok(None)
}

fn parse_query(params: &[(Vec<u8>, Vec<u8>)]) -> Result<Parsed, SigV4Error> {
    let get = |name: &str| -> Result<Option<String>, SigV4Error> {
        let mut values = params
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(SigV4Error::IncompleteSignature(format!(
                "The query string carries more than one '{name}' parameter."
            )));
        }
        first
            .map(|v| {
                String::from_utf8(v.clone()).map_err(|_| {
                    SigV4Error::IncompleteSignature(format!(
                        "The '{name}' query parameter is not valid UTF-8."
                    ))
                })
            })
            .transpose()
    };
    let algorithm = get(QUERY_ALGORITHM)?;
    let credential = get(QUERY_CREDENTIAL)?;
    let date = get(QUERY_DATE)?;
    let signed_headers = get(QUERY_SIGNED_HEADERS)?;
    let signature = get(QUERY_SIGNATURE)?;
    let expires = get(QUERY_EXPIRES)?;
    let session_token = get(QUERY_TOKEN)?;

    let (
        Some(algorithm),
        Some(credential),
        Some(date),
        Some(signed_headers),
        Some(signature),
        Some(expires),
    ) = (
        algorithm,
        credential,
        date,
        signed_headers,
        signature,
        expires,
    )
    else {
        return Err(SigV4Error::IncompleteSignature(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, \
             X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and \
             X-Amz-Expires parameters."
                .into(),
        ));
    };
    if algorithm != ALGORITHM {
        return Err(SigV4Error::IncompleteSignature(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"".into(),
        ));
    }
    let expires: u64 = expires
        .parse()
        .map_err(|_| SigV4Error::IncompleteSignature("X-Amz-Expires should be a number".into()))?;
    if expires > MAX_PRESIGNED_EXPIRES {
        return Err(SigV4Error::IncompleteSignature(format!(
            "X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRES}"
        )));
    }
    let scope = parse_credential(&credential).ok_or_else(|| {
        SigV4Error::IncompleteSignature(
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; \
             expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
                .into(),
        )
    })?;
    let parsed_date = parse_amz_date(&date)?;

    Ok(Parsed {
        access_key_id: scope.access_key_id,
        session_token,
        amz_date: date,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        terminator: scope.terminator,
        signed_headers: split_signed_headers(&signed_headers),
        signature,
        presigned: true,
        expires: Some(expires),
        date: parsed_date,
        date_source: QUERY_DATE,
    })
}

struct CredentialScope {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    terminator: String,
}

/// Splits `AKID/YYYYMMDD/region/service/aws4_request`; `None` unless there are exactly five
/// non-empty parts.
fn parse_credential(credential: &str) -> Option<CredentialScope> {
    let mut parts = credential.split('/');
    let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
    let scope = CredentialScope {
        access_key_id: next()?,
        date: next()?,
        region: next()?,
        service: next()?,
        terminator: next()?,
    };
    match parts.next() {
        Some(_) => None,
        None => Some(scope),
    }
}

fn split_signed_headers(value: &str) -> Vec<String> {
    let names: Vec<String> = value.split(';').map(str::to_owned).collect();
    normalize_signed_headers(&names)
}

/// Checks the signature of `req` as read by [`parse`] against `secret_access_key`, with every rule
/// of the server (policy-and-api.md §4):
///
/// - `host` is signed, every header in SignedHeaders is present, and every `x-amz-*` header the
///   client sent is signed (`x-amz-security-token` may be unsigned only with
///   `allow_unsigned_session_token`);
/// - the scope date equals the first 8 characters of the request date, the region is one of
///   `cfg.regions`, the service is `cfg.service`, the terminator is `aws4_request`;
/// - the request date is within `cfg.max_skew` of `cfg.now` (presigned: not later than
///   `now + skew`, and `now <= date + X-Amz-Expires`);
/// - `x-amz-content-sha256`, when sent, equals the body's hash (`UNSIGNED-PAYLOAD` and streaming
///   values refused);
/// - the signature matches, compared in constant time.
pub fn verify(
    req: &Request,
    parsed: &Parsed,
    secret_access_key: &str,
    cfg: &VerifyConfig,
) -> Result<(), SigV4Error> {
    check_headers(req, parsed, cfg)?;
    check_scope(parsed, cfg)?;
    check_time(parsed, cfg)?;
    let payload_hash = payload_hash(req)?;

    let scope = format!(
        "{}/{}/{}/{}",
        parsed.scope_date, parsed.region, parsed.service, parsed.terminator
    );
    let key = signing_key(
        secret_access_key,
        &parsed.scope_date,
        &parsed.region,
        &parsed.service,
    );
    let attempt = |exclude: &[&str]| -> Result<(bool, String, String), SigV4Error> {
        let creq = canonical_request_excluding(
            req,
            &parsed.signed_headers,
            cfg.normalize_path,
            &payload_hash,
            exclude,
        )?;
        let sts = string_to_sign(&parsed.amz_date, &scope, &creq);
        let expected = signature(&key, &sts);
        let ok: bool = expected
            .as_bytes()
            .ct_eq(parsed.signature.as_bytes())
            .into();
        Ok((ok, creq, sts))
    };

    let (ok, creq, sts) = attempt(&[])?;
    if ok {
        return Ok(());
    }
    // A presigned URL whose token was appended after signing is signed without it.
    if parsed.presigned && parsed.session_token.is_some() && cfg.allow_unsigned_session_token {
        let (ok, _, _) = attempt(&[QUERY_TOKEN])?;
        if ok {
            return Ok(());
        }
    }
    Err(SigV4Error::SignatureMismatch {
        canonical_request: creq,
        string_to_sign: sts,
    })
}

fn check_headers(req: &Request, parsed: &Parsed, cfg: &VerifyConfig) -> Result<(), SigV4Error> {
    let signed = |name: &str| parsed.signed_headers.iter().any(|s| s == name);
    if !signed("host") {
        return Err(SigV4Error::HostNotSigned);
    }
    for name in &parsed.signed_headers {
        if header_values(req.headers, name).next().is_none() {
            return Err(SigV4Error::SignedHeaderMissing(name.clone()));
        }
    }
    for (name, _) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        if !name.starts_with("x-amz-") || signed(&name) {
            continue;
        }
        if name == "x-amz-security-token" && cfg.allow_unsigned_session_token {
            continue;
        }
        return Err(SigV4Error::HeaderNotSigned(name));
    }
    Ok(())
}

fn check_scope(parsed: &Parsed, cfg: &VerifyConfig) -> Result<(), SigV4Error> {
    let request_day = parsed.amz_date.get(..8).unwrap_or(&parsed.amz_date);
    if parsed.scope_date != request_day {
        return Err(SigV4Error::ScopeDateMismatch {
            scope_date: parsed.scope_date.clone(),
            request_date: request_day.to_owned(),
            source_name: parsed.date_source.to_owned(),
        });
    }
    if !cfg.regions.contains(&parsed.region) {
        return Err(SigV4Error::WrongRegion(parsed.region.clone()));
    }
    if parsed.service != cfg.service {
        return Err(SigV4Error::WrongService {
            expected: cfg.service.to_owned(),
            got: parsed.service.clone(),
        });
    }
    if parsed.terminator != TERMINATOR {
        return Err(SigV4Error::WrongTerminator(parsed.terminator.clone()));
    }
    Ok(())
}

fn check_time(parsed: &Parsed, cfg: &VerifyConfig) -> Result<(), SigV4Error> {
    let skew = to_time_duration(cfg.max_skew);
    let date = parsed.date;
    let now = cfg.now;
    let latest = now.checked_add(skew);
    if latest.is_some_and(|latest| date > latest) {
        return Err(SigV4Error::SignatureNotYetCurrent {
            request_date: amz_date(date),
            latest: latest.map(amz_date).unwrap_or_default(),
            now: amz_date(now),
            skew: skew_text(cfg.max_skew),
        });
    }
    match (parsed.presigned, parsed.expires) {
        (true, Some(expires)) => {
            let expired_at = date.checked_add(to_time_duration(Duration::from_secs(expires)));
            if expired_at.is_some_and(|at| now > at) {
                return Err(SigV4Error::PresignedUrlExpired {
                    expired_at: expired_at.map(amz_date).unwrap_or_default(),
                    now: amz_date(now),
                });
            }
        }
        _ => {
            let earliest = now.checked_sub(skew);
            if earliest.is_some_and(|earliest| date < earliest) {
                return Err(SigV4Error::SignatureExpired {
                    request_date: amz_date(date),
                    earliest: earliest.map(amz_date).unwrap_or_default(),
                    now: amz_date(now),
                    skew: skew_text(cfg.max_skew),
                });
            }
        }
    }
    Ok(())
}

fn to_time_duration(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The HashedPayload: the `x-amz-content-sha256` value when sent (after checking it is the body's
/// hash), else the body's hash.
fn payload_hash(req: &Request) -> Result<String, SigV4Error> {
    let body_hash = hex_sha256(req.body);
    let declared = single_header(req.headers, "x-amz-content-sha256")
        .map_err(|()| SigV4Error::PayloadHashMismatch)?;
    let Some(declared) = declared else {
        return Ok(body_hash);
    };
    let declared = declared.trim();
    if declared == "UNSIGNED-PAYLOAD" || declared.starts_with("STREAMING-") {
        return Err(SigV4Error::UnsignedPayloadRefused);
    }
    if !declared.eq_ignore_ascii_case(&body_hash) {
        return Err(SigV4Error::PayloadHashMismatch);
    }
    Ok(declared.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_scope_needs_five_parts() {
        assert!(parse_credential("AKID/20150830/us-east-1/ssm/aws4_request").is_some());
        for bad in [
            "",
            "AKID/20150830/us-east-1/ssm",
            "AKID/20150830/us-east-1/ssm/aws4_request/x",
            "AKID//us-east-1/ssm/aws4_request",
            "/20150830/us-east-1/ssm/aws4_request",
        ] {
            assert!(parse_credential(bad).is_none(), "{bad}");
        }
    }
}
