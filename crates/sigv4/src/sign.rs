//! Client side: signing a request with the `Authorization` header ([`sign`], [`sign_with`]) or as a
//! presigned URL ([`presign`]).
//!
//! Airlock's client uses [`sign`] for every SSM API call. The other entry points and
//! [`SignOptions`] exist so the AWS test suite can be reproduced exactly (it signs every header,
//! adds `x-amz-content-sha256` for some cases and appends the session token after signing for
//! others) and so presigned URLs can be made.

use std::fmt;

use time::OffsetDateTime;

use crate::canonical::{
    canonical_request, hex_sha256, normalize_signed_headers, scope, signature, signing_key,
    single_header, string_to_sign, uri_encode, ALGORITHM,
};
use crate::date::amz_date;
use crate::SigV4Error;

/// A request as received or about to be sent, borrowed from whatever HTTP types the caller uses.
///
/// `path_and_query` is the raw request target as on the wire (e.g. `/?a=b`), still percent-encoded;
/// `headers` are in the order received, names in any case, duplicates allowed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method as sent, e.g. `POST`.
    pub method: &'a str,
    /// The request target as on the wire: path plus optional `?query`.
    pub path_and_query: &'a str,
    /// All request headers, in the order received.
    pub headers: &'a [(String, String)],
    /// The request body (empty for none).
    pub body: &'a [u8],
}

/// AWS credentials used to sign: an access key pair plus, for temporary credentials, a session
/// token.
///
/// `Debug` shows the access key ID only; the secret and the token are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key ID, e.g. `AKIDEXAMPLE`; it goes into the credential scope in clear.
    pub access_key_id: String,
    /// The secret access key; it never leaves the process.
    pub secret_access_key: String,
    /// The session token of temporary credentials, sent as `X-Amz-Security-Token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Which of the request's headers get signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderSelection {
    /// `host`, `content-type` and every `x-amz-*` header: what Airlock's server requires, and
    /// nothing a proxy may rewrite.
    #[default]
    Standard,
    /// Every header except `authorization`, `user-agent`, `x-amzn-trace-id`, `transfer-encoding`
    /// and `expect`, as botocore and the AWS test suite do.
    All,
}

impl HeaderSelection {
    /// Whether the lower-cased header `name` is signed under this selection.
    pub fn includes(self, name: &str) -> bool {
        match self {
            HeaderSelection::Standard => {
                name == "host" || name == "content-type" || name.starts_with("x-amz-")
            }
            HeaderSelection::All => !matches!(
                name,
                "authorization" | "user-agent" | "x-amzn-trace-id" | "transfer-encoding" | "expect"
            ),
        }
    }
}

/// Whether the session token of temporary credentials is covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionTokenMode {
    /// The token is added before signing and signed (what the SDKs do, and what the server
    /// requires by default).
    #[default]
    Signed,
    /// The token is added after signing, unsigned (the suite's `post-sts-header-after`).
    AppendedAfterSigning,
}

/// Knobs of [`sign_with`] and [`presign`]; the default is what [`sign`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOptions {
    /// Remove `.`/`..` segments and repeated slashes from the path before encoding (true for every
    /// service but S3).
    pub normalize_path: bool,
    /// Which headers to sign.
    pub headers: HeaderSelection,
    /// Add a signed `x-amz-content-sha256` header holding the body hash (header signing only;
    /// ignored when the request already has one).
    pub add_content_sha256: bool,
    /// Whether the session token, if any, is signed.
    pub session_token: SessionTokenMode,
}

impl Default for SignOptions {
    fn default() -> Self {
        SignOptions {
            normalize_path: true,
            headers: HeaderSelection::Standard,
            add_content_sha256: false,
            session_token: SessionTokenMode::Signed,
        }
    }
}

/// Signs `req` with the `Authorization` header and returns the headers to **add** to it:
/// `x-amz-date`, `x-amz-security-token` when the credentials have a token (signed), and
/// `authorization`.
///
/// Signs `host` (which must be present), `content-type` and every `x-amz-*` header of `req`; uses
/// double URI encoding and path normalization (non-S3 rules). `req` must not already carry
/// `authorization`, `x-amz-date` or (with a token) `x-amz-security-token`.
pub fn sign(
    req: &Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
) -> Result<Vec<(String, String)>, SigV4Error> {
    sign_with(req, creds, region, service, time, &SignOptions::default())
}

/// [`sign`] with explicit [`SignOptions`]. Returns the headers to add, in this order:
/// `x-amz-date`, `x-amz-content-sha256` (if added), `x-amz-security-token` (if any),
/// `authorization`.
pub fn sign_with(
    req: &Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
    opts: &SignOptions,
) -> Result<Vec<(String, String)>, SigV4Error> {
    check_scope_parts(creds, region, service)?;
    require_host(req)?;
    for name in ["authorization", "x-amz-date"] {
        refuse_header(req, name)?;
    }
    if creds.session_token.is_some() {
        refuse_header(req, "x-amz-security-token")?;
    }
    let content_sha256 = single_header(req.headers, "x-amz-content-sha256").map_err(|()| {
        SigV4Error::InvalidSigningInput("more than one x-amz-content-sha256 header".into())
    })?;

    let date = amz_date(time);
    let day = scope_day(&date);
    let mut added: Vec<(String, String)> = vec![("x-amz-date".into(), date.clone())];
    let payload_hash = match content_sha256 {
        Some(value) => value.trim().to_owned(),
        None => {
            let hash = hex_sha256(req.body);
            if opts.add_content_sha256 {
                added.push(("x-amz-content-sha256".into(), hash.clone()));
            }
            hash
        }
    };
    let token = creds.session_token.as_deref();
    if let (Some(token), SessionTokenMode::Signed) = (token, opts.session_token) {
        added.push(("x-amz-security-token".into(), token.to_owned()));
    }

    let mut all_headers = req.headers.to_vec();
    all_headers.extend(added.iter().cloned());
    let names = selected_headers(&all_headers, opts.headers);
    let full = Request {
        headers: &all_headers,
        ..*req
    };
    let credential_scope = scope(day, region, service);
    let creq = canonical_request(&full, &names, opts.normalize_path, &payload_hash)?;
    let sts = string_to_sign(&date, &credential_scope, &creq);
    let key = signing_key(&creds.secret_access_key, day, region, service);
    let sig = signature(&key, &sts);

    if let (Some(token), SessionTokenMode::AppendedAfterSigning) = (token, opts.session_token) {
        added.push(("x-amz-security-token".into(), token.to_owned()));
    }
    added.push((
        "authorization".into(),
        format!(
            "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={}, Signature={sig}",
            creds.access_key_id,
            names.join(";")
        ),
    ));
    Ok(added)
}

/// Presigns `req` for query authentication and returns its new request target: the original
/// `path_and_query` with `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-SignedHeaders`, `X-Amz-Expires`, `X-Amz-Security-Token` (if any) and `X-Amz-Signature`
/// appended, in that order.
///
/// The URL is valid for `expires_secs` seconds (1 to 604800) from `time`. Headers are selected
/// by `opts.headers` (usually only `host` is present); the payload hash is that of `req.body`
/// unless `req` carries `x-amz-content-sha256`.
pub fn presign(
    req: &Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
    expires_secs: u64,
    opts: &SignOptions,
) -> Result<String, SigV4Error> {
    check_scope_parts(creds, region, service)?;
    require_host(req)?;
    refuse_header(req, "authorization")?;
    if !(1..=crate::verify::MAX_PRESIGNED_EXPIRES).contains(&expires_secs) {
        return Err(SigV4Error::InvalidSigningInput(format!(
            "X-Amz-Expires must be between 1 and {} seconds, not {expires_secs}",
            crate::verify::MAX_PRESIGNED_EXPIRES
        )));
    }
    if req.path_and_query.contains('#') {
        return Err(SigV4Error::InvalidSigningInput(
            "the request target has a fragment".into(),
        ));
    }
    let (_, query) = crate::canonical::split_target(req.path_and_query);
    let taken = crate::canonical::query_pairs(query)
        .into_iter()
        .any(|(name, _)| name.starts_with(b"X-Amz-"));
    if taken {
        return Err(SigV4Error::InvalidSigningInput(
            "the query already has X-Amz-* parameters".into(),
        ));
    }
    let payload_hash = match single_header(req.headers, "x-amz-content-sha256") {
        Ok(Some(value)) => value.trim().to_owned(),
        Ok(None) => hex_sha256(req.body),
        Err(()) => {
            return Err(SigV4Error::InvalidSigningInput(
                "more than one x-amz-content-sha256 header".into(),
            ))
        }
    };

    let date = amz_date(time);
    let day = scope_day(&date);
    let credential_scope = scope(day, region, service);
    let names = selected_headers(req.headers, opts.headers);
    let mut target = req.path_and_query.to_owned();
    let mut append = |name: &str, value: &str| {
        if !target.contains('?') {
            target.push('?');
        } else if !(target.ends_with('?') || target.ends_with('&')) {
            target.push('&');
        }
        target.push_str(name);
        target.push('=');
        target.push_str(value);
    };
    append("X-Amz-Algorithm", ALGORITHM);
    append(
        "X-Amz-Credential",
        &uri_encode(
            format!("{}/{credential_scope}", creds.access_key_id).as_bytes(),
            true,
        ),
    );
    append("X-Amz-Date", &date);
    append(
        "X-Amz-SignedHeaders",
        &uri_encode(names.join(";").as_bytes(), true),
    );
    append("X-Amz-Expires", &expires_secs.to_string());
    let token = creds.session_token.as_deref();
    if let (Some(token), SessionTokenMode::Signed) = (token, opts.session_token) {
        append("X-Amz-Security-Token", &uri_encode(token.as_bytes(), true));
    }

    let with_params = Request {
        path_and_query: &target,
        ..*req
    };
    let creq = canonical_request(&with_params, &names, opts.normalize_path, &payload_hash)?;
    let sts = string_to_sign(&date, &credential_scope, &creq);
    let key = signing_key(&creds.secret_access_key, day, region, service);
    let sig = signature(&key, &sts);

    let mut append = |name: &str, value: &str| {
        target.push('&');
        target.push_str(name);
        target.push('=');
        target.push_str(value);
    };
    if let (Some(token), SessionTokenMode::AppendedAfterSigning) = (token, opts.session_token) {
        append("X-Amz-Security-Token", &uri_encode(token.as_bytes(), true));
    }
    append("X-Amz-Signature", &sig);
    Ok(target)
}

/// The `YYYYMMDD` part of an `X-Amz-Date` we formatted ourselves.
fn scope_day(date: &str) -> &str {
    date.get(..8).unwrap_or(date)
}

/// The sorted, lower-cased names of the headers to sign.
fn selected_headers(headers: &[(String, String)], selection: HeaderSelection) -> Vec<String> {
    let names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .filter(|name| selection.includes(name))
        .collect();
    normalize_signed_headers(&names)
}

fn require_host(req: &Request) -> Result<(), SigV4Error> {
    match crate::canonical::header_values(req.headers, "host").next() {
        Some(_) => Ok(()),
        None => Err(SigV4Error::InvalidSigningInput(
            "the request has no Host header".into(),
        )),
    }
}

fn refuse_header(req: &Request, name: &str) -> Result<(), SigV4Error> {
    match crate::canonical::header_values(req.headers, name).next() {
        Some(_) => Err(SigV4Error::InvalidSigningInput(format!(
            "the request already has a {name} header"
        ))),
        None => Ok(()),
    }
}

/// Refuses scope parts that would make the credential scope ambiguous or unparsable.
fn check_scope_parts(creds: &Credentials, region: &str, service: &str) -> Result<(), SigV4Error> {
    let bad = |s: &str| {
        s.is_empty() || s.contains(['/', ',', '=', ';']) || s.contains(char::is_whitespace)
    };
    for (what, value) in [
        ("access key ID", creds.access_key_id.as_str()),
        ("region", region),
        ("service", service),
    ] {
        if bad(value) {
            return Err(SigV4Error::InvalidSigningInput(format!(
                "invalid {what} '{value}'"
            )));
        }
    }
    Ok(())
}
