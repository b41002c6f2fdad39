//! Row types of the store, one struct per table, mapped by column name.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A person who signs API requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Stable id (`AIDA…`), used as `aws:userid`.
    pub user_id: String,
    /// Unique user name; prefixes the ids of the sessions they start.
    pub name: String,
    /// Until the policy engine is wired in, admins may do everything and others nothing.
    pub is_admin: bool,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

impl User {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        User {
            user_id: r.get("user_id"),
            name: r.get("name"),
            is_admin: r.get("is_admin"),
            created_at: r.get("created_at"),
        }
    }
}

/// An access key pair for SigV4.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// Public id (`AKIA…`).
    pub access_key_id: String,
    /// Owner.
    pub user_id: String,
    /// The shared secret SigV4 needs in clear.
    pub secret_access_key: String,
    /// `Active` or `Inactive`.
    pub status: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last successful use, epoch ms.
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for AccessKey {
    // The secret must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("user_id", &self.user_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        AccessKey {
            access_key_id: r.get("access_key_id"),
            user_id: r.get("user_id"),
            secret_access_key: r.get("secret_access_key"),
            status: r.get("status"),
            created_at: r.get("created_at"),
            last_used_at: r.get("last_used_at"),
        }
    }
}

/// A hybrid activation: lets up to `registration_limit` hosts register until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// UUID v4 text.
    pub activation_id: String,
    /// Hex SHA-256 of the activation code; the code itself is shown once and never stored.
    pub code_hash: String,
    /// Role name the instances get (kept for AWS compatibility).
    pub iam_role: String,
    /// Free text.
    pub description: String,
    /// Name given to instances registered with it.
    pub default_instance_name: String,
    /// How many registrations it allows.
    pub registration_limit: i64,
    /// How many it has had.
    pub registrations_count: i64,
    /// Expiry, epoch ms.
    pub expiration_date: i64,
    /// Creation, epoch ms.
    pub created_at: i64,
    /// Tags as a JSON array of `{Key, Value}`, applied to its instances.
    pub tags: String,
}

impl Activation {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Activation {
            activation_id: r.get("activation_id"),
            code_hash: r.get("code_hash"),
            iam_role: r.get("iam_role"),
            description: r.get("description"),
            default_instance_name: r.get("default_instance_name"),
            registration_limit: r.get("registration_limit"),
            registrations_count: r.get("registrations_count"),
            expiration_date: r.get("expiration_date"),
            created_at: r.get("created_at"),
            tags: r.get("tags"),
        }
    }
}

/// A registered host (`mi-…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// `mi-` + 17 hex digits.
    pub instance_id: String,
    /// The agent's Ed25519 public key, base64; it proves possession on every connect.
    pub public_key: String,
    /// The activation it registered with.
    pub activation_id: String,
    /// Display name.
    pub name: String,
    /// Host name the agent reported.
    pub computer_name: String,
    /// `Linux`, `MacOS` or `Windows`.
    pub platform_type: String,
    /// OS name.
    pub platform_name: String,
    /// OS version.
    pub platform_version: String,
    /// Agent version last reported.
    pub agent_version: String,
    /// Address the agent last connected from.
    pub ip_address: String,
    /// Role from the activation.
    pub iam_role: String,
    /// Registration time, epoch ms.
    pub registered_at: i64,
    /// Last sign of life, epoch ms.
    pub last_ping_at: Option<i64>,
    /// Deregistration time, epoch ms.
    pub deregistered_at: Option<i64>,
}

impl Instance {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Instance {
            instance_id: r.get("instance_id"),
            public_key: r.get("public_key"),
            activation_id: r.get("activation_id"),
            name: r.get("name"),
            computer_name: r.get("computer_name"),
            platform_type: r.get("platform_type"),
            platform_name: r.get("platform_name"),
            platform_version: r.get("platform_version"),
            agent_version: r.get("agent_version"),
            ip_address: r.get("ip_address"),
            iam_role: r.get("iam_role"),
            registered_at: r.get("registered_at"),
            last_ping_at: r.get("last_ping_at"),
            deregistered_at: r.get("deregistered_at"),
        }
    }
}

/// A session, live or ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// `<username>-<random>`.
    pub session_id: String,
    /// Instance id.
    pub target: String,
    /// Session document.
    pub document_name: String,
    /// ARN of the user who started it.
    pub owner: String,
    /// Reason given at start.
    pub reason: String,
    /// `Connecting | Connected | Disconnected | Terminated | Failed`.
    pub status: String,
    /// Parameters as JSON.
    pub parameters: String,
    /// Start, epoch ms.
    pub start_date: i64,
    /// End, epoch ms.
    pub end_date: Option<i64>,
    /// Exit status of the shell, when it ended by itself.
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub end_reason: String,
    /// User id of the owner (the `aws:ssmmessages:session-id` tag).
    pub owner_user_id: String,
    /// OS user requested through the `SSMSessionRunAs` tag ("" = the agent's default).
    pub run_as: String,
    /// Kind of the typed end reason (`IdleTimeout`, `TerminatedBy` …; see `EndReason`).
    pub end_kind: String,
    /// Machine-readable detail of the end reason.
    pub end_detail: String,
    /// The document's `sessionType` (`Standard_Stream`, `Port`, `InteractiveCommands` …).
    pub session_type: String,
    /// `maxSessionDuration` in force when it started (minutes).
    pub max_session_duration: Option<u32>,
    /// How the owner was authorised at StartSession, kept to re-evaluate it while the session lives.
    pub access: SessionAccess,
}

/// What the policy engine saw when a session started, so that its owner's access can be
/// decided again the same way (same source, same transport, same credential) while it lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionAccess {
    /// The access key that signed StartSession (`AKIA…`, or `ASIA…` for temporary credentials).
    pub access_key_id: String,
    /// Expiry of temporary credentials, epoch ms (`None` for a long-term key).
    pub credential_expires_at: Option<i64>,
    /// Issue time of temporary credentials (`aws:TokenIssueTime`), epoch ms.
    pub token_issued_at: Option<i64>,
    /// Whether MFA was presented (`aws:MultiFactorAuthPresent`).
    pub mfa: bool,
    /// `aws:SourceIp` of StartSession.
    pub source_ip: String,
    /// `aws:SecureTransport` of StartSession.
    pub secure_transport: bool,
    /// `ssm:SessionDocumentAccessCheck`: the document was named and authorised too.
    pub document_access_check: bool,
}

impl Session {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Session {
            session_id: r.get("session_id"),
            target: r.get("target"),
            document_name: r.get("document_name"),
            owner: r.get("owner"),
            reason: r.get("reason"),
            status: r.get("status"),
            parameters: r.get("parameters"),
            start_date: r.get("start_date"),
            end_date: r.get("end_date"),
            exit_code: r.get("exit_code"),
            end_reason: r.get("end_reason"),
            owner_user_id: r.get("owner_user_id"),
            run_as: r.get("run_as"),
            end_kind: r.get("end_kind"),
            end_detail: r.get("end_detail"),
            session_type: r.get("session_type"),
            max_session_duration: r
                .get::<Option<i64>, _>("max_session_duration")
                .and_then(|m| u32::try_from(m).ok()),
            access: SessionAccess {
                access_key_id: r.get("access_key_id"),
                credential_expires_at: r.get("credential_expires_at"),
                token_issued_at: r.get("token_issued_at"),
                mfa: r.get("mfa"),
                source_ip: r.get("source_ip"),
                secure_transport: r.get("secure_transport"),
                document_access_check: r.get("document_access_check"),
            },
        }
    }
}

/// DescribeSessions filters, already validated.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only this target.
    pub target: Option<String>,
    /// Only this owner ARN.
    pub owner: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this session.
    pub session_id: Option<String>,
    /// Started at or after, epoch ms.
    pub invoked_after: Option<i64>,
    /// Started at or before, epoch ms.
    pub invoked_before: Option<i64>,
}

/// A concurrency limit that refused a new session, with how many sessions are open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_sessions_per_user`.
    PerUser {
        /// The limit.
        max: u32,
        /// Open sessions of the user.
        open: i64,
    },
    /// `max_sessions_per_target`.
    PerTarget {
        /// The limit.
        max: u32,
        /// Open sessions on the target.
        open: i64,
    },
}

/// What a credential is now (see `Store::credential_state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialState {
    /// Its owner.
    pub user_id: String,
    /// Whether a long-term key is `Active` (temporary credentials always are).
    pub active: bool,
    /// Expiry of temporary credentials, epoch ms.
    pub expires_at: Option<i64>,
}
