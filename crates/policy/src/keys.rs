//! Names of the condition keys Airlock populates (§3.4 of the design), so the server
//! and tests spell them one way. Keys are case-insensitive; these are AWS's spellings.

/// The caller's friendly IAM user name; absent for roles and federated callers.
pub const USERNAME: &str = "aws:username";
/// The caller's unique id (`AIDA…` for users, `ROLEID:session-name` for roles).
pub const USERID: &str = "aws:userid";
/// `User`, `AssumedRole`, `FederatedUser` or `Account`.
pub const PRINCIPAL_TYPE: &str = "aws:PrincipalType";
/// The caller's ARN.
pub const PRINCIPAL_ARN: &str = "aws:PrincipalArn";
/// The caller's account id.
pub const PRINCIPAL_ACCOUNT: &str = "aws:PrincipalAccount";
/// Prefix of the caller's tags: `aws:PrincipalTag/` + tag key.
pub const PRINCIPAL_TAG_PREFIX: &str = "aws:PrincipalTag/";
/// Prefix of the evaluated resource's tags, global form: `aws:ResourceTag/` + tag key.
pub const RESOURCE_TAG_PREFIX: &str = "aws:ResourceTag/";
/// Prefix of the evaluated resource's tags, SSM form: `ssm:resourceTag/` + tag key.
pub const SSM_RESOURCE_TAG_PREFIX: &str = "ssm:resourceTag/";
/// `"true"` when StartSession named a document explicitly (§3.3), else `"false"`.
pub const SESSION_DOCUMENT_ACCESS_CHECK: &str = "ssm:SessionDocumentAccessCheck";
/// Request time, ISO 8601 UTC (`2024-06-30T23:59:59Z`).
pub const CURRENT_TIME: &str = "aws:CurrentTime";
/// Request time, epoch seconds.
pub const EPOCH_TIME: &str = "aws:EpochTime";
/// The client's IP address.
pub const SOURCE_IP: &str = "aws:SourceIp";
/// `"true"` when the request came over TLS.
pub const SECURE_TRANSPORT: &str = "aws:SecureTransport";
/// Whether MFA was used; present only for temporary credentials.
pub const MULTI_FACTOR_AUTH_PRESENT: &str = "aws:MultiFactorAuthPresent";
/// Seconds since MFA; present only for temporary credentials.
pub const MULTI_FACTOR_AUTH_AGE: &str = "aws:MultiFactorAuthAge";
/// When the temporary credentials were issued; present only for them.
pub const TOKEN_ISSUE_TIME: &str = "aws:TokenIssueTime";
/// The region the request is addressed to.
pub const REQUESTED_REGION: &str = "aws:RequestedRegion";
/// Tag keys in a tagging request (multivalued).
pub const TAG_KEYS: &str = "aws:TagKeys";
