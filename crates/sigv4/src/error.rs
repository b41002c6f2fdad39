//! The one error type of this crate, worded the way AWS words it.
//!
//! Airlock's server turns a [`SigV4Error`] into an AWS JSON 1.1 error body: `__type` comes from
//! [`SigV4Error::aws_code`] and `message` from `Display`, so the AWS CLI and the SDKs show their users
//! the same texts that real AWS endpoints produce. No variant ever holds a secret access key or a
//! signing key; the canonical request and string to sign carried by
//! [`SigV4Error::SignatureMismatch`] are built from the request alone.

/// Why a request could not be signed, or why a signed request was refused.
///
/// Variants are named after what went wrong from the caller's point of view; see
/// [`SigV4Error::aws_code`] for the AWS error code each one maps to.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SigV4Error {
    /// Neither an `Authorization` header nor presigned query parameters were sent.
    #[error("Missing Authentication Token")]
    MissingAuthentication,

    /// The `Authorization` header or the presigned query parameters are malformed or incomplete;
    /// the message says what is wrong, in AWS's words where AWS has them.
    #[error("{0}")]
    IncompleteSignature(String),

    /// The request carries both an `Authorization` header and presigned query parameters, so it is
    /// ambiguous which one should be checked.
    #[error(
        "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query \
         string parameter or the Authorization header should be specified"
    )]
    ConflictingAuthentication,

    /// `X-Amz-Date` (or the `Date` header) is not a valid date in the expected format. Holds the
    /// value as received.
    #[error("Date must be in ISO-8601 'basic format'. Got '{0}'. See http://en.wikipedia.org/wiki/ISO_8601")]
    BadDate(String),

    /// `host` is not among the signed headers, so the signature does not bind the request to this
    /// endpoint.
    #[error("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")]
    HostNotSigned,

    /// The client sent this header (lower-cased name), which must be signed, but did not sign it:
    /// every `x-amz-*` header, including `x-amz-security-token` unless configured otherwise.
    #[error("There were headers present in the request which were not signed: '{0}'")]
    HeaderNotSigned(String),

    /// This header (lower-cased name) is listed in SignedHeaders but is absent from the request.
    #[error("Header '{0}' is listed in SignedHeaders but is not present in the request")]
    SignedHeaderMissing(String),

    /// The date of the credential scope differs from the first 8 characters of the request date.
    #[error(
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: \
         '{scope_date}' != '{request_date}', from '{source_name}'."
    )]
    ScopeDateMismatch {
        /// The `YYYYMMDD` of the credential scope.
        scope_date: String,
        /// The `YYYYMMDD` of the request date.
        request_date: String,
        /// Where the request date came from: `x-amz-date`, `date` or `X-Amz-Date` (query).
        source_name: String,
    },

    /// The credential scope names a region this endpoint does not serve. Holds that region.
    #[error("Credential should be scoped to a valid Region, not '{0}'")]
    WrongRegion(String),

    /// The credential scope names another service than the one this endpoint implements.
    #[error("Credential should be scoped to correct service: '{expected}'")]
    WrongService {
        /// The service this endpoint expects (what AWS's message names).
        expected: String,
        /// The service the client scoped its credential to.
        got: String,
    },

    /// The credential scope does not end in `aws4_request`. Holds what it ends in.
    #[error("Credential should be scoped with a valid terminator: 'aws4_request', not '{0}'")]
    WrongTerminator(String),

    /// The request was signed too long ago (more than the allowed clock skew before `now`).
    #[error("Signature expired: {request_date} is now earlier than {earliest} ({now} - {skew})")]
    SignatureExpired {
        /// The request date, `YYYYMMDD'T'HHMMSS'Z'`.
        request_date: String,
        /// The earliest date accepted, `now - skew`.
        earliest: String,
        /// The server's time.
        now: String,
        /// The allowed skew as AWS writes it, e.g. `5 min.`.
        skew: String,
    },

    /// The request date lies further in the future than the allowed clock skew.
    #[error(
        "Signature not yet current: {request_date} is still later than {latest} ({now} + {skew})"
    )]
    SignatureNotYetCurrent {
        /// The request date, `YYYYMMDD'T'HHMMSS'Z'`.
        request_date: String,
        /// The latest date accepted, `now + skew`.
        latest: String,
        /// The server's time.
        now: String,
        /// The allowed skew as AWS writes it, e.g. `5 min.`.
        skew: String,
    },

    /// A presigned URL was used after `X-Amz-Date + X-Amz-Expires`.
    #[error("Request has expired: it was valid until {expired_at} and it is now {now}")]
    PresignedUrlExpired {
        /// `X-Amz-Date + X-Amz-Expires`, `YYYYMMDD'T'HHMMSS'Z'`.
        expired_at: String,
        /// The server's time.
        now: String,
    },

    /// `x-amz-content-sha256` does not equal the SHA-256 of the body received.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,

    /// `x-amz-content-sha256` is `UNSIGNED-PAYLOAD` or a streaming value, which this API refuses:
    /// the body must be covered by the signature.
    #[error(
        "x-amz-content-sha256 must be the SHA-256 of the request body; unsigned and streaming \
         payloads are not accepted by this API"
    )]
    UnsignedPayloadRefused,

    /// The signature does not match the one computed from the request and the secret. Carries the
    /// canonical request and string to sign the server computed, for debugging (see
    /// [`SigV4Error::detailed_message`]); neither contains a secret.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your \
         AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    SignatureMismatch {
        /// The canonical request as the server computed it.
        canonical_request: String,
        /// The string to sign as the server computed it.
        string_to_sign: String,
    },

    /// The access key ID (or session token) is unknown. Not produced by this crate's checks; it is
    /// here so the server's key lookup can report through the same type.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,

    /// The session token has expired. Not produced by this crate's checks; for the server's token
    /// store.
    #[error("The security token included in the request is expired")]
    ExpiredToken,

    /// The request handed to a signing function cannot be signed as it is (e.g. it has no `Host`
    /// header, or already carries `Authorization`). A programming error on the client side.
    #[error("cannot sign request: {0}")]
    InvalidSigningInput(String),
}

impl SigV4Error {
    /// The AWS error code for the JSON 1.1 `__type` field and the `x-amzn-ErrorType` header.
    ///
    /// Structural problems map to `IncompleteSignatureException`, failed checks of scope, time,
    /// payload or signature to `InvalidSignatureException`, as AWS JSON services do.
    pub fn aws_code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthentication => "MissingAuthenticationTokenException",
            SigV4Error::IncompleteSignature(_)
            | SigV4Error::ConflictingAuthentication
            | SigV4Error::BadDate(_)
            | SigV4Error::HostNotSigned
            | SigV4Error::HeaderNotSigned(_)
            | SigV4Error::SignedHeaderMissing(_) => "IncompleteSignatureException",
            SigV4Error::ScopeDateMismatch { .. }
            | SigV4Error::WrongRegion(_)
            | SigV4Error::WrongService { .. }
            | SigV4Error::WrongTerminator(_)
            | SigV4Error::SignatureExpired { .. }
            | SigV4Error::SignatureNotYetCurrent { .. }
            | SigV4Error::PresignedUrlExpired { .. }
            | SigV4Error::PayloadHashMismatch
            | SigV4Error::UnsignedPayloadRefused
            | SigV4Error::SignatureMismatch { .. } => "InvalidSignatureException",
            SigV4Error::UnrecognizedClient => "UnrecognizedClientException",
            SigV4Error::ExpiredToken => "ExpiredTokenException",
            SigV4Error::InvalidSigningInput(_) => "InternalFailure",
        }
    }

    /// The message with, for a signature mismatch, the canonical request and string to sign the
    /// server expected appended the way AWS JSON services append them. Meant for clients debugging
    /// their signer; the canonical request may contain the session token the client sent, so think
    /// twice before logging it.
    pub fn detailed_message(&self) -> String {
        match self {
            SigV4Error::SignatureMismatch {
                canonical_request,
                string_to_sign,
            } => format!(
                "{self}\n\nThe Canonical String for this request should have been\n'{canonical_request}'\n\n\
                 The String-to-Sign should have been\n'{string_to_sign}'\n"
            ),
            other => other.to_string(),
        }
    }
}
