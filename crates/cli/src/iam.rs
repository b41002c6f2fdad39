//! `airlock admin group|policy|grant|apply|instance-tags|session-token`, `airlock policy
//! simulate` and `airlock audit list|verify`: thin wrappers over the IAM-style API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};

use crate::output::{print, s, ts};
use crate::Format;

fn client() -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(Profile::load()?)?)
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn kv(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("expected KEY=VALUE, got {p:?}"))
        })
        .collect()
}

/// Parses an absolute RFC 3339 time or a relative `+8h` / `+30m` / `+2d` into epoch seconds.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Some(rel) = text.strip_prefix('+') {
        let (num, unit) =
            rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num
            .parse()
            .with_context(|| format!("bad duration {text:?}"))?;
        let secs = match unit {
            "s" => n,
            "m" | "" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => anyhow::bail!("bad duration unit in {text:?} (use s, m, h or d)"),
        };
        return Ok(time::OffsetDateTime::now_utc().unix_timestamp() + secs);
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("{text:?} is neither RFC 3339 (2026-12-01T08:00:00Z) nor relative (+8h)")
        })?;
    Ok(t.unix_timestamp())
}

/// Groups.
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group.
    Create { name: String },
    /// Delete a group.
    Delete { name: String },
    /// List groups.
    List,
    /// Add a user to a group.
    AddUser { group: String, user: String },
    /// Remove a user from a group.
    RemoveUser { group: String, user: String },
}

/// Who a policy is attached to.
#[derive(Args, Debug)]
pub struct Target {
    /// A user.
    #[arg(long, conflicts_with = "group")]
    user: Option<String>,
    /// A group.
    #[arg(long)]
    group: Option<String>,
}

/// Managed and inline policies.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace a managed policy from a JSON file (validated; refused whole if invalid).
    Create {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show a managed policy.
    Get { name: String },
    /// List managed policies.
    List,
    /// Delete a managed policy.
    Delete { name: String },
    /// Attach a managed policy to a user or group.
    Attach {
        name: String,
        #[command(flatten)]
        to: Target,
    },
    /// Detach a managed policy.
    Detach {
        name: String,
        #[command(flatten)]
        to: Target,
    },
    /// Create or replace an inline policy of a user or group.
    PutInline {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        to: Target,
    },
    /// Delete an inline policy.
    DeleteInline {
        name: String,
        #[command(flatten)]
        to: Target,
    },
}

/// Time-bound grants.
#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Give a user a policy until a time (e.g. an on-call rotation); it stops at that instant.
    Create {
        #[arg(long)]
        user: String,
        /// A managed policy to grant.
        #[arg(long, conflicts_with = "policy_file")]
        policy: Option<String>,
        /// A policy document to grant.
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// Until when: RFC 3339 or relative (+8h).
        #[arg(long)]
        until: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Revoke a grant.
    Revoke { grant_id: String },
}

/// User details beyond create/list/delete.
#[derive(Subcommand, Debug)]
pub enum UserExtra {
    /// Show a user: groups, policies, tags, boundary, grants.
    Show { name: String },
    /// Set principal tags (KEY=VALUE…), e.g. SSMSessionRunAs=alice.
    Tag { name: String, tags: Vec<String> },
    /// Remove principal tags.
    Untag { name: String, keys: Vec<String> },
    /// Set the permissions boundary (a managed policy).
    SetBoundary { name: String, policy: String },
    /// Remove the permissions boundary.
    ClearBoundary { name: String },
    /// Set the console password (read from stdin).
    SetPassword { name: String },
}

/// `airlock policy …`.
#[derive(Subcommand, Debug)]
pub enum PolicyTool {
    /// Would this request be allowed, and by which statement?
    Simulate(SimulateArgs),
}

/// `airlock policy simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Evaluate this user's policies as stored.
    #[arg(
        long,
        conflicts_with = "policy_file",
        required_unless_present = "policy_file"
    )]
    user: Option<String>,
    /// Evaluate a policy file instead.
    #[arg(long)]
    policy_file: Option<PathBuf>,
    /// Action, e.g. ssm:StartSession.
    #[arg(long)]
    action: String,
    /// Resource ARN.
    #[arg(long)]
    resource: String,
    /// Context keys, KEY=VALUE (repeat a key for several values).
    #[arg(long = "context")]
    context: Vec<String>,
    /// Tags of the resource, KEY=VALUE.
    #[arg(long = "resource-tag")]
    resource_tags: Vec<String>,
}

/// `airlock audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit records, newest first.
    List {
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Allow, Deny, or an error code.
        #[arg(long)]
        decision: Option<String>,
        /// RFC 3339 or relative to now (e.g. -1h is not supported; give a time).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Prove the hash chain whole; names the first bad record otherwise (exit 1).
    Verify,
}

async fn attach_target(
    api: &ApiClient,
    op_user: &str,
    op_group: &str,
    to: &Target,
    mut body: Value,
) -> anyhow::Result<Value> {
    match (&to.user, &to.group) {
        (Some(u), None) => {
            body["UserName"] = json!(u);
            Ok(api.call(&format!("Airlock.{op_user}"), &body).await?)
        }
        (None, Some(g)) => {
            body["GroupName"] = json!(g);
            Ok(api.call(&format!("Airlock.{op_group}"), &body).await?)
        }
        _ => anyhow::bail!("give --user or --group"),
    }
}

/// `airlock admin group …`.
pub async fn group(c: GroupCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let (out, label) = match c {
        GroupCommand::Create { name } => (
            api.call("Airlock.CreateGroup", &json!({ "GroupName": name }))
                .await?,
            name,
        ),
        GroupCommand::Delete { name } => (
            api.call("Airlock.DeleteGroup", &json!({ "GroupName": name }))
                .await?,
            name,
        ),
        GroupCommand::List => {
            let out = api.call("Airlock.ListGroups", &json!({})).await?;
            let rows = out["Groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|g| vec![s(g, "GroupName"), s(g, "GroupId"), ts(g, "CreateDate")])
                .collect();
            print(format, &out, &["GROUP", "ID", "CREATED"], rows);
            return Ok(0);
        }
        GroupCommand::AddUser { group, user } => (
            api.call(
                "Airlock.AddUserToGroup",
                &json!({ "GroupName": group, "UserName": user }),
            )
            .await?,
            format!("{user} → {group}"),
        ),
        GroupCommand::RemoveUser { group, user } => (
            api.call(
                "Airlock.RemoveUserFromGroup",
                &json!({ "GroupName": group, "UserName": user }),
            )
            .await?,
            format!("{user} ✕ {group}"),
        ),
    };
    print(format, &out, &["DONE"], vec![vec![label]]);
    Ok(0)
}

/// `airlock admin policy …`.
pub async fn policy(c: PolicyCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    match c {
        PolicyCommand::Create {
            name,
            file,
            description,
        } => {
            let doc = read_json(&file)?;
            let out = api.call("Airlock.CreatePolicy", &json!({ "PolicyName": name, "PolicyDocument": doc, "Description": description })).await?;
            print(
                format,
                &out,
                &["POLICY", "ARN"],
                vec![vec![
                    s(&out["Policy"], "PolicyName"),
                    s(&out["Policy"], "Arn"),
                ]],
            );
        }
        PolicyCommand::Get { name } => {
            let out = api
                .call("Airlock.GetPolicy", &json!({ "PolicyName": name }))
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => {
                    let doc: Value = serde_json::from_str(
                        out["Policy"]["PolicyDocument"].as_str().unwrap_or("{}"),
                    )
                    .unwrap_or_default();
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
            }
        }
        PolicyCommand::List => {
            let out = api.call("Airlock.ListPolicies", &json!({})).await?;
            let rows = out["Policies"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| vec![s(p, "PolicyName"), s(p, "Description"), ts(p, "UpdateDate")])
                .collect();
            print(format, &out, &["POLICY", "DESCRIPTION", "UPDATED"], rows);
        }
        PolicyCommand::Delete { name } => {
            let out = api
                .call("Airlock.DeletePolicy", &json!({ "PolicyName": name }))
                .await?;
            print(format, &out, &["DELETED"], vec![vec![name]]);
        }
        PolicyCommand::Attach { name, to } => {
            let out = attach_target(
                &api,
                "AttachUserPolicy",
                "AttachGroupPolicy",
                &to,
                json!({ "PolicyName": name }),
            )
            .await?;
            print(format, &out, &["ATTACHED"], vec![vec![name]]);
        }
        PolicyCommand::Detach { name, to } => {
            let out = attach_target(
                &api,
                "DetachUserPolicy",
                "DetachGroupPolicy",
                &to,
                json!({ "PolicyName": name }),
            )
            .await?;
            print(format, &out, &["DETACHED"], vec![vec![name]]);
        }
        PolicyCommand::PutInline { name, file, to } => {
            let doc = read_json(&file)?;
            let out = attach_target(
                &api,
                "PutUserPolicy",
                "PutGroupPolicy",
                &to,
                json!({ "PolicyName": name, "PolicyDocument": doc }),
            )
            .await?;
            print(format, &out, &["INLINE POLICY SET"], vec![vec![name]]);
        }
        PolicyCommand::DeleteInline { name, to } => {
            let out = attach_target(
                &api,
                "DeleteUserPolicy",
                "DeleteGroupPolicy",
                &to,
                json!({ "PolicyName": name }),
            )
            .await?;
            print(format, &out, &["INLINE POLICY DELETED"], vec![vec![name]]);
        }
    }
    Ok(0)
}

/// `airlock admin grant …`.
pub async fn grant(c: GrantCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    match c {
        GrantCommand::Create {
            user,
            policy,
            policy_file,
            until,
            reason,
        } => {
            let mut body =
                json!({ "UserName": user, "ExpiresAt": parse_time(&until)?, "Reason": reason });
            match (policy, policy_file) {
                (Some(p), None) => body["PolicyName"] = json!(p),
                (None, Some(f)) => body["PolicyDocument"] = read_json(&f)?,
                _ => anyhow::bail!("give --policy or --policy-file"),
            }
            let out = api.call("Airlock.CreateGrant", &body).await?;
            let g = &out["Grant"];
            print(
                format,
                &out,
                &["GRANT", "USER", "POLICY", "EXPIRES"],
                vec![vec![
                    s(g, "GrantId"),
                    s(g, "UserName"),
                    s(g, "Name"),
                    ts(g, "ExpiresAt"),
                ]],
            );
        }
        GrantCommand::Revoke { grant_id } => {
            let out = api
                .call("Airlock.DeleteGrant", &json!({ "GrantId": grant_id }))
                .await?;
            print(format, &out, &["REVOKED"], vec![vec![grant_id]]);
        }
    }
    Ok(0)
}

/// `airlock admin user show|tag|untag|set-boundary|clear-boundary|set-password`.
pub async fn user_extra(c: UserExtra, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let out = match c {
        UserExtra::Show { name } => {
            let out = api
                .call("Airlock.GetUser", &json!({ "UserName": name }))
                .await?;
            println!("{}", serde_json::to_string_pretty(&out["User"])?);
            return Ok(0);
        }
        UserExtra::Tag { name, tags } => {
            let tags: Vec<Value> = kv(&tags)?
                .into_iter()
                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                .collect();
            api.call(
                "Airlock.TagUser",
                &json!({ "UserName": name, "Tags": tags }),
            )
            .await?
        }
        UserExtra::Untag { name, keys } => {
            api.call(
                "Airlock.UntagUser",
                &json!({ "UserName": name, "TagKeys": keys }),
            )
            .await?
        }
        UserExtra::SetBoundary { name, policy } => {
            api.call(
                "Airlock.PutUserPermissionsBoundary",
                &json!({ "UserName": name, "PolicyName": policy }),
            )
            .await?
        }
        UserExtra::ClearBoundary { name } => {
            api.call(
                "Airlock.DeleteUserPermissionsBoundary",
                &json!({ "UserName": name }),
            )
            .await?
        }
        UserExtra::SetPassword { name } => {
            let mut pw = String::new();
            std::io::stdin()
                .read_line(&mut pw)
                .context("reading the password from stdin")?;
            api.call(
                "Airlock.SetPassword",
                &json!({ "UserName": name, "Password": pw.trim_end_matches(['\r', '\n']) }),
            )
            .await?
        }
    };
    let rows = out["Tags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| vec![s(t, "Key"), s(t, "Value")])
        .collect::<Vec<_>>();
    if rows.is_empty() {
        print(format, &out, &["DONE"], vec![]);
    } else {
        print(format, &out, &["TAG", "VALUE"], rows);
    }
    Ok(0)
}

/// `airlock admin apply FILE`.
pub async fn apply(file: PathBuf, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let doc = read_json(&file)?;
    let out = api
        .call("Airlock.Apply", &json!({ "Document": doc }))
        .await?;
    let changes: Vec<Vec<String>> = out["Changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| vec![c.as_str().unwrap_or("").to_owned()])
        .collect();
    if changes.is_empty() && format == Format::Text {
        println!("No changes: the server already matches {}.", file.display());
    } else {
        print(format, &out, &["CHANGE"], changes);
    }
    Ok(0)
}

/// `airlock admin instance tag|untag|tags`.
pub async fn instance_tags(
    id: String,
    set: Vec<String>,
    remove: Vec<String>,
    format: Format,
) -> anyhow::Result<i32> {
    let api = client()?;
    if !set.is_empty() {
        let tags: Vec<Value> = kv(&set)?
            .into_iter()
            .map(|(k, v)| json!({ "Key": k, "Value": v }))
            .collect();
        api.call(
            "AmazonSSM.AddTagsToResource",
            &json!({ "ResourceType": "ManagedInstance", "ResourceId": id, "Tags": tags }),
        )
        .await?;
    }
    if !remove.is_empty() {
        api.call(
            "AmazonSSM.RemoveTagsFromResource",
            &json!({ "ResourceType": "ManagedInstance", "ResourceId": id, "TagKeys": remove }),
        )
        .await?;
    }
    let out = api
        .call(
            "AmazonSSM.ListTagsForResource",
            &json!({ "ResourceType": "ManagedInstance", "ResourceId": id }),
        )
        .await?;
    let rows = out["TagList"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| vec![s(t, "Key"), s(t, "Value")])
        .collect();
    print(format, &out, &["TAG", "VALUE"], rows);
    Ok(0)
}

/// `airlock admin session-token`.
pub async fn session_token(duration: u32, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let out = api
        .call(
            "Airlock.GetSessionToken",
            &json!({ "DurationSeconds": duration }),
        )
        .await?;
    let c = &out["Credentials"];
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Text => {
            println!("export AWS_ACCESS_KEY_ID={}", s(c, "AccessKeyId"));
            println!("export AWS_SECRET_ACCESS_KEY={}", s(c, "SecretAccessKey"));
            println!("export AWS_SESSION_TOKEN={}", s(c, "SessionToken"));
            println!("# expires {}", ts(c, "Expiration"));
        }
    }
    Ok(0)
}

/// `airlock policy simulate`.
pub async fn simulate(a: SimulateArgs, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let mut context = serde_json::Map::new();
    for (k, v) in kv(&a.context)? {
        let entry = context.entry(k).or_insert_with(|| json!([]));
        if let Some(arr) = entry.as_array_mut() {
            arr.push(json!(v));
        }
    }
    let tags: serde_json::Map<String, Value> = kv(&a.resource_tags)?
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let mut body = json!({ "Action": a.action, "Resource": a.resource, "Context": context, "ResourceTags": tags });
    match (a.user, a.policy_file) {
        (Some(u), _) => body["UserName"] = json!(u),
        (None, Some(f)) => body["PolicyDocuments"] = json!([read_json(&f)?]),
        (None, None) => anyhow::bail!("give --user or --policy-file"),
    }
    let out = api.call("Airlock.SimulatePolicy", &body).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Text => println!("{}: {}", s(&out, "Decision"), s(&out, "Explanation")),
    }
    Ok(if out["Allowed"].as_bool() == Some(true) {
        0
    } else {
        1
    })
}

/// `airlock audit …`.
pub async fn audit(c: AuditCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    match c {
        AuditCommand::List {
            principal,
            action,
            decision,
            since,
            limit,
        } => {
            let mut body = json!({ "MaxResults": limit });
            if let Some(p) = principal {
                body["Principal"] = json!(p);
            }
            if let Some(a) = action {
                body["Action"] = json!(a);
            }
            if let Some(d) = decision {
                body["Decision"] = json!(d);
            }
            if let Some(t) = since {
                body["Since"] = json!(parse_time(&t)?);
            }
            let out = api.call("Airlock.ListAuditEvents", &body).await?;
            let rows = out["Events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    vec![
                        s(e, "Seq"),
                        ts(e, "Time"),
                        s(e, "Event"),
                        s(e, "Principal"),
                        s(e, "Action"),
                        s(e, "Decision"),
                        s(e, "Resource"),
                        s(e, "SourceIp"),
                    ]
                })
                .collect();
            print(
                format,
                &out,
                &[
                    "SEQ",
                    "TIME",
                    "EVENT",
                    "PRINCIPAL",
                    "ACTION",
                    "DECISION",
                    "RESOURCE",
                    "SOURCE",
                ],
                rows,
            );
            Ok(0)
        }
        AuditCommand::Verify => {
            let out = api.call("Airlock.VerifyAudit", &json!({})).await?;
            let ok = out["Ok"].as_bool() == Some(true);
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text if ok => match out["Checkpoint"]["Count"].as_i64() {
                    Some(n) => println!(
                        "Audit chain intact: {} records; its end matches the signed checkpoint (record {n}).",
                        s(&out, "Records")
                    ),
                    None => println!("Audit chain intact: {} records.", s(&out, "Records")),
                },
                // Named by what was found: BROKEN, TRUNCATED, ROLLED-BACK, CHECKPOINT-TAMPERED,
                // CHECKPOINT-MISSING (older servers send no status: a break).
                Format::Text => {
                    let status = out["Status"].as_str().unwrap_or("broken").to_uppercase();
                    match out["FirstBadSeq"].as_i64() {
                        Some(seq) => println!(
                            "Audit chain {status} at record {seq}: {}",
                            s(&out, "Problem")
                        ),
                        None => println!("Audit chain {status}: {}", s(&out, "Problem")),
                    }
                }
            }
            if format == Format::Text {
                for w in out["Warnings"].as_array().into_iter().flatten() {
                    println!("Warning: {}", w.as_str().unwrap_or_default());
                }
            }
            Ok(if ok { 0 } else { 1 })
        }
    }
}
