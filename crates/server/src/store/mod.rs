//! The store: everything the server must remember across restarts (users, access keys,
//! activations, managed instances, sessions), kept in SQLite through sqlx with WAL.
//!
//! Every function here is one statement or one transaction; callers never see SQL.

pub mod audit;
pub mod documents;
pub mod iam;
pub mod recordings;
mod rows;
pub mod search;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use rows::*;

/// Errors of the store, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that must be unique already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A row that must exist does not.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A sealed secret could not be opened (wrong master key?).
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// A file of the store (the search index's) could not be created.
    #[error("database file: {0}")]
    File(#[from] std::io::Error),
}

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: SqlitePool,
    /// Seals secrets at rest.
    pub(crate) key: crate::secrets::MasterKey,
    /// Serialises audit appends so the hash chain has one writer; holds the last record this
    /// server wrote, which the next one chains to.
    pub(crate) audit_lock: std::sync::Arc<tokio::sync::Mutex<Option<audit::AuditHead>>>,
    /// A copy of that head the checkpoint writer reads without queueing behind appends.
    pub(crate) audit_head: std::sync::Arc<std::sync::Mutex<Option<audit::AuditHead>>>,
    /// The queue of recorded text waiting for the search index (started on first use).
    pub(crate) text_index: std::sync::Arc<std::sync::OnceLock<search::IndexQueue>>,
    /// The search index's own database file (`search::SEARCH_FILE`), written only through
    /// this one-connection pool: indexing holds that file's write lock, never the main one's.
    pub(crate) search: SqlitePool,
    /// Searches: the index's file with the database attached read-only as `db` (for the
    /// sessions' rows). Never attached the other way round: a write transaction on a
    /// connection locks every database attached to it.
    pub(crate) search_read: SqlitePool,
    /// Events enqueued with the audit records they come from (webhook outbox, log stream).
    pub(crate) events: crate::events::Events,
}

/// The `[{"Key":…,"Value":…}]` tags stored with an activation, as pairs.
pub fn activation_tags(json: &str) -> Vec<(String, String)> {
    serde_json::from_str::<Vec<serde_json::Value>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let k = t.get("Key")?.as_str()?;
            let v = t.get("Value").and_then(|v| v.as_str()).unwrap_or("");
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    i64::try_from(airlock_proto::unix_millis()).unwrap_or(i64::MAX)
}

/// The tables whose `secret_access_key` column is sealed.
const SEALED_TABLES: [&str; 2] = ["access_keys", "session_credentials"];

/// The identity a sealed secret is bound to: its key id and its owner, so it opens neither in
/// another key's row nor after its row is handed to another user.
pub(crate) fn secret_row(access_key_id: &str, user_id: &str) -> String {
    format!("{access_key_id}/{user_id}")
}

/// Where a `secret_access_key` of `table` is sealed, for the row `row` ([`secret_row`]).
pub(crate) fn secret_at<'a>(table: &'a str, row: &'a str) -> crate::secrets::SealedAt<'a> {
    crate::secrets::SealedAt {
        table,
        column: "secret_access_key",
        row,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Opens (creating if needed) `airlock.db` in `data_dir`, in WAL mode, and applies migrations.
    pub async fn open_in_dir(
        data_dir: &Path,
        key: crate::secrets::MasterKey,
    ) -> Result<Store, StoreError> {
        let path = data_dir.join("airlock.db");
        let url = format!("sqlite://{}", path.display());
        Self::open(&url, key).await
    }

    /// Opens a database by URL (`sqlite://path` or `sqlite::memory:`), applies migrations, and
    /// seals any secret an older version stored in clear.
    pub async fn open(url: &str, key: crate::secrets::MasterKey) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?;
        // The search index lives beside the database (a temporary file for an in-memory one).
        let main_file = opts.get_filename().to_path_buf();
        let main_db = main_file.clone();
        let search_path = if main_file.as_os_str().is_empty()
            || main_file.as_os_str() == ":memory:"
            || url.contains("mode=memory")
        {
            std::env::temp_dir().join(format!("airlock-search-{}.db", uuid::Uuid::new_v4()))
        } else {
            let mut p = main_file.into_os_string();
            p.push(search::SEARCH_SUFFIX);
            std::path::PathBuf::from(p)
        };
        let search = search::open_index(&search_path).await?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let search_read = search::open_reader(&search_path, &main_db).await?;
        let store = Store {
            pool,
            key,
            audit_lock: Default::default(),
            audit_head: Default::default(),
            text_index: Default::default(),
            search,
            search_read,
            events: Default::default(),
        };
        store.reseal_secrets().await?;
        Ok(store)
    }

    /// Seals what an older version stored in clear and re-seals what it sealed unbound
    /// (`enc1:`), binding each secret to its row. A value that does not open is left as it is
    /// (and named in the log): it fails where it is used, not here.
    async fn reseal_secrets(&self) -> Result<(), StoreError> {
        use crate::secrets::{MasterKey, SealFormat};
        for table in SEALED_TABLES {
            let rows = sqlx::query(&format!(
                "SELECT access_key_id, user_id, secret_access_key FROM {table}"
            ))
            .fetch_all(&self.pool)
            .await?;
            let mut resealed = 0u64;
            for r in rows {
                let id: String = r.get("access_key_id");
                let user_id: String = r.get("user_id");
                let stored: String = r.get("secret_access_key");
                let plain = match MasterKey::format_of(&stored) {
                    SealFormat::Bound => continue,
                    SealFormat::Plain => stored,
                    SealFormat::Unbound => match self.key.open_legacy(&stored) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!("{table} {id}: {e}; left as it is");
                            continue;
                        }
                    },
                };
                let row = secret_row(&id, &user_id);
                sqlx::query(&format!(
                    "UPDATE {table} SET secret_access_key = ? WHERE access_key_id = ? AND secret_access_key = ?"
                ))
                .bind(self.key.seal(&plain, &secret_at(table, &row)))
                .bind(&id)
                .bind(r.get::<String, _>("secret_access_key"))
                .execute(&self.pool)
                .await?;
                resealed += 1;
            }
            if resealed > 0 {
                tracing::info!("re-sealed {resealed} secrets in {table}, each bound to its row");
            }
        }
        Ok(())
    }

    // ---- users and keys -------------------------------------------------------------------

    /// Creates a user; fails with `AlreadyExists` when the name is taken.
    pub async fn create_user(&self, name: &str, is_admin: bool) -> Result<User, StoreError> {
        let user = User {
            user_id: format!("AIDA{}", random_upper(17)),
            name: name.to_owned(),
            is_admin,
            created_at: now_ms(),
        };
        let res = sqlx::query(
            "INSERT INTO users (user_id, name, is_admin, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&user.user_id)
        .bind(&user.name)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => {
                if is_admin {
                    self.attach_policy("AdministratorAccess", "user", &user.user_id)
                        .await?;
                }
                Ok(user)
            }
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("user {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a user up by name.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| User::from_row(&r)))
    }

    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(User::from_row).collect())
    }

    /// Deletes a user and (by cascade) their keys; returns whether one existed.
    pub async fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Number of users; the server bootstraps an admin when it is zero.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Issues a new access key for a user.
    pub async fn create_access_key(&self, user_id: &str) -> Result<AccessKey, StoreError> {
        let key = AccessKey {
            access_key_id: format!("AKIA{}", random_upper(16)),
            user_id: user_id.to_owned(),
            secret_access_key: random_secret(40),
            status: "Active".to_owned(),
            created_at: now_ms(),
            last_used_at: None,
        };
        sqlx::query(
            "INSERT INTO access_keys (access_key_id, user_id, secret_access_key, status, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.access_key_id)
        .bind(&key.user_id)
        .bind(self.key.seal(
            &key.secret_access_key,
            &secret_at(
                "access_keys",
                &secret_row(&key.access_key_id, &key.user_id),
            ),
        ))
        .bind(&key.status)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(key)
    }

    /// An access key with its user, for SigV4 verification.
    pub async fn access_key(
        &self,
        access_key_id: &str,
    ) -> Result<Option<(AccessKey, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT k.*, u.name, u.is_admin, u.created_at AS user_created_at FROM access_keys k \
             JOIN users u ON u.user_id = k.user_id WHERE k.access_key_id = ?",
        )
        .bind(access_key_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let mut key = AccessKey::from_row(&r);
        key.secret_access_key = self.key.open(
            &key.secret_access_key,
            &secret_at("access_keys", &secret_row(&key.access_key_id, &key.user_id)),
        )?;
        let user = User {
            user_id: r.get("user_id"),
            name: r.get("name"),
            is_admin: r.get("is_admin"),
            created_at: r.get("user_created_at"),
        };
        Ok(Some((key, user)))
    }

    /// The owner of an access key, without opening its secret: a key whose sealed secret no
    /// longer opens (copied from another row) can still be found and deleted.
    pub async fn access_key_owner(&self, access_key_id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.* FROM access_keys k JOIN users u ON u.user_id = k.user_id WHERE k.access_key_id = ?",
        )
        .bind(access_key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| User::from_row(&r)))
    }

    /// Records that a key was just used (best effort; callers may ignore the error).
    pub async fn touch_access_key(&self, access_key_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE access_keys SET last_used_at = ? WHERE access_key_id = ?")
            .bind(now_ms())
            .bind(access_key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keys of one user.
    pub async fn list_access_keys(&self, user_id: &str) -> Result<Vec<AccessKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM access_keys WHERE user_id = ? ORDER BY created_at")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(AccessKey::from_row).collect())
    }

    /// Deletes a key; returns whether one existed.
    pub async fn delete_access_key(&self, access_key_id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM access_keys WHERE access_key_id = ?")
            .bind(access_key_id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    // ---- activations and instances ------------------------------------------------------

    /// Stores a new activation (the code itself is kept only as a hash).
    pub async fn create_activation(&self, a: &Activation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO activations (activation_id, code_hash, iam_role, description, \
             default_instance_name, registration_limit, registrations_count, expiration_date, \
             created_at, tags) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
        )
        .bind(&a.activation_id)
        .bind(&a.code_hash)
        .bind(&a.iam_role)
        .bind(&a.description)
        .bind(&a.default_instance_name)
        .bind(a.registration_limit)
        .bind(a.expiration_date)
        .bind(a.created_at)
        .bind(&a.tags)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One activation by id.
    pub async fn activation(&self, id: &str) -> Result<Option<Activation>, StoreError> {
        let row = sqlx::query("SELECT * FROM activations WHERE activation_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Activation::from_row(&r)))
    }

    /// All activations, newest first.
    pub async fn list_activations(&self) -> Result<Vec<Activation>, StoreError> {
        let rows = sqlx::query("SELECT * FROM activations ORDER BY created_at DESC")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Activation::from_row).collect())
    }

    /// Deletes an activation (registered instances stay); returns whether one existed.
    pub async fn delete_activation(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM activations WHERE activation_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Atomically uses one registration of an activation and records the new instance.
    /// Returns `Ok(false)` when the activation is exhausted (raced by another registration).
    pub async fn register_instance(
        &self,
        activation_id: &str,
        inst: &Instance,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE activations SET registrations_count = registrations_count + 1 \
             WHERE activation_id = ? AND registrations_count < registration_limit \
             AND expiration_date > ?",
        )
        .bind(activation_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO instances (instance_id, public_key, activation_id, name, computer_name, \
             platform_type, platform_name, platform_version, agent_version, ip_address, iam_role, \
             registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&inst.instance_id)
        .bind(&inst.public_key)
        .bind(&inst.activation_id)
        .bind(&inst.name)
        .bind(&inst.computer_name)
        .bind(&inst.platform_type)
        .bind(&inst.platform_name)
        .bind(&inst.platform_version)
        .bind(&inst.agent_version)
        .bind(&inst.ip_address)
        .bind(&inst.iam_role)
        .bind(inst.registered_at)
        .execute(&mut *tx)
        .await?;
        // The activation's tags become the instance's (they feed ssm:resourceTag/* in policies).
        let tags: String = sqlx::query("SELECT tags FROM activations WHERE activation_id = ?")
            .bind(activation_id)
            .fetch_one(&mut *tx)
            .await?
            .get("tags");
        for (k, v) in activation_tags(&tags) {
            sqlx::query(
                "INSERT INTO instance_tags (instance_id, key, value) VALUES (?, ?, ?) \
                 ON CONFLICT(instance_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(&inst.instance_id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// One instance by id (deregistered ones included; check `deregistered_at`).
    pub async fn instance(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        let row = sqlx::query("SELECT * FROM instances WHERE instance_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Instance::from_row(&r)))
    }

    /// Registered (not deregistered) instances, by id.
    pub async fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE deregistered_at IS NULL ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Instance::from_row).collect())
    }

    /// Marks an instance deregistered; returns whether a registered one existed.
    pub async fn deregister_instance(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE instances SET deregistered_at = ? WHERE instance_id = ? AND deregistered_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Updates what the agent reported on connect, and the ping time.
    pub async fn instance_connected(
        &self,
        id: &str,
        agent_version: &str,
        ip_address: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET agent_version = ?, ip_address = ?, last_ping_at = ? WHERE instance_id = ?",
        )
        .bind(agent_version)
        .bind(ip_address)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a ping from a connected agent.
    pub async fn instance_ping(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET last_ping_at = ? WHERE instance_id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- sessions -------------------------------------------------------------------------

    /// Records a new session.
    pub async fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        self.create_session_within(s, None, None).await.map(|_| ())
    }

    /// Records a new session unless its owner already has `max_per_user` open sessions or its
    /// target `max_per_target` (`None`: no limit). One statement, so the count and the insert
    /// cannot be split by another start. Returns the limit that refused it, with the count.
    pub async fn create_session_within(
        &self,
        s: &Session,
        max_per_user: Option<u32>,
        max_per_target: Option<u32>,
    ) -> Result<Option<LimitHit>, StoreError> {
        let res = sqlx::query(
            "INSERT INTO sessions (session_id, target, document_name, owner, reason, status, \
             parameters, start_date, owner_user_id, run_as, session_type, access_key_id, \
             credential_expires_at, token_issued_at, mfa, source_ip, secure_transport, \
             document_access_check, max_session_duration) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE (SELECT COUNT(*) FROM sessions WHERE owner_user_id = ? \
                    AND status NOT IN ('Terminated', 'Failed')) < ? \
               AND (SELECT COUNT(*) FROM sessions WHERE target = ? \
                    AND status NOT IN ('Terminated', 'Failed')) < ?",
        )
        .bind(&s.session_id)
        .bind(&s.target)
        .bind(&s.document_name)
        .bind(&s.owner)
        .bind(&s.reason)
        .bind(&s.status)
        .bind(&s.parameters)
        .bind(s.start_date)
        .bind(&s.owner_user_id)
        .bind(&s.run_as)
        .bind(&s.session_type)
        .bind(&s.access.access_key_id)
        .bind(s.access.credential_expires_at)
        .bind(s.access.token_issued_at)
        .bind(s.access.mfa)
        .bind(&s.access.source_ip)
        .bind(s.access.secure_transport)
        .bind(s.access.document_access_check)
        .bind(s.max_session_duration.map(i64::from))
        .bind(&s.owner_user_id)
        .bind(max_per_user.map_or(i64::MAX, i64::from))
        .bind(&s.target)
        .bind(max_per_target.map_or(i64::MAX, i64::from))
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 1 {
            return Ok(None);
        }
        // Refused: say which limit, with how many are open.
        let open_user = self
            .count_open_sessions("owner_user_id", &s.owner_user_id)
            .await?;
        if let Some(max) = max_per_user.filter(|m| open_user >= i64::from(*m)) {
            return Ok(Some(LimitHit::PerUser {
                max,
                open: open_user,
            }));
        }
        let open_target = self.count_open_sessions("target", &s.target).await?;
        Ok(Some(LimitHit::PerTarget {
            max: max_per_target.unwrap_or(0),
            open: open_target,
        }))
    }

    async fn count_open_sessions(&self, column: &str, value: &str) -> Result<i64, StoreError> {
        let column = if column == "target" {
            "target"
        } else {
            "owner_user_id"
        };
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM sessions WHERE {column} = ? AND status NOT IN ('Terminated', 'Failed')"
        ))
        .bind(value)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Every session that has not ended (the revocation sweep re-decides their owners' access).
    pub async fn open_sessions(&self) -> Result<Vec<Session>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM sessions WHERE status NOT IN ('Terminated', 'Failed')")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(Session::from_row).collect())
    }

    /// One session by id.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE session_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Session::from_row(&r)))
    }

    /// Sets the status of a session that has not ended; returns whether it changed.
    pub async fn set_session_status(&self, id: &str, status: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE sessions SET status = ? WHERE session_id = ? AND status NOT IN ('Terminated', 'Failed')",
        )
        .bind(status)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Ends a session once (the first caller wins); returns whether this call ended it.
    pub async fn end_session(
        &self,
        id: &str,
        reason: &crate::end_reason::EndReason,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE sessions SET status = ?, end_date = ?, exit_code = COALESCE(?, exit_code), \
             end_reason = ?, end_kind = ?, end_detail = ? \
             WHERE session_id = ? AND status NOT IN ('Terminated', 'Failed')",
        )
        .bind(reason.status())
        .bind(now_ms())
        .bind(reason.exit_code())
        .bind(reason.message())
        .bind(reason.kind())
        .bind(reason.detail())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Sessions in a state class, newest first, with simple filters; `offset`/`limit` page.
    pub async fn list_sessions(
        &self,
        history: bool,
        filter: &SessionFilter,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let mut sql = String::from("SELECT * FROM sessions WHERE ");
        sql.push_str(if history {
            "status IN ('Terminated', 'Failed')"
        } else {
            "status NOT IN ('Terminated', 'Failed')"
        });
        if filter.target.is_some() {
            sql.push_str(" AND target = ?");
        }
        if filter.owner.is_some() {
            sql.push_str(" AND owner = ?");
        }
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.session_id.is_some() {
            sql.push_str(" AND session_id = ?");
        }
        if filter.invoked_after.is_some() {
            sql.push_str(" AND start_date >= ?");
        }
        if filter.invoked_before.is_some() {
            sql.push_str(" AND start_date <= ?");
        }
        sql.push_str(" ORDER BY start_date DESC, session_id LIMIT ? OFFSET ?");
        let mut q = sqlx::query(&sql);
        for v in [
            &filter.target,
            &filter.owner,
            &filter.status,
            &filter.session_id,
        ]
        .into_iter()
        .flatten()
        {
            q = q.bind(v);
        }
        for v in [filter.invoked_after, filter.invoked_before]
            .into_iter()
            .flatten()
        {
            q = q.bind(v);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(Session::from_row).collect())
    }

    /// What a credential is now, without opening any secret: its owner, `Active`/`Inactive`
    /// (always `Active` for temporary credentials) and, for temporary ones, the expiry.
    /// `None` when it no longer exists.
    pub async fn credential_state(
        &self,
        access_key_id: &str,
    ) -> Result<Option<CredentialState>, StoreError> {
        if let Some(r) =
            sqlx::query("SELECT user_id, status FROM access_keys WHERE access_key_id = ?")
                .bind(access_key_id)
                .fetch_optional(&self.pool)
                .await?
        {
            return Ok(Some(CredentialState {
                user_id: r.get("user_id"),
                active: r.get::<String, _>("status") == "Active",
                expires_at: None,
            }));
        }
        let row = sqlx::query(
            "SELECT user_id, expires_at FROM session_credentials WHERE access_key_id = ?",
        )
        .bind(access_key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| CredentialState {
            user_id: r.get("user_id"),
            active: true,
            expires_at: Some(r.get("expires_at")),
        }))
    }

    /// Whether a grant expired in `(after, until]` (epoch ms): the revocation sweep then
    /// re-decides the open sessions.
    pub async fn grant_expired_between(&self, after: i64, until: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT EXISTS(SELECT 1 FROM grants WHERE expires_at > ? AND expires_at <= ?) AS e",
        )
        .bind(after)
        .bind(until)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<bool, _>("e")?)
    }

    /// Marks sessions left open by a previous run of the server as failed: their channels are gone.
    pub async fn fail_orphaned_sessions(&self) -> Result<u64, StoreError> {
        let res = sqlx::query(
            "UPDATE sessions SET status = 'Failed', end_date = ?, end_reason = 'server restarted', \
             end_kind = 'ServerRestarted' WHERE status NOT IN ('Terminated', 'Failed')",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }
}

/// Random upper-case letters and digits, for ids AWS writes that way.
pub fn random_upper(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// A random secret of `n` characters from the base64 alphabet (as AWS secret keys look).
pub fn random_secret(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Secrets an older version sealed unbound (`enc1:`) or kept in clear are re-sealed bound
    /// to their row at start, and open as before; until then, they are refused where used.
    #[tokio::test]
    async fn old_secrets_are_resealed_bound_to_their_row() {
        let dir = std::env::temp_dir().join(format!("airlock-reseal-{}", std::process::id()));
        crate::datadir::private_dir(&dir).unwrap();
        let key = crate::secrets::MasterKey::load_or_create(&dir.join("master.key")).unwrap();
        let store = Store::open_in_dir(&dir, key.clone()).await.unwrap();
        let user = store.create_user("old", false).await.unwrap();
        let unbound = store.create_access_key(&user.user_id).await.unwrap();
        let plain = store.create_access_key(&user.user_id).await.unwrap();
        for (k, stored) in [
            (&unbound, key.seal_unbound(&unbound.secret_access_key)),
            (&plain, plain.secret_access_key.clone()),
        ] {
            sqlx::query("UPDATE access_keys SET secret_access_key = ? WHERE access_key_id = ?")
                .bind(stored)
                .bind(&k.access_key_id)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let err = store.access_key(&unbound.access_key_id).await.unwrap_err();
        assert!(err.to_string().contains("old unbound format"), "{err}");
        store.pool.close().await;
        // The next start re-seals both.
        let store = Store::open_in_dir(&dir, key).await.unwrap();
        for k in [&unbound, &plain] {
            let (opened, _) = store.access_key(&k.access_key_id).await.unwrap().unwrap();
            assert_eq!(opened.secret_access_key, k.secret_access_key);
            let stored: String = sqlx::query_scalar(
                "SELECT secret_access_key FROM access_keys WHERE access_key_id = ?",
            )
            .bind(&k.access_key_id)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            assert!(stored.starts_with("enc2:"), "{stored}");
        }
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
