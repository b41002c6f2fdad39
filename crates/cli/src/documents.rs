//! `airlock admin preferences|document`: the session preferences (the
//! `SSM-SessionManagerRunShell` document) and custom session documents, as thin wrappers over
//! the SSM document operations.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};

use crate::output::{print, s, ts};
use crate::Format;

/// The document that holds the session preferences.
const PREFERENCES: &str = "SSM-SessionManagerRunShell";

#[derive(Subcommand, Debug)]
pub enum PreferencesCommand {
    /// Print the preferences document in force (JSON).
    Get,
    /// Put a preferences document (JSON or YAML, or just its `inputs` as a JSON object) in
    /// force; invalid content changes nothing.
    Set {
        /// The file (`.yaml`/`.yml` is read as YAML).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum DocumentCommand {
    /// Create a Session document from a JSON or YAML file.
    Create {
        /// Document name.
        name: String,
        /// The content (`.yaml`/`.yml` is read as YAML).
        file: PathBuf,
        /// A name for this version.
        #[arg(long)]
        version_name: Option<String>,
    },
    /// Add a new version of a document (the default version stays until `set-default`).
    Update {
        /// Document name.
        name: String,
        /// The content (`.yaml`/`.yml` is read as YAML).
        file: PathBuf,
        /// A name for this version.
        #[arg(long)]
        version_name: Option<String>,
    },
    /// Print a document's content.
    Get {
        /// Document name.
        name: String,
        /// Version ($LATEST, $DEFAULT or a number; default: the default version).
        #[arg(long)]
        version: Option<String>,
        /// JSON or YAML (default: as it was written).
        #[arg(long)]
        format: Option<String>,
    },
    /// Describe a document: versions, owner, parameters.
    Describe {
        /// Document name.
        name: String,
        /// Version ($LATEST, $DEFAULT or a number).
        #[arg(long)]
        version: Option<String>,
    },
    /// List the session documents.
    List,
    /// Delete a document, or one version of it (not the default).
    Delete {
        /// Document name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// Make a version the one sessions run.
    SetDefault {
        /// Document name.
        name: String,
        /// Version number.
        version: String,
    },
}

fn client() -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(Profile::load()?)?)
}

/// The file's text and the `DocumentFormat` it is written in.
fn read(file: &Path) -> anyhow::Result<(String, &'static str)> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let yaml = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    Ok((text, if yaml { "YAML" } else { "JSON" }))
}

/// `airlock admin preferences …`.
pub async fn preferences(c: PreferencesCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    match c {
        PreferencesCommand::Get => {
            let out = api
                .call(
                    "AmazonSSM.GetDocument",
                    &json!({ "Name": PREFERENCES, "DocumentFormat": "JSON" }),
                )
                .await?;
            let content: Value = serde_json::from_str(out["Content"].as_str().unwrap_or("{}"))?;
            println!("{}", serde_json::to_string_pretty(&content)?);
        }
        PreferencesCommand::Set { file } => {
            let (mut text, doc_format) = read(&file)?;
            // Just the inputs: wrap them in the document AWS expects.
            if doc_format == "JSON" {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v.get("schemaVersion").is_none() && v.is_object() {
                        text = serde_json::to_string_pretty(&json!({
                            "schemaVersion": "1.0",
                            "description": "Document to hold regional settings for Session Manager",
                            "sessionType": "Standard_Stream",
                            "inputs": v,
                        }))?;
                    }
                }
            }
            let out = api
                .call(
                    "AmazonSSM.UpdateDocument",
                    &json!({
                        "Name": PREFERENCES,
                        "Content": text,
                        "DocumentFormat": doc_format,
                        "DocumentVersion": "$LATEST",
                    }),
                )
                .await?;
            let d = &out["DocumentDescription"];
            print(
                format,
                &out,
                &["DOCUMENT", "VERSION", "DEFAULT"],
                vec![vec![
                    s(d, "Name"),
                    s(d, "DocumentVersion"),
                    s(d, "DefaultVersion"),
                ]],
            );
        }
    }
    Ok(0)
}

fn description_row(d: &Value) -> Vec<String> {
    vec![
        s(d, "Name"),
        s(d, "Owner"),
        s(d, "DocumentVersion"),
        s(d, "DefaultVersion"),
        s(d, "LatestVersion"),
        s(d, "DocumentFormat"),
    ]
}

const DESCRIPTION_HEADERS: &[&str] = &[
    "DOCUMENT", "OWNER", "VERSION", "DEFAULT", "LATEST", "FORMAT",
];

/// `airlock admin document …`.
pub async fn document(c: DocumentCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let create = matches!(c, DocumentCommand::Create { .. });
    match c {
        DocumentCommand::Create {
            name,
            file,
            version_name,
        }
        | DocumentCommand::Update {
            name,
            file,
            version_name,
        } => {
            let (text, doc_format) = read(&file)?;
            let mut input = json!({ "Name": name, "Content": text, "DocumentFormat": doc_format });
            if let Some(v) = version_name {
                input["VersionName"] = json!(v);
            }
            let op = if create {
                input["DocumentType"] = json!("Session");
                "AmazonSSM.CreateDocument"
            } else {
                input["DocumentVersion"] = json!("$LATEST");
                "AmazonSSM.UpdateDocument"
            };
            let out = api.call(op, &input).await?;
            print(
                format,
                &out,
                DESCRIPTION_HEADERS,
                vec![description_row(&out["DocumentDescription"])],
            );
        }
        DocumentCommand::Get {
            name,
            version,
            format: doc_format,
        } => {
            let mut input = json!({ "Name": name });
            if let Some(v) = version {
                input["DocumentVersion"] = json!(v);
            }
            if let Some(f) = doc_format {
                input["DocumentFormat"] = json!(f.to_ascii_uppercase());
            }
            let out = api.call("AmazonSSM.GetDocument", &input).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => print!("{}", s(&out, "Content")),
            }
        }
        DocumentCommand::Describe { name, version } => {
            let mut input = json!({ "Name": name });
            if let Some(v) = version {
                input["DocumentVersion"] = json!(v);
            }
            let out = api.call("AmazonSSM.DescribeDocument", &input).await?;
            let d = &out["Document"];
            let mut rows = vec![description_row(d)];
            for p in d["Parameters"].as_array().cloned().unwrap_or_default() {
                rows.push(vec![
                    format!("  {}", s(&p, "Name")),
                    s(&p, "Type"),
                    s(&p, "DefaultValue"),
                    s(&p, "Description"),
                ]);
            }
            print(format, &out, DESCRIPTION_HEADERS, rows);
        }
        DocumentCommand::List => {
            let all = crate::admin::fetch_pages(
                &api,
                "AmazonSSM.ListDocuments",
                json!({ "MaxResults": 50 }),
                "DocumentIdentifiers",
                None,
            )
            .await?
            .items;
            let rows = all
                .iter()
                .map(|d| {
                    vec![
                        s(d, "Name"),
                        s(d, "Owner"),
                        s(d, "DocumentVersion"),
                        s(d, "DocumentFormat"),
                        ts(d, "CreatedDate"),
                    ]
                })
                .collect();
            print(
                format,
                &json!({ "DocumentIdentifiers": all }),
                &["DOCUMENT", "OWNER", "DEFAULT", "FORMAT", "CREATED"],
                rows,
            );
        }
        DocumentCommand::Delete { name, version } => {
            let mut input = json!({ "Name": name });
            if let Some(v) = &version {
                input["DocumentVersion"] = json!(v);
            }
            let out = api.call("AmazonSSM.DeleteDocument", &input).await?;
            let what = match version {
                Some(v) => format!("{name} version {v}"),
                None => name,
            };
            print(format, &out, &["DELETED"], vec![vec![what]]);
        }
        DocumentCommand::SetDefault { name, version } => {
            let out = api
                .call(
                    "AmazonSSM.UpdateDocumentDefaultVersion",
                    &json!({ "Name": name, "DocumentVersion": version }),
                )
                .await?;
            let d = &out["Description"];
            print(
                format,
                &out,
                &["DOCUMENT", "DEFAULT"],
                vec![vec![s(d, "Name"), s(d, "DefaultVersion")]],
            );
        }
    }
    Ok(0)
}
