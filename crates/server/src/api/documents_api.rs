//! The SSM document operations for Session documents, in AWS's shapes: CreateDocument,
//! UpdateDocument, GetDocument, DescribeDocument, ListDocuments, DeleteDocument,
//! UpdateDocumentDefaultVersion and ListDocumentVersions.
//!
//! - Only `Session` documents are kept; other types are refused with a clear error.
//! - The AWS-owned documents ([`super::documents::BUILTIN`]) are listed and readable with Owner
//!   `Amazon` and can be neither changed nor deleted.
//! - `SSM-SessionManagerRunShell` holds the session preferences. It always exists (the server
//!   stores its built-in default at start), cannot be deleted, and — unlike other documents,
//!   where UpdateDocument only adds a latest version — an update also makes the new version the
//!   default, so that AWS's documented procedure (`aws ssm update-document --name
//!   SSM-SessionManagerRunShell --content file://prefs.json --document-version '$LATEST'`)
//!   changes the preferences. Whenever its default version changes, the parsed preferences are
//!   put in force for every new session ([`crate::preferences::PreferencesCell`]).
//! - Every operation is authorised on the document's ARN (`ssm:CreateDocument` …), and every
//!   change is on the audit trail with the version and content hash it made.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::documents::{builtin, BUILTIN, SHELL};
use super::sessions::{document_arn, document_name};
use super::{decode_next_token, encode_next_token, invalid, timestamp, ApiError, Caller};
use crate::document::{self, Format};
use crate::preferences::Preferences;
use crate::state::AppState;
use crate::store::documents::{DocumentRow, NewVersion, VersionRow};
use crate::store::{Store, StoreError};

/// Most documents stored (AWS's limit of active documents).
pub const MAX_DOCUMENTS: usize = 500;
/// Most versions one document keeps.
pub const MAX_VERSIONS: i64 = 1000;
/// The creation date shown for the built-in documents (they have no stored row).
const BUILTIN_CREATED_MS: i64 = 1_546_300_800_000;

/// Input of the operations that name a document (and maybe a version).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DocumentInput {
    name: Option<String>,
    content: Option<String>,
    display_name: Option<String>,
    version_name: Option<String>,
    document_version: Option<String>,
    document_format: Option<String>,
    document_type: Option<String>,
    target_type: Option<String>,
    requires: Option<Value>,
    attachments: Option<Value>,
    #[serde(default)]
    tags: Vec<TagInput>,
    #[serde(default)]
    force: bool,
    max_results: Option<i64>,
    next_token: Option<String>,
}

/// One `{Key, Value}` tag.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagInput {
    key: String,
    #[serde(default)]
    value: String,
}

/// ListDocuments input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListInput {
    document_filter_list: Option<Vec<OldFilter>>,
    filters: Option<Vec<KeyValuesFilter>>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

/// A `DocumentFilter` (lower-case members, as in the model).
#[derive(Debug, Deserialize)]
pub struct OldFilter {
    key: String,
    value: String,
}

/// A `DocumentKeyValuesFilter`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyValuesFilter {
    key: String,
    #[serde(default)]
    values: Vec<String>,
}

fn required<'a>(v: &'a Option<String>, member: &str) -> Result<&'a str, ApiError> {
    v.as_deref().ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn plain_name(name: &str) -> Result<(), ApiError> {
    let ok = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            "name",
            "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{3,128}$",
        ))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::client(
        "InvalidDocument",
        format!("Document with name {name} does not exist."),
    )
}

fn hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

fn format_of(v: &Option<String>) -> Result<Format, ApiError> {
    match v.as_deref() {
        None => Ok(Format::Json),
        Some(f) => Format::parse(f).ok_or_else(|| {
            invalid(
                f,
                "documentFormat",
                "Member must satisfy enum value set: [YAML, JSON] (Session documents are JSON or YAML)",
            )
        }),
    }
}

/// A requested version: `$LATEST`, `$DEFAULT` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Latest,
    Default,
    Number(i64),
}

fn parse_version(v: Option<&str>) -> Result<Option<Version>, ApiError> {
    match v {
        None => Ok(None),
        Some("$LATEST") => Ok(Some(Version::Latest)),
        Some("$DEFAULT") => Ok(Some(Version::Default)),
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n >= 1 && !n.to_string().starts_with('0') => Ok(Some(Version::Number(n))),
            _ => Err(invalid(
                n,
                "documentVersion",
                "Member must satisfy regular expression pattern: ([$]LATEST|[$]DEFAULT|^[1-9][0-9]*$)",
            )),
        },
    }
}

fn bad_version(name: &str) -> ApiError {
    ApiError::client(
        "InvalidDocumentVersion",
        format!("The document version is not valid or does not exist for document {name}."),
    )
}

/// A document as the operations see it: built-in (AWS-owned) or stored.
enum Doc {
    Builtin(&'static str, &'static str),
    Stored(DocumentRow),
}

async fn find(state: &AppState, name: &str) -> Result<Doc, ApiError> {
    if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return Ok(Doc::Builtin(n, text));
    }
    match state.store.document(name).await? {
        Some(d) => Ok(Doc::Stored(d)),
        None => Err(not_found(name)),
    }
}

async fn authorize_doc(
    state: &AppState,
    caller: &Caller,
    action: &str,
    name: &str,
) -> Result<(), ApiError> {
    let tags = match state.store.document(name).await? {
        Some(d) => d.tags,
        None => Vec::new(),
    };
    crate::authz::authorize(
        state,
        caller,
        action,
        &[crate::authz::Resource {
            arn: document_arn(state, name),
            tags,
        }],
        &[],
    )
    .await
}

/// The stored version a request names (by number, `$LATEST`, `$DEFAULT` and/or VersionName).
async fn pick_version(
    state: &AppState,
    doc: &DocumentRow,
    version: Option<Version>,
    version_name: Option<&str>,
) -> Result<VersionRow, ApiError> {
    let by_name = match version_name {
        Some(vn) => Some(
            state
                .store
                .document_version_named(&doc.name, vn)
                .await?
                .ok_or_else(|| bad_version(&doc.name))?,
        ),
        None => None,
    };
    let number = match (version, by_name) {
        (None, None) | (Some(Version::Default), None) => doc.default_version,
        (None, Some(n)) => n,
        (Some(Version::Latest), None) => doc.latest_version,
        (Some(Version::Number(n)), None) => n,
        (Some(v), Some(n)) => {
            let wanted = match v {
                Version::Latest => doc.latest_version,
                Version::Default => doc.default_version,
                Version::Number(x) => x,
            };
            if wanted != n {
                return Err(bad_version(&doc.name));
            }
            n
        }
    };
    state
        .store
        .document_at(&doc.name, Some(number))
        .await?
        .map(|(_, v)| v)
        .ok_or_else(|| bad_version(&doc.name))
}

fn parameters_json(parsed: &Option<document::SessionDocument>) -> Value {
    let Some(d) = parsed else { return json!([]) };
    Value::Array(
        d.parameters
            .iter()
            .map(|(n, p)| {
                let mut v = json!({
                    "Name": n,
                    "Type": match p.kind { document::ParamType::String => "String", document::ParamType::StringList => "StringList" },
                    "Description": p.description,
                });
                if let Some(dv) = p.default_text() {
                    v["DefaultValue"] = json!(dv);
                }
                v
            })
            .collect(),
    )
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect(),
    )
}

/// The `DocumentDescription` of one version.
#[allow(clippy::too_many_arguments)]
fn description(
    name: &str,
    owner: &str,
    display_name: &str,
    created_ms: i64,
    version: i64,
    version_name: Option<&str>,
    latest: i64,
    default: i64,
    content: &str,
    format: &str,
    tags: &[(String, String)],
) -> Value {
    let parsed = Format::parse(format)
        .and_then(|f| document::parse_text(content, f).ok())
        .and_then(|v| document::validate(&v).ok());
    let mut d = json!({
        "Hash": hash(content),
        "HashType": "Sha256",
        "Name": name,
        "Owner": owner,
        "CreatedDate": timestamp(created_ms),
        "Status": "Active",
        "DocumentVersion": version.to_string(),
        "Description": parsed.as_ref().map(|p| p.description.clone()).unwrap_or_default(),
        "Parameters": parameters_json(&parsed),
        "PlatformTypes": ["Linux", "MacOS"],
        "DocumentType": "Session",
        "SchemaVersion": "1.0",
        "LatestVersion": latest.to_string(),
        "DefaultVersion": default.to_string(),
        "DocumentFormat": format,
        "Tags": tags_json(tags),
    });
    if !display_name.is_empty() {
        d["DisplayName"] = json!(display_name);
    }
    if let Some(vn) = version_name {
        d["VersionName"] = json!(vn);
    }
    d
}

fn stored_description(state: &AppState, doc: &DocumentRow, v: &VersionRow) -> Value {
    description(
        &doc.name,
        &state.config.account_id,
        &doc.display_name,
        doc.created_at,
        v.version,
        v.version_name.as_deref(),
        doc.latest_version,
        doc.default_version,
        &v.content,
        &v.format,
        &doc.tags,
    )
}

fn builtin_description(name: &str, text: &str) -> Value {
    description(
        name,
        "Amazon",
        "",
        BUILTIN_CREATED_MS,
        1,
        None,
        1,
        1,
        text,
        "JSON",
        &[],
    )
}

/// Parses and checks content for document `name` (the preferences document must stay a
/// Standard_Stream document).
fn check_content(
    name: &str,
    content: &str,
    format: Format,
) -> Result<document::SessionDocument, ApiError> {
    let v = document::parse_text(content, format)?;
    let doc = document::validate(&v)?;
    if name == SHELL && doc.session_type != document::SessionType::StandardStream {
        return Err(document::content_error(format!(
            "{SHELL} holds the session preferences: its sessionType must be Standard_Stream."
        )));
    }
    Ok(doc)
}

fn content_member(v: &Option<String>) -> Result<&str, ApiError> {
    let c = required(v, "content")?;
    if c.is_empty() {
        return Err(invalid(
            "",
            "content",
            "Member must have length greater than or equal to 1",
        ));
    }
    Ok(c)
}

fn check_version_name(v: &Option<String>) -> Result<(), ApiError> {
    if let Some(vn) = v {
        let ok = (1..=128).contains(&vn.len())
            && vn
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
        if !ok {
            return Err(invalid(
                vn,
                "versionName",
                "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{1,128}$",
            ));
        }
    }
    Ok(())
}

async fn audit_change(
    state: &AppState,
    caller: &Caller,
    action: &str,
    name: &str,
    detail: Value,
) -> Result<(), ApiError> {
    let event = crate::store::audit::AuditEvent {
        event: "document".into(),
        principal: caller.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: action.into(),
        resource: document_arn(state, name),
        decision: "Changed".into(),
        statement: String::new(),
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: detail.to_string(),
    };
    state
        .store
        .append_audit(&event)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::internal(format!("audit record could not be written: {e}")))
}

/// Routes one document operation; `None` when `op` is not one.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Option<Result<Value, ApiError>> {
    Some(match op {
        "CreateDocument" => create(state, caller, input).await,
        "UpdateDocument" => update(state, caller, input).await,
        "GetDocument" => get(state, caller, input).await,
        "DescribeDocument" => describe(state, caller, input).await,
        "ListDocuments" => list(state, caller, input).await,
        "DeleteDocument" => delete(state, caller, input).await,
        "UpdateDocumentDefaultVersion" => set_default(state, caller, input).await,
        "ListDocumentVersions" => versions(state, caller, input).await,
        _ => return None,
    })
}

async fn create(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = required(&i.name, "name")?;
    plain_name(name)?;
    let content = content_member(&i.content)?;
    authorize_doc(state, caller, "ssm:CreateDocument", name).await?;
    match i.document_type.as_deref() {
        Some("Session") => {}
        other => {
            return Err(invalid(
                other.unwrap_or("Command"),
                "documentType",
                "Airlock stores Session documents only: give DocumentType Session (--document-type Session)",
            ))
        }
    }
    if i.requires.is_some() || i.attachments.is_some() {
        return Err(ApiError::validation(
            "Session documents take neither Requires nor Attachments.",
        ));
    }
    // TargetType restricts which resource types a document targets; Session documents
    // target managed nodes only, so it is accepted and has no effect.
    let _ = &i.target_type;
    check_version_name(&i.version_name)?;
    if let Some(d) = &i.display_name {
        if d.len() > 1024
            || !d
                .chars()
                .all(|c| c.is_alphanumeric() || "_.-:/ ".contains(c))
        {
            return Err(invalid(
                d,
                "displayName",
                "Member must satisfy regular expression pattern: ^[\\w\\.\\-\\:\\/ ]*$",
            ));
        }
    }
    if i.tags.len() > 1000
        || i.tags.iter().any(|t| {
            t.key.is_empty() || t.key.chars().count() > 128 || t.value.chars().count() > 256
        })
    {
        return Err(ApiError::validation(
            "Tags: at most 1000, each Key 1–128 and Value 0–256 characters.",
        ));
    }
    let lower = name.to_ascii_lowercase();
    if builtin(name).is_some() || name == SHELL {
        return Err(ApiError::client(
            "DocumentAlreadyExists",
            format!("Document with same name {name} already exists"),
        ));
    }
    if ["aws", "amazon", "amzn"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return Err(invalid(
            name,
            "name",
            "Document names may not start with aws, amazon or amzn (reserved for AWS-owned documents)",
        ));
    }
    let format = format_of(&i.document_format)?;
    check_content(name, content, format)?;
    if state.store.list_documents().await?.len() >= MAX_DOCUMENTS {
        return Err(ApiError::client(
            "DocumentLimitExceeded",
            format!("You can have at most {MAX_DOCUMENTS} documents."),
        ));
    }
    let tags: Vec<Value> = i
        .tags
        .iter()
        .map(|t| json!({"Key": t.key, "Value": t.value}))
        .collect();
    let h = hash(content);
    let v = NewVersion {
        content,
        format: format.as_str(),
        hash: &h,
        version_name: i.version_name.as_deref(),
    };
    match state
        .store
        .create_document(
            name,
            i.display_name.as_deref().unwrap_or(""),
            &Value::Array(tags).to_string(),
            &v,
        )
        .await
    {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::client(
                "DocumentAlreadyExists",
                format!("Document with same name {name} already exists"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    audit_change(
        state,
        caller,
        "ssm:CreateDocument",
        name,
        json!({"Version": "1", "Hash": h}),
    )
    .await?;
    let (doc, ver) = state
        .store
        .document_at(name, Some(1))
        .await?
        .ok_or_else(|| ApiError::internal("document vanished after create"))?;
    Ok(json!({ "DocumentDescription": stored_description(state, &doc, &ver) }))
}

/// Puts the preferences of the default version of `SSM-SessionManagerRunShell` in force.
async fn apply_preferences(state: &AppState) -> Result<(), ApiError> {
    let p = stored_preferences(&state.store).await?;
    state.preferences.set(p);
    Ok(())
}

async fn stored_preferences(store: &Store) -> Result<Preferences, ApiError> {
    let Some((_, v)) = store.document_at(SHELL, None).await? else {
        return Ok(Preferences::default());
    };
    let format = Format::parse(&v.format).unwrap_or(Format::Json);
    Ok(check_content(SHELL, &v.content, format)?.preferences)
}

/// The built-in text of `SSM-SessionManagerRunShell`: the default preferences.
pub fn default_preferences_content() -> String {
    let v = json!({
        "schemaVersion": "1.0",
        "description": "Document to hold regional settings for Session Manager",
        "sessionType": "Standard_Stream",
        "inputs": document::inputs::to_inputs(&Preferences::default()),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// At server start: stores the built-in preferences document unless it exists, and returns
/// the preferences of its default version. A stored version that no longer parses (written
/// by another version of Airlock) is logged and the defaults are used.
pub async fn load_preferences(store: &Store) -> Result<Preferences, StoreError> {
    let content = default_preferences_content();
    let h = hash(&content);
    store
        .ensure_document(
            SHELL,
            &NewVersion {
                content: &content,
                format: "JSON",
                hash: &h,
                version_name: None,
            },
        )
        .await?;
    match stored_preferences(store).await {
        Ok(p) => Ok(p),
        Err(e) if e.code == "InternalServerError" => Err(StoreError::NotFound(format!(
            "the preferences document could not be read: {e}"
        ))),
        Err(e) => {
            tracing::error!("{SHELL}: its default version is not valid ({e}); the default preferences are in force");
            Ok(Preferences::default())
        }
    }
}

async fn update(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = required(&i.name, "name")?;
    plain_name(name)?;
    let content = content_member(&i.content)?;
    let version = parse_version(i.document_version.as_deref())?;
    check_version_name(&i.version_name)?;
    authorize_doc(state, caller, "ssm:UpdateDocument", name).await?;
    let doc = match find(state, name).await? {
        Doc::Builtin(..) => {
            return Err(ApiError::client(
                "InvalidDocumentOperation",
                format!("{name} is owned by Amazon and cannot be updated."),
            ))
        }
        Doc::Stored(d) => d,
    };
    match version {
        None | Some(Version::Latest) => {}
        Some(Version::Number(n)) if n == doc.latest_version => {}
        _ => {
            return Err(ApiError::client(
                "InvalidDocumentVersion",
                format!(
                    "Only the latest version ({}) of {name} can be updated.",
                    doc.latest_version
                ),
            ))
        }
    }
    let format = format_of(&i.document_format)?;
    check_content(name, content, format)?;
    let h = hash(content);
    let latest = state
        .store
        .document_at(name, Some(doc.latest_version))
        .await?;
    if latest.as_ref().is_some_and(|(_, v)| v.hash == h) {
        return Err(ApiError::client(
            "DuplicateDocumentContent",
            format!("The content of {name} is the same as its latest version."),
        ));
    }
    if state.store.document_versions(name).await?.len() as i64 >= MAX_VERSIONS {
        return Err(ApiError::client(
            "DocumentVersionLimitExceeded",
            format!("{name} has {MAX_VERSIONS} versions: delete some first."),
        ));
    }
    let v = NewVersion {
        content,
        format: format.as_str(),
        hash: &h,
        version_name: i.version_name.as_deref(),
    };
    let is_prefs = name == SHELL;
    let number = match state.store.add_document_version(name, &v, is_prefs).await {
        Ok(n) => n,
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::client(
                "DuplicateDocumentVersionName",
                format!(
                    "The version name {} is already used in {name}.",
                    i.version_name.as_deref().unwrap_or("")
                ),
            ))
        }
        Err(StoreError::NotFound(_)) => return Err(not_found(name)),
        Err(e) => return Err(e.into()),
    };
    audit_change(
        state,
        caller,
        "ssm:UpdateDocument",
        name,
        json!({"Version": number.to_string(), "Hash": h, "Default": is_prefs}),
    )
    .await?;
    if is_prefs {
        apply_preferences(state).await?;
    }
    let (doc, ver) = state
        .store
        .document_at(name, Some(number))
        .await?
        .ok_or_else(|| ApiError::internal("document version vanished after update"))?;
    Ok(json!({ "DocumentDescription": stored_description(state, &doc, &ver) }))
}

/// Name and requested version of a read; the name may be this deployment's ARN.
fn read_name<'a>(state: &AppState, i: &'a DocumentInput) -> Result<&'a str, ApiError> {
    let n = required(&i.name, "name")?;
    document_name(state, n)
}

async fn get(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = read_name(state, &i)?;
    let version = parse_version(i.document_version.as_deref())?;
    check_version_name(&i.version_name)?;
    let want = match &i.document_format {
        None => None,
        Some(_) => Some(format_of(&i.document_format)?),
    };
    authorize_doc(state, caller, "ssm:GetDocument", name).await?;
    let (created, display, number, version_name, content, format) = match find(state, name).await? {
        Doc::Builtin(n, text) => {
            if !matches!(
                version,
                None | Some(Version::Latest | Version::Default | Version::Number(1))
            ) || i.version_name.is_some()
            {
                return Err(bad_version(n));
            }
            (
                BUILTIN_CREATED_MS,
                String::new(),
                1,
                None,
                text.to_owned(),
                "JSON".to_owned(),
            )
        }
        Doc::Stored(d) => {
            let v = pick_version(state, &d, version, i.version_name.as_deref()).await?;
            (
                d.created_at,
                d.display_name,
                v.version,
                v.version_name,
                v.content,
                v.format,
            )
        }
    };
    let (content, format) = match want {
        Some(w) if w.as_str() != format => {
            let from = Format::parse(&format).unwrap_or(Format::Json);
            let v = document::parse_text(&content, from)?;
            (document::to_text(&v, w)?, w.as_str().to_owned())
        }
        _ => (content, format),
    };
    let mut out = json!({
        "Name": name,
        "CreatedDate": timestamp(created),
        "DocumentVersion": number.to_string(),
        "Status": "Active",
        "Content": content,
        "DocumentType": "Session",
        "DocumentFormat": format,
    });
    if !display.is_empty() {
        out["DisplayName"] = json!(display);
    }
    if let Some(vn) = version_name {
        out["VersionName"] = json!(vn);
    }
    Ok(out)
}

async fn describe(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = read_name(state, &i)?;
    let version = parse_version(i.document_version.as_deref())?;
    check_version_name(&i.version_name)?;
    authorize_doc(state, caller, "ssm:DescribeDocument", name).await?;
    let d = match find(state, name).await? {
        Doc::Builtin(n, text) => {
            if !matches!(
                version,
                None | Some(Version::Latest | Version::Default | Version::Number(1))
            ) || i.version_name.is_some()
            {
                return Err(bad_version(n));
            }
            builtin_description(n, text)
        }
        Doc::Stored(d) => {
            let v = pick_version(state, &d, version, i.version_name.as_deref()).await?;
            stored_description(state, &d, &v)
        }
    };
    Ok(json!({ "Document": d }))
}

fn identifier(d: &Value) -> Value {
    let mut out = json!({});
    for k in [
        "Name",
        "CreatedDate",
        "DisplayName",
        "Owner",
        "VersionName",
        "PlatformTypes",
        "DocumentType",
        "SchemaVersion",
        "DocumentFormat",
        "Tags",
    ] {
        if let Some(v) = d.get(k) {
            out[k] = v.clone();
        }
    }
    // The identifier names the default version.
    out["DocumentVersion"] = d["DefaultVersion"].clone();
    out
}

async fn list(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: ListInput = super::parse(input)?;
    let limit = i.max_results.unwrap_or(50);
    if !(1..=50).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 50",
        ));
    }
    let offset = decode_next_token(i.next_token.as_deref())?;
    super::authorize(
        state,
        caller,
        "ssm:ListDocuments",
        &format!(
            "arn:aws:ssm:{}:{}:*",
            state.config.region, state.config.account_id
        ),
    )
    .await?;
    // (key, values) pairs; a document must satisfy every filter.
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for f in i.document_filter_list.unwrap_or_default() {
        filters.push((f.key, vec![f.value]));
    }
    for f in i.filters.unwrap_or_default() {
        filters.push((f.key, f.values));
    }
    for (k, _) in &filters {
        if ![
            "Name",
            "Owner",
            "DocumentType",
            "PlatformTypes",
            "SearchKeyword",
        ]
        .contains(&k.as_str())
        {
            return Err(ApiError::client(
                "InvalidFilterKey",
                format!("The filter key {} isn't valid: Airlock filters on Name, Owner, DocumentType, PlatformTypes and SearchKeyword.", k.chars().take(64).collect::<String>()),
            ));
        }
    }
    let mut all: Vec<Value> = BUILTIN
        .iter()
        .map(|(n, t)| builtin_description(n, t))
        .collect();
    for d in state.store.list_documents().await? {
        if let Some((doc, v)) = state.store.document_at(&d.name, None).await? {
            all.push(stored_description(state, &doc, &v));
        }
    }
    all.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
    let account = state.config.account_id.clone();
    let keep = |d: &Value| {
        filters.iter().all(|(k, vs)| {
            let name = d["Name"].as_str().unwrap_or("");
            let owner = d["Owner"].as_str().unwrap_or("");
            vs.iter().any(|v| match k.as_str() {
                "Name" => name.starts_with(v.as_str()),
                "SearchKeyword" => name.to_lowercase().contains(&v.to_lowercase()),
                "Owner" => match v.as_str() {
                    "Self" | "Private" => owner == account,
                    "Amazon" => owner == "Amazon",
                    "All" | "Public" => true,
                    other => owner == other,
                },
                "DocumentType" => v == "Session",
                "PlatformTypes" => v == "Linux" || v == "MacOS",
                _ => false,
            })
        })
    };
    let matching: Vec<Value> = all.iter().filter(|d| keep(d)).map(identifier).collect();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(matching.len());
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(50))
        .min(matching.len());
    let mut out = json!({ "DocumentIdentifiers": matching[start..end] });
    if end < matching.len() {
        out["NextToken"] = json!(encode_next_token(end as i64));
    }
    Ok(out)
}

async fn delete(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = required(&i.name, "name")?;
    plain_name(name)?;
    let version = parse_version(i.document_version.as_deref())?;
    check_version_name(&i.version_name)?;
    // Force deletes documents shared with other accounts; nothing is shared here.
    let _ = i.force;
    authorize_doc(state, caller, "ssm:DeleteDocument", name).await?;
    let doc = match find(state, name).await? {
        Doc::Builtin(..) => {
            return Err(ApiError::client(
                "InvalidDocumentOperation",
                format!("{name} is owned by Amazon and cannot be deleted."),
            ))
        }
        Doc::Stored(d) => d,
    };
    if version.is_none() && i.version_name.is_none() {
        if name == SHELL {
            return Err(ApiError::client(
                "InvalidDocumentOperation",
                format!("{SHELL} holds the session preferences and cannot be deleted; update it instead."),
            ));
        }
        if !state.store.delete_document(name).await? {
            return Err(not_found(name));
        }
        audit_change(state, caller, "ssm:DeleteDocument", name, json!({})).await?;
        return Ok(json!({}));
    }
    let v = pick_version(state, &doc, version, i.version_name.as_deref()).await?;
    if v.version == doc.default_version {
        return Err(ApiError::client(
            "InvalidDocumentOperation",
            format!(
                "Version {} is the default version of {name}: make another version the default first.",
                v.version
            ),
        ));
    }
    if !state.store.delete_document_version(name, v.version).await? {
        return Err(bad_version(name));
    }
    audit_change(
        state,
        caller,
        "ssm:DeleteDocument",
        name,
        json!({"Version": v.version.to_string()}),
    )
    .await?;
    Ok(json!({}))
}

async fn set_default(
    state: &Arc<AppState>,
    caller: &Caller,
    input: Value,
) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = required(&i.name, "name")?;
    plain_name(name)?;
    let raw = required(&i.document_version, "documentVersion")?;
    let number = match parse_version(Some(raw))? {
        Some(Version::Number(n)) => n,
        _ => {
            return Err(invalid(
                raw,
                "documentVersion",
                "Member must satisfy regular expression pattern: (^[1-9][0-9]*$)",
            ))
        }
    };
    authorize_doc(state, caller, "ssm:UpdateDocumentDefaultVersion", name).await?;
    if let Doc::Builtin(..) = find(state, name).await? {
        return Err(ApiError::client(
            "InvalidDocument",
            format!("{name} is owned by Amazon: its default version cannot be changed."),
        ));
    }
    let Some((_, v)) = state.store.document_at(name, Some(number)).await? else {
        return Err(bad_version(name));
    };
    // What becomes the default is checked again before it can run.
    check_content(
        name,
        &v.content,
        Format::parse(&v.format).unwrap_or(Format::Json),
    )?;
    if !state
        .store
        .set_default_document_version(name, number)
        .await?
    {
        return Err(bad_version(name));
    }
    audit_change(
        state,
        caller,
        "ssm:UpdateDocumentDefaultVersion",
        name,
        json!({"Version": number.to_string(), "Hash": v.hash}),
    )
    .await?;
    if name == SHELL {
        apply_preferences(state).await?;
    }
    let mut d = json!({ "Name": name, "DefaultVersion": number.to_string() });
    if let Some(vn) = v.version_name {
        d["DefaultVersionName"] = json!(vn);
    }
    Ok(json!({ "Description": d }))
}

async fn versions(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DocumentInput = super::parse(input)?;
    let name = read_name(state, &i)?;
    let limit = i.max_results.unwrap_or(50);
    if !(1..=50).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 50",
        ));
    }
    let offset = decode_next_token(i.next_token.as_deref())?;
    authorize_doc(state, caller, "ssm:ListDocumentVersions", name).await?;
    let all: Vec<Value> = match find(state, name).await? {
        Doc::Builtin(n, _) => vec![json!({
            "Name": n, "DocumentVersion": "1", "CreatedDate": timestamp(BUILTIN_CREATED_MS),
            "IsDefaultVersion": true, "DocumentFormat": "JSON", "Status": "Active",
        })],
        Doc::Stored(d) => state
            .store
            .document_versions(name)
            .await?
            .iter()
            .map(|v| {
                let mut x = json!({
                    "Name": name,
                    "DocumentVersion": v.version.to_string(),
                    "CreatedDate": timestamp(v.created_at),
                    "IsDefaultVersion": v.version == d.default_version,
                    "DocumentFormat": v.format,
                    "Status": "Active",
                });
                if !d.display_name.is_empty() {
                    x["DisplayName"] = json!(d.display_name);
                }
                if let Some(vn) = &v.version_name {
                    x["VersionName"] = json!(vn);
                }
                x
            })
            .collect(),
    };
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(50))
        .min(all.len());
    let mut out = json!({ "DocumentVersions": all[start..end] });
    if end < all.len() {
        out["NextToken"] = json!(encode_next_token(end as i64));
    }
    Ok(out)
}
