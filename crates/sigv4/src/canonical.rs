//! The canonical request, the string to sign, the signing key and the signature (policy-and-api.md
//! §4.1–§4.2), shared by the signer and the verifier so that both compute byte-for-byte the same
//! thing.
//!
//! Rules (non-S3 flavour, as for SSM): the path is normalized (optional) and URI-encoded once more
//! on top of its transport encoding ("double encoding"); query parameters are decoded, re-encoded
//! and sorted; header values are trimmed with inner whitespace collapsed, repeated headers joined
//! with `,` in the order received.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{Request, SigV4Error};

/// The only algorithm this crate speaks.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The fixed last element of every credential scope.
pub const TERMINATOR: &str = "aws4_request";
/// Hex SHA-256 of the empty string, the HashedPayload of every request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The query parameter that carries a presigned URL's signature; it is never part of the
/// canonical query string.
pub(crate) const QUERY_SIGNATURE: &str = "X-Amz-Signature";

/// Lower-case hex SHA-256 of `data`: the HashedPayload of a body, and the last line of the string
/// to sign.
pub fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 without a fallible constructor: the key is reduced to one 64-byte block the way
/// RFC 2104 does it (hashed if longer, zero-padded), which gives the same MAC as the raw key.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        for (dst, src) in block.iter_mut().zip(digest) {
            *dst = src;
        }
    } else {
        for (dst, src) in block.iter_mut().zip(key) {
            *dst = *src;
        }
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Derives the SigV4 signing key: `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service),
/// "aws4_request")`. `date` is the scope date `YYYYMMDD`.
///
/// The result is as sensitive as the secret for that day, region and service: never log it.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k_secret = Vec::with_capacity(4 + secret.len());
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = hmac_sha256(&k_secret, date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, TERMINATOR.as_bytes())
}

/// Builds the string to sign: algorithm, request date, credential scope
/// (`YYYYMMDD/region/service/aws4_request`) and the hex SHA-256 of the canonical request, one per
/// line, without a trailing newline.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    )
}

/// The credential scope `YYYYMMDD/region/service/aws4_request`.
pub(crate) fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/{TERMINATOR}")
}

/// The signature: lower-case hex HMAC-SHA256 of the string to sign under the signing key.
pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

/// Builds the canonical request of `req` (policy-and-api.md §4.1).
///
/// `signed_headers` are the header names to include (any case; they are lower-cased, sorted and
/// de-duplicated); each must be present in `req.headers`, else
/// [`SigV4Error::SignedHeaderMissing`]. `normalize_path` removes `.`/`..` segments and repeated
/// slashes first (all services but S3). `payload_hash` is the HashedPayload line: the hex SHA-256
/// of the body, or the `x-amz-content-sha256` value when the client sent one. A query parameter
/// `X-Amz-Signature` is left out, as presigned URLs require.
pub fn canonical_request(
    req: &Request,
    signed_headers: &[String],
    normalize_path: bool,
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    canonical_request_excluding(req, signed_headers, normalize_path, payload_hash, &[])
}

/// [`canonical_request`], leaving out the query parameters named in `exclude_params` as well
/// (used for a presigned URL whose security token was appended after signing).
pub(crate) fn canonical_request_excluding(
    req: &Request,
    signed_headers: &[String],
    normalize_path: bool,
    payload_hash: &str,
    exclude_params: &[&str],
) -> Result<String, SigV4Error> {
    let (path, query) = split_target(req.path_and_query);
    let names = normalize_signed_headers(signed_headers);

    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(path, normalize_path));
    out.push('\n');
    out.push_str(&canonical_query(query, exclude_params));
    out.push('\n');
    for name in &names {
        let value = canonical_header_value(req.headers, name)
            .ok_or_else(|| SigV4Error::SignedHeaderMissing(name.clone()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Lower-cases, sorts and de-duplicates header names: the SignedHeaders list in canonical form.
pub(crate) fn normalize_signed_headers(names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

/// Splits a request target into path and query (without the `?`). A fragment, which never
/// travels on the wire, is dropped if present.
pub(crate) fn split_target(path_and_query: &str) -> (&str, &str) {
    let target = match path_and_query.split_once('#') {
        Some((before, _)) => before,
        None => path_and_query,
    };
    match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    }
}

/// The CanonicalURI: the path, normalized if asked, URI-encoded again with `/` kept.
pub(crate) fn canonical_uri(path: &str, normalize: bool) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let normalized;
    let path = if normalize {
        normalized = normalize_path(path);
        normalized.as_str()
    } else {
        path
    };
    uri_encode(path.as_bytes(), false)
}

/// Removes empty and `.` segments, resolves `..` (never above the root), and keeps a trailing
/// slash when the path ended in `/` or `/.`: `//example//` → `/example/`, `/./` → `/`,
/// `/a/b/../..` → `/`.
pub(crate) fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    out.push_str(&segments.join("/"));
    let trailing = path.ends_with('/') || path.ends_with("/.");
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// URI-encodes bytes the SigV4 way: `A-Z a-z 0-9 - . _ ~` stay, everything else becomes `%XY` with
/// upper-case hex; `/` stays unless `encode_slash` (it is encoded in query names and values, kept in
/// paths).
pub fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes `%XY` escapes; a `%` not followed by two hex digits is kept literally. `+` is *not* a
/// space: SigV4 signers encode a space as `%20`, and a literal `+` is signed as `%2B`.
pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    fn hex_val(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The query as decoded `(name, value)` pairs in order; empty pieces (`a=1&&b=2`) are skipped and a
/// parameter without `=` has an empty value.
pub(crate) fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// The CanonicalQueryString: every parameter but `X-Amz-Signature` (and `exclude`), decoded then
/// re-encoded, sorted by encoded name then value, joined with `&`.
pub(crate) fn canonical_query(query: &str, exclude: &[&str]) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(name, _)| {
            name.as_slice() != QUERY_SIGNATURE.as_bytes()
                && !exclude.iter().any(|e| name.as_slice() == e.as_bytes())
        })
        .map(|(name, value)| (uri_encode(&name, true), uri_encode(&value, true)))
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(query.len() + 16);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Every value of header `name` (compared case-insensitively) in the order received.
pub(crate) fn header_values<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The one value of header `name`, or `None` when it is absent; `Err(())` when it appears more than
/// once.
pub(crate) fn single_header<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> Result<Option<&'h str>, ()> {
    let mut values = header_values(headers, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// Trims a header value and collapses each inner run of whitespace, line breaks of a folded value
/// included, to one space.
pub(crate) fn trim_header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split_ascii_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The canonical value of header `name`: all its values trimmed and joined with `,` in the order
/// received, or `None` when the request lacks it.
pub(crate) fn canonical_header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::new();
    for value in header_values(headers, name) {
        if found {
            out.push(',');
        }
        found = true;
        out.push_str(&trim_header_value(value));
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2 and test case 6 (key longer than a block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn hmac_key_of_exactly_one_block() {
        // A 64-byte key is used as is; compare with the crate's own slice constructor.
        let key = [0x0bu8; 64];
        let ours = hmac_sha256(&key, b"data");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(b"data");
        let theirs: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn normalizes_paths() {
        for (input, expected) in [
            ("/", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("/./example", "/example"),
            ("//example//", "/example/"),
            ("/example/..", "/"),
            ("/example1/example2/../..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/../../a", "/a"),
            ("/a/./b/../c/", "/a/c/"),
        ] {
            assert_eq!(normalize_path(input), expected, "{input}");
        }
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(uri_encode(b"-._~AZaz09", true), "-._~AZaz09");
        assert_eq!(uri_encode(b"a b/c", false), "a%20b/c");
        assert_eq!(uri_encode(b"a b/c", true), "a%20b%2Fc");
        assert_eq!(uri_encode("\u{1234}".as_bytes(), true), "%E1%88%B4");
        assert_eq!(uri_encode(b"%3D@+", false), "%253D%40%2B");
    }

    #[test]
    fn decodes_percent_escapes_leniently() {
        assert_eq!(percent_decode("a%2Fb%2fc"), b"a/b/c");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("a+b"), b"a+b");
    }

    #[test]
    fn canonicalizes_queries() {
        assert_eq!(canonical_query("", &[]), "");
        assert_eq!(
            canonical_query("Param2=value2&Param1=value1", &[]),
            "Param1=value1&Param2=value2"
        );
        assert_eq!(
            canonical_query("Param-3=Value3&Param=Value2&%E1%88%B4=Value1", &[]),
            "%E1%88%B4=Value1&Param=Value2&Param-3=Value3"
        );
        assert_eq!(canonical_query("b&a=&&c=1", &[]), "a=&b=&c=1");
        assert_eq!(canonical_query("k=2&k=1&k=10", &[]), "k=1&k=10&k=2");
        assert_eq!(
            canonical_query("p=a b&q=x%2fy+z", &[]),
            "p=a%20b&q=x%2Fy%2Bz"
        );
        assert_eq!(canonical_query("a=1&X-Amz-Signature=ff", &[]), "a=1");
        assert_eq!(
            canonical_query("a=1&X-Amz-Security-Token=t", &["X-Amz-Security-Token"]),
            "a=1"
        );
    }

    #[test]
    fn canonicalizes_header_values() {
        assert_eq!(trim_header_value("  a   b \t c  "), "a b c");
        assert_eq!(
            trim_header_value("value1\n  value2\r\n     value3"),
            "value1 value2 value3"
        );
        let headers = vec![
            ("My-Header1".to_owned(), "value4".to_owned()),
            ("my-header1".to_owned(), " value1 ".to_owned()),
            ("Other".to_owned(), "x".to_owned()),
            ("MY-HEADER1".to_owned(), "value3".to_owned()),
        ];
        assert_eq!(
            canonical_header_value(&headers, "my-header1").as_deref(),
            Some("value4,value1,value3")
        );
        assert_eq!(canonical_header_value(&headers, "absent"), None);
    }

    #[test]
    fn splits_targets() {
        assert_eq!(split_target("/"), ("/", ""));
        assert_eq!(split_target("/?a=b"), ("/", "a=b"));
        assert_eq!(split_target("/p?a=b?c#frag"), ("/p", "a=b?c"));
        assert_eq!(split_target(""), ("", ""));
    }
}
