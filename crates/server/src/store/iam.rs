//! Identities and access in the store: groups, managed and inline policies, attachments,
//! user tags and boundaries, time-bound grants, temporary credentials, instance tags.

use sqlx::Row;

use super::{is_unique_violation, now_ms, random_upper, Store, StoreError, User};

/// A policy document with the name it is known by (for explanations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDocument {
    /// `managed/NAME`, `inline/user/NAME`, `inline/group/G/NAME`, `grant/NAME`.
    pub name: String,
    /// The JSON text.
    pub document: String,
}

/// A group of users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Stable id.
    pub group_id: String,
    /// Unique name.
    pub name: String,
    /// Creation, epoch ms.
    pub created_at: i64,
}

/// A managed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedPolicy {
    /// Unique name.
    pub name: String,
    /// The JSON document (validated before storing).
    pub document: String,
    /// Free text.
    pub description: String,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// A time-bound grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Id.
    pub grant_id: String,
    /// User.
    pub user_id: String,
    /// Label (the managed policy it copied, or the file).
    pub name: String,
    /// Policy document.
    pub document: String,
    /// Why.
    pub reason: String,
    /// Until, epoch ms.
    pub expires_at: i64,
}

/// Temporary credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCredentials {
    /// `ASIA…`.
    pub access_key_id: String,
    /// The user they act for.
    pub user_id: String,
    /// Secret (clear, once opened).
    pub secret_access_key: String,
    /// Hex SHA-256 of the session token.
    pub token_hash: String,
    /// Whether MFA was presented when they were issued.
    pub mfa: bool,
    /// Issue time, epoch ms.
    pub issued_at: i64,
    /// Expiry, epoch ms.
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE user_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| User::from_row(&r)))
    }

    /// Sets (or clears) a user's console password hash (argon2id PHC string).
    pub async fn set_password_hash(
        &self,
        user_id: &str,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = ? WHERE user_id = ?")
            .bind(hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A user's console password hash.
    pub async fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.get("password_hash")))
    }

    /// Sets a user's permissions boundary (a managed policy name) or clears it.
    pub async fn set_boundary(
        &self,
        user_id: &str,
        policy: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(p) = policy {
            if self.policy(p).await?.is_none() {
                return Err(StoreError::NotFound(format!("policy {p}")));
            }
        }
        sqlx::query("UPDATE users SET permissions_boundary = ? WHERE user_id = ?")
            .bind(policy)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The document of a user's permissions boundary, if any.
    pub async fn boundary(&self, user_id: &str) -> Result<Option<NamedDocument>, StoreError> {
        let row = sqlx::query(
            "SELECT p.name, p.document FROM users u JOIN policies p ON p.name = u.permissions_boundary WHERE u.user_id = ?",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| NamedDocument {
            name: format!("managed/{}", r.get::<String, _>("name")),
            document: r.get("document"),
        }))
    }

    /// A user's tags (principal tags).
    pub async fn user_tags(&self, user_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM user_tags WHERE user_id = ? ORDER BY key")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect())
    }

    /// Sets one tag on a user.
    pub async fn tag_user(&self, user_id: &str, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO user_tags (user_id, key, value) VALUES (?, ?, ?) \
             ON CONFLICT(user_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(user_id)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes one tag from a user.
    pub async fn untag_user(&self, user_id: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_tags WHERE user_id = ? AND key = ?")
            .bind(user_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets an access key's status (`Active` / `Inactive`); false when there is no such key.
    pub async fn set_access_key_status(&self, id: &str, status: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("UPDATE access_keys SET status = ? WHERE access_key_id = ?")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    // ---- groups ---------------------------------------------------------------------------

    /// Creates a group.
    pub async fn create_group(&self, name: &str) -> Result<Group, StoreError> {
        let g = Group {
            group_id: format!("AGPA{}", random_upper(17)),
            name: name.to_owned(),
            created_at: now_ms(),
        };
        let res = sqlx::query("INSERT INTO groups (group_id, name, created_at) VALUES (?, ?, ?)")
            .bind(&g.group_id)
            .bind(&g.name)
            .bind(g.created_at)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(g),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("group {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A group by name.
    pub async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let row = sqlx::query("SELECT * FROM groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Group {
            group_id: r.get("group_id"),
            name: r.get("name"),
            created_at: r.get("created_at"),
        }))
    }

    /// All groups.
    pub async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query("SELECT * FROM groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Group {
                group_id: r.get("group_id"),
                name: r.get("name"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    /// Deletes a group (memberships and attachments go with it).
    pub async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let Some(g) = self.group_by_name(name).await? else {
            return Ok(false);
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM policy_attachments WHERE principal_type = 'group' AND principal_id = ?",
        )
        .bind(&g.group_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM inline_policies WHERE principal_type = 'group' AND principal_id = ?",
        )
        .bind(&g.group_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM groups WHERE group_id = ?")
            .bind(&g.group_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds a user to a group (idempotent).
    pub async fn add_member(&self, group_id: &str, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)")
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a user from a group.
    pub async fn remove_member(&self, group_id: &str, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The groups a user belongs to.
    pub async fn groups_of(&self, user_id: &str) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.* FROM groups g JOIN group_members m ON m.group_id = g.group_id WHERE m.user_id = ? ORDER BY g.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Group {
                group_id: r.get("group_id"),
                name: r.get("name"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    // ---- policies -------------------------------------------------------------------------

    /// Creates a managed policy (the caller has validated the document); fails with
    /// `AlreadyExists` when the name is taken, so that creating never rewrites a policy.
    pub async fn create_policy(
        &self,
        name: &str,
        document: &str,
        description: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO policies (name, document, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(document)
        .bind(description)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("policy {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces an existing managed policy's document and description; `NotFound` when there
    /// is none (updating never creates).
    pub async fn update_policy(
        &self,
        name: &str,
        document: &str,
        description: &str,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "UPDATE policies SET document = ?, description = ?, updated_at = ? WHERE name = ?",
        )
        .bind(document)
        .bind(description)
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("policy {name}")));
        }
        Ok(())
    }

    /// A managed policy.
    pub async fn policy(&self, name: &str) -> Result<Option<ManagedPolicy>, StoreError> {
        let row = sqlx::query("SELECT * FROM policies WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| ManagedPolicy {
            name: r.get("name"),
            document: r.get("document"),
            description: r.get("description"),
            updated_at: r.get("updated_at"),
        }))
    }

    /// All managed policies.
    pub async fn list_policies(&self) -> Result<Vec<ManagedPolicy>, StoreError> {
        let rows = sqlx::query("SELECT * FROM policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| ManagedPolicy {
                name: r.get("name"),
                document: r.get("document"),
                description: r.get("description"),
                updated_at: r.get("updated_at"),
            })
            .collect())
    }

    /// Deletes a managed policy and its attachments.
    pub async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM policies WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE users SET permissions_boundary = NULL WHERE permissions_boundary = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Attaches a managed policy to a user or group (idempotent).
    pub async fn attach_policy(
        &self,
        policy: &str,
        principal_type: &str,
        principal_id: &str,
    ) -> Result<(), StoreError> {
        if self.policy(policy).await?.is_none() {
            return Err(StoreError::NotFound(format!("policy {policy}")));
        }
        sqlx::query("INSERT OR IGNORE INTO policy_attachments (policy_name, principal_type, principal_id) VALUES (?, ?, ?)")
            .bind(policy)
            .bind(principal_type)
            .bind(principal_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Detaches a managed policy.
    pub async fn detach_policy(
        &self,
        policy: &str,
        principal_type: &str,
        principal_id: &str,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM policy_attachments WHERE policy_name = ? AND principal_type = ? AND principal_id = ?")
            .bind(policy)
            .bind(principal_type)
            .bind(principal_id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Names of the managed policies attached to a principal.
    pub async fn attached_policies(
        &self,
        principal_type: &str,
        principal_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT policy_name FROM policy_attachments WHERE principal_type = ? AND principal_id = ? ORDER BY policy_name",
        )
        .bind(principal_type)
        .bind(principal_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("policy_name")).collect())
    }

    /// Creates or replaces an inline policy.
    pub async fn put_inline_policy(
        &self,
        principal_type: &str,
        principal_id: &str,
        name: &str,
        document: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inline_policies (principal_type, principal_id, name, document) VALUES (?, ?, ?, ?) \
             ON CONFLICT(principal_type, principal_id, name) DO UPDATE SET document = excluded.document",
        )
        .bind(principal_type)
        .bind(principal_id)
        .bind(name)
        .bind(document)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes an inline policy.
    pub async fn delete_inline_policy(
        &self,
        principal_type: &str,
        principal_id: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM inline_policies WHERE principal_type = ? AND principal_id = ? AND name = ?")
            .bind(principal_type)
            .bind(principal_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Inline policies of a principal: (name, document).
    pub async fn inline_policies(
        &self,
        principal_type: &str,
        principal_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, document FROM inline_policies WHERE principal_type = ? AND principal_id = ? ORDER BY name")
            .bind(principal_type)
            .bind(principal_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("name"), r.get("document")))
            .collect())
    }

    /// Every identity policy in force for a user now: managed (direct and through groups),
    /// inline (user and groups), and unexpired grants.
    pub async fn effective_policies(
        &self,
        user_id: &str,
    ) -> Result<Vec<NamedDocument>, StoreError> {
        let mut out = Vec::new();
        let managed = sqlx::query(
            "SELECT DISTINCT p.name, p.document FROM policies p JOIN policy_attachments a ON a.policy_name = p.name \
             WHERE (a.principal_type = 'user' AND a.principal_id = ?1) \
                OR (a.principal_type = 'group' AND a.principal_id IN (SELECT group_id FROM group_members WHERE user_id = ?1)) \
             ORDER BY p.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        out.extend(managed.iter().map(|r| NamedDocument {
            name: format!("managed/{}", r.get::<String, _>("name")),
            document: r.get("document"),
        }));
        let inline = sqlx::query(
            "SELECT i.principal_type, COALESCE(g.name, '') AS gname, i.name, i.document FROM inline_policies i \
             LEFT JOIN groups g ON i.principal_type = 'group' AND g.group_id = i.principal_id \
             WHERE (i.principal_type = 'user' AND i.principal_id = ?1) \
                OR (i.principal_type = 'group' AND i.principal_id IN (SELECT group_id FROM group_members WHERE user_id = ?1)) \
             ORDER BY i.principal_type, i.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        out.extend(inline.iter().map(|r| {
            let ty: String = r.get("principal_type");
            let name: String = r.get("name");
            let label = if ty == "group" {
                format!("inline/group/{}/{name}", r.get::<String, _>("gname"))
            } else {
                format!("inline/user/{name}")
            };
            NamedDocument {
                name: label,
                document: r.get("document"),
            }
        }));
        let grants = sqlx::query("SELECT name, document FROM grants WHERE user_id = ? AND expires_at > ? ORDER BY created_at")
            .bind(user_id)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        out.extend(grants.iter().map(|r| NamedDocument {
            name: format!("grant/{}", r.get::<String, _>("name")),
            document: r.get("document"),
        }));
        Ok(out)
    }

    // ---- grants ---------------------------------------------------------------------------

    /// Grants a policy document to a user until `expires_at`.
    pub async fn create_grant(
        &self,
        user_id: &str,
        name: &str,
        document: &str,
        reason: &str,
        expires_at: i64,
    ) -> Result<Grant, StoreError> {
        let g = Grant {
            grant_id: uuid::Uuid::new_v4().to_string(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            document: document.to_owned(),
            reason: reason.to_owned(),
            expires_at,
        };
        sqlx::query("INSERT INTO grants (grant_id, user_id, name, document, reason, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&g.grant_id)
            .bind(&g.user_id)
            .bind(&g.name)
            .bind(&g.document)
            .bind(&g.reason)
            .bind(now_ms())
            .bind(g.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(g)
    }

    /// A user's grants (expired ones included, for the record).
    pub async fn list_grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query("SELECT * FROM grants WHERE user_id = ? ORDER BY expires_at DESC")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Grant {
                grant_id: r.get("grant_id"),
                user_id: r.get("user_id"),
                name: r.get("name"),
                document: r.get("document"),
                reason: r.get("reason"),
                expires_at: r.get("expires_at"),
            })
            .collect())
    }

    /// Revokes a grant.
    pub async fn delete_grant(&self, grant_id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM grants WHERE grant_id = ?")
            .bind(grant_id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    // ---- temporary credentials -------------------------------------------------------------

    /// Stores temporary credentials (secret sealed, token only as a hash).
    pub async fn create_session_credentials(
        &self,
        c: &SessionCredentials,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_credentials (access_key_id, user_id, secret_access_key, token_hash, mfa, issued_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.access_key_id)
        .bind(&c.user_id)
        .bind(self.key.seal(
            &c.secret_access_key,
            &super::secret_at(
                "session_credentials",
                &super::secret_row(&c.access_key_id, &c.user_id),
            ),
        ))
        .bind(&c.token_hash)
        .bind(c.mfa)
        .bind(c.issued_at)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Temporary credentials by key id, with the secret opened.
    pub async fn session_credentials(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SessionCredentials>, StoreError> {
        let row = sqlx::query("SELECT * FROM session_credentials WHERE access_key_id = ?")
            .bind(access_key_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let sealed: String = r.get("secret_access_key");
        let access_key_id: String = r.get("access_key_id");
        let user_id: String = r.get("user_id");
        let secret_access_key = self.key.open(
            &sealed,
            &super::secret_at(
                "session_credentials",
                &super::secret_row(&access_key_id, &user_id),
            ),
        )?;
        Ok(Some(SessionCredentials {
            access_key_id,
            user_id,
            secret_access_key,
            token_hash: r.get("token_hash"),
            mfa: r.get("mfa"),
            issued_at: r.get("issued_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    // ---- instance tags ----------------------------------------------------------------------

    /// Tags of an instance.
    pub async fn instance_tags(
        &self,
        instance_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT key, value FROM instance_tags WHERE instance_id = ? ORDER BY key")
                .bind(instance_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect())
    }

    /// Sets tags on an instance (replacing values of existing keys).
    pub async fn tag_instance(
        &self,
        instance_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (k, v) in tags {
            sqlx::query(
                "INSERT INTO instance_tags (instance_id, key, value) VALUES (?, ?, ?) \
                 ON CONFLICT(instance_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(instance_id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes tags from an instance.
    pub async fn untag_instance(
        &self,
        instance_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for k in keys {
            sqlx::query("DELETE FROM instance_tags WHERE instance_id = ? AND key = ?")
                .bind(instance_id)
                .bind(k)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
