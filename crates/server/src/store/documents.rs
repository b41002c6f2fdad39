//! Stored session documents and their versions (CreateDocument / UpdateDocument …). Version
//! numbers are never reused: a counter in the document row numbers them, so a deleted version's
//! number does not come back with other content.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{is_unique_violation, now_ms, Store, StoreError};

/// A stored document (its latest and default versions, not their content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRow {
    /// Unique name.
    pub name: String,
    /// `DisplayName`.
    pub display_name: String,
    /// `Session`.
    pub document_type: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// The version sessions run.
    pub default_version: i64,
    /// The highest version that exists.
    pub latest_version: i64,
    /// Tags, as pairs.
    pub tags: Vec<(String, String)>,
}

impl DocumentRow {
    fn from_row(r: &SqliteRow) -> Self {
        DocumentRow {
            name: r.get("name"),
            display_name: r.get("display_name"),
            document_type: r.get("document_type"),
            created_at: r.get("created_at"),
            default_version: r.get("default_version"),
            latest_version: r.get("max_version"),
            tags: super::activation_tags(&r.get::<String, _>("tags")),
        }
    }
}

/// One version of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    /// Document name.
    pub name: String,
    /// 1, 2, …
    pub version: i64,
    /// `VersionName`, when given.
    pub version_name: Option<String>,
    /// The text as written.
    pub content: String,
    /// `JSON` or `YAML`.
    pub format: String,
    /// Hex SHA-256 of the content.
    pub hash: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

impl VersionRow {
    fn from_row(r: &SqliteRow) -> Self {
        VersionRow {
            name: r.get("name"),
            version: r.get("version"),
            version_name: r.get("version_name"),
            content: r.get("content"),
            format: r.get("format"),
            hash: r.get("hash"),
            created_at: r.get("created_at"),
        }
    }
}

/// A version to store.
#[derive(Clone, Debug)]
pub struct NewVersion<'a> {
    /// The text.
    pub content: &'a str,
    /// `JSON` or `YAML`.
    pub format: &'a str,
    /// Hex SHA-256 of the text.
    pub hash: &'a str,
    /// `VersionName`.
    pub version_name: Option<&'a str>,
}

const DOCUMENT: &str = "SELECT d.*, (SELECT MAX(version) FROM document_versions v WHERE v.name = d.name) AS max_version FROM documents d";

impl Store {
    /// Stores a new document as version 1; `AlreadyExists` when the name is taken.
    pub async fn create_document(
        &self,
        name: &str,
        display_name: &str,
        tags_json: &str,
        v: &NewVersion<'_>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "INSERT INTO documents (name, display_name, document_type, created_at, default_version, latest_version, tags) VALUES (?, ?, 'Session', ?, 1, 1, ?)",
        )
        .bind(name)
        .bind(display_name)
        .bind(now)
        .bind(tags_json)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("document {name}")))
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO document_versions (name, version, version_name, content, format, hash, created_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(v.version_name)
        .bind(v.content)
        .bind(v.format)
        .bind(v.hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a version (the latest; also the default when `make_default`). `NotFound` when the
    /// document does not exist, `AlreadyExists` when the version name is taken.
    pub async fn add_document_version(
        &self,
        name: &str,
        v: &NewVersion<'_>,
        make_default: bool,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The update takes the write lock first, so concurrent updates number in turn.
        let row = sqlx::query(
            "UPDATE documents SET latest_version = latest_version + 1, \
             default_version = CASE WHEN ? THEN latest_version + 1 ELSE default_version END \
             WHERE name = ? RETURNING latest_version",
        )
        .bind(make_default)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("document {name}")));
        };
        let version: i64 = row.get("latest_version");
        let res = sqlx::query(
            "INSERT INTO document_versions (name, version, version_name, content, format, hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(version)
        .bind(v.version_name)
        .bind(v.content)
        .bind(v.format)
        .bind(v.hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "version name {}",
                    v.version_name.unwrap_or("")
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(version)
    }

    /// Stores `name` as version 1 unless it exists (the built-in preferences document).
    pub async fn ensure_document(&self, name: &str, v: &NewVersion<'_>) -> Result<(), StoreError> {
        match self.create_document(name, "", "[]", v).await {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A document by name.
    pub async fn document(&self, name: &str) -> Result<Option<DocumentRow>, StoreError> {
        let row = sqlx::query(&format!("{DOCUMENT} WHERE d.name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(DocumentRow::from_row))
    }

    /// A document with one version: `version`, or the default when `None`.
    pub async fn document_at(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<(DocumentRow, VersionRow)>, StoreError> {
        let Some(doc) = self.document(name).await? else {
            return Ok(None);
        };
        let v = version.unwrap_or(doc.default_version);
        let row = sqlx::query("SELECT * FROM document_versions WHERE name = ? AND version = ?")
            .bind(name)
            .bind(v)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (doc, VersionRow::from_row(&r))))
    }

    /// The version of `name` called `version_name`.
    pub async fn document_version_named(
        &self,
        name: &str,
        version_name: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT version FROM document_versions WHERE name = ? AND version_name = ?",
        )
        .bind(name)
        .bind(version_name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get("version")))
    }

    /// Every version of `name`, newest first.
    pub async fn document_versions(&self, name: &str) -> Result<Vec<VersionRow>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM document_versions WHERE name = ? ORDER BY version DESC")
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(VersionRow::from_row).collect())
    }

    /// Every stored document, by name.
    pub async fn list_documents(&self) -> Result<Vec<DocumentRow>, StoreError> {
        let rows = sqlx::query(&format!("{DOCUMENT} ORDER BY d.name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(DocumentRow::from_row).collect())
    }

    /// Makes an existing version the default; false when there is no such version.
    pub async fn set_default_document_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE documents SET default_version = ? WHERE name = ? AND EXISTS \
             (SELECT 1 FROM document_versions WHERE name = ? AND version = ?)",
        )
        .bind(version)
        .bind(name)
        .bind(name)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Deletes a document and every version; false when there was none.
    pub async fn delete_document(&self, name: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM documents WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Deletes one version that is not the default; false when there was none such.
    pub async fn delete_document_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "DELETE FROM document_versions WHERE name = ? AND version = ? AND version != \
             (SELECT default_version FROM documents WHERE name = ?)",
        )
        .bind(name)
        .bind(version)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }
}
