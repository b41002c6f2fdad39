//! AWS Signature Version 4, both ways: signing for Airlock's client and verification for Airlock's
//! server, which speaks the AWS SSM JSON 1.1 API so that `aws ssm … --endpoint-url` and boto3 work
//! against it.
//!
//! - Client: [`sign`] returns the headers to add (`x-amz-date`, `x-amz-security-token`,
//!   `authorization`); [`presign`] makes a presigned URL.
//! - Server: [`parse`] reads the access key ID and scope from the request, the server looks up the
//!   secret, then [`verify`] checks everything (scope, clock skew, signed headers, payload hash,
//!   signature in constant time). Errors are [`SigV4Error`]s carrying AWS's codes and wording.
//! - The building blocks ([`canonical_request`], [`string_to_sign`], [`signing_key`],
//!   [`hex_sha256`]) are public for tests and error messages.
//!
//! The crate does no I/O; it works on a borrowed [`Request`] so any HTTP stack can use it. It is
//! tested byte for byte against AWS's SigV4 test suite (`shared/testdata/sigv4/v4`).
#![forbid(unsafe_code)]

mod canonical;
mod date;
mod error;
mod sign;
mod verify;

pub use canonical::{
    canonical_request, hex_sha256, signature, signing_key, string_to_sign, uri_encode, ALGORITHM,
    EMPTY_SHA256, TERMINATOR,
};
pub use date::{amz_date, parse_amz_date};
pub use error::SigV4Error;
pub use sign::{
    presign, sign, sign_with, Credentials, HeaderSelection, Request, SessionTokenMode, SignOptions,
};
pub use verify::{parse, verify, Parsed, VerifyConfig, DEFAULT_MAX_SKEW, MAX_PRESIGNED_EXPIRES};
