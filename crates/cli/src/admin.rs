//! `airlock sessions|instances|admin`: thin wrappers over API calls, printed as tables or JSON.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};

use crate::output::{print, s, ts};
use crate::Format;

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List sessions.
    List {
        /// Active or History.
        #[arg(long, default_value = "Active")]
        state: String,
        /// Only sessions to this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// End a session (both ends are closed).
    Terminate {
        /// Session id.
        session_id: String,
    },
    /// A session's recording: export it as an asciicast file, or verify it.
    #[command(subcommand)]
    Recording(crate::recording::RecordingCommand),
    /// Print what a recorded session showed, as plain text.
    Log {
        /// Session id.
        session_id: String,
        /// Also the lines typed (when input was recorded), prefixed "> ".
        #[arg(long)]
        input: bool,
    },
    /// Find the sessions that printed or typed TEXT (words, as a phrase).
    Search {
        /// The words to find.
        text: String,
        /// Only sessions on this target.
        #[arg(long)]
        target: Option<String>,
        /// Only sessions started since: a duration back (90s, 30m, 1h, 2d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// The most sessions to list (1-100).
        #[arg(long)]
        max: Option<u32>,
    },
    /// Play a recorded session in the terminal with its original timing.
    Replay {
        /// Session id.
        session_id: String,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Start here, in recording time: 90, 1m30s, 1:30.
        #[arg(long)]
        from: Option<String>,
        /// Cut pauses longer than this many seconds to it (0: keep them).
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        idle_cap: f64,
        /// Watch a live session as it happens, until it ends.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstancesCommand {
    /// List registered instances and whether they are online.
    List,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Access keys.
    #[command(subcommand)]
    AccessKey(KeyCommand),
    /// Activations (registration codes for agents).
    #[command(subcommand)]
    Activation(ActivationCommand),
    /// Managed instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Groups of users.
    #[command(subcommand)]
    Group(crate::iam::GroupCommand),
    /// Managed and inline policies.
    #[command(subcommand)]
    Policy(crate::iam::PolicyCommand),
    /// Time-bound grants of a policy to a user.
    #[command(subcommand)]
    Grant(crate::iam::GrantCommand),
    /// Session preferences (the SSM-SessionManagerRunShell document).
    #[command(subcommand)]
    Preferences(crate::documents::PreferencesCommand),
    /// Session documents (custom shells, commands and port documents).
    #[command(subcommand)]
    Document(crate::documents::DocumentCommand),
    /// Webhooks: endpoints that receive session events and audit records (signed CloudEvents).
    #[command(subcommand)]
    Webhook(crate::webhooks::WebhookCommand),
    /// Make users, groups and policies exactly as a JSON file declares (idempotent).
    Apply {
        /// The declaration (see README).
        file: std::path::PathBuf,
    },
    /// Temporary credentials for yourself (as STS GetSessionToken issues them).
    SessionToken {
        /// Lifetime in seconds (900–129600).
        #[arg(long, default_value_t = 43_200)]
        duration: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// User name.
        name: String,
        /// Let the user do everything (until policies land, others can do nothing).
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Delete a user and their keys.
    Delete {
        /// User name.
        name: String,
    },
    #[command(flatten)]
    Extra(crate::iam::UserExtra),
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an access key (at most two active per user); the secret is shown once.
    Create(UserOpt),
    /// List access keys.
    List(UserOpt),
    /// Delete an access key.
    Delete {
        /// Access key id.
        access_key_id: String,
    },
    /// Disable an access key (it stops working at once).
    Disable {
        /// Access key id.
        access_key_id: String,
    },
    /// Enable a disabled access key.
    Enable {
        /// Access key id.
        access_key_id: String,
    },
}

#[derive(Args, Debug)]
pub struct UserOpt {
    /// User (default: yourself).
    #[arg(long)]
    user: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ActivationCommand {
    /// Create an activation; the code is shown once.
    Create {
        /// How many hosts may register with it.
        #[arg(long, default_value_t = 1)]
        limit: u32,
        /// Hours until it expires (at most 720).
        #[arg(long, default_value_t = 24)]
        expires_in_hours: u32,
        /// Name given to the instances.
        #[arg(long, default_value = "")]
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Role name recorded on the instances (AWS compatibility).
        #[arg(long, default_value = "AirlockManagedInstance")]
        role: String,
    },
    /// List activations.
    List,
    /// Delete an activation (registered hosts stay).
    Delete {
        /// Activation id.
        activation_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Deregister an instance: it is cut off at once and can never reconnect.
    Deregister {
        /// Instance id (mi-…).
        instance_id: String,
    },
    /// Show, set (--set K=V) or remove (--remove K) an instance's tags.
    Tags {
        /// Instance id (mi-…).
        instance_id: String,
        /// Tags to set.
        #[arg(long)]
        set: Vec<String>,
        /// Tag keys to remove.
        #[arg(long)]
        remove: Vec<String>,
    },
}

fn client() -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(Profile::load()?)?)
}

/// Calls a paginated operation until it returns no NextToken and collects `list_key`.
async fn fetch_all(
    api: &ApiClient,
    target: &str,
    input: Value,
    list_key: &str,
) -> anyhow::Result<Vec<Value>> {
    Ok(fetch_pages(api, target, input, list_key, None).await?.items)
}

/// Items of a paginated listing, and where to resume when it stopped early.
pub struct Gathered {
    /// The items, in the order the server returned them.
    pub items: Vec<Value>,
    /// Set when `max_items` stopped the listing before its end (`--starting-token`).
    pub next_token: Option<String>,
}

/// Calls a paginated operation and collects `list_key` until it returns no NextToken or, with
/// `max_items`, until that many items are in. Each call then asks for no more than are still
/// wanted (`MaxResults` in `input` stays the page cap), so the NextToken handed back resumes
/// right after the last item shown, as the AWS CLI's `--max-items` does.
pub async fn fetch_pages(
    api: &ApiClient,
    target: &str,
    mut input: Value,
    list_key: &str,
    max_items: Option<usize>,
) -> anyhow::Result<Gathered> {
    let page_cap = input.get("MaxResults").and_then(Value::as_u64);
    let mut items = Vec::new();
    loop {
        if let Some(max) = max_items {
            let left = max.saturating_sub(items.len()) as u64;
            input["MaxResults"] = json!(page_cap.map_or(left, |cap| cap.min(left)));
        }
        let out = api.call(target, &input).await?;
        items.extend(
            out.get(list_key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        let token = out.get("NextToken").and_then(Value::as_str);
        match (token, max_items) {
            (Some(t), Some(max)) if items.len() >= max => {
                items.truncate(max);
                return Ok(Gathered {
                    items,
                    next_token: Some(t.to_owned()),
                });
            }
            (Some(t), _) => input["NextToken"] = json!(t),
            (None, _) => {
                if let Some(max) = max_items {
                    items.truncate(max);
                }
                return Ok(Gathered {
                    items,
                    next_token: None,
                });
            }
        }
    }
}

/// `airlock sessions …`.
pub async fn sessions(c: SessionsCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    match c {
        SessionsCommand::List { state, target } => {
            let mut input = json!({ "State": state, "MaxResults": 200 });
            if let Some(t) = &target {
                input["Filters"] = json!([{ "key": "Target", "value": t }]);
            }
            let all = fetch_all(&api, "AmazonSSM.DescribeSessions", input, "Sessions").await?;
            let rows = all
                .iter()
                .map(|x| {
                    vec![
                        s(x, "SessionId"),
                        s(x, "Target"),
                        s(x, "Status"),
                        ts(x, "StartDate"),
                        ts(x, "EndDate"),
                        s(x, "ExitCode"),
                        s(x, "Owner"),
                        end_reason(x),
                    ]
                })
                .collect();
            print(
                format,
                &json!({ "Sessions": all }),
                &[
                    "SESSION", "TARGET", "STATUS", "STARTED", "ENDED", "EXIT", "OWNER", "REASON",
                ],
                rows,
            );
        }
        SessionsCommand::Recording(c) => return crate::recording::recording(&api, c, format).await,
        SessionsCommand::Log { session_id, input } => {
            return crate::recording::log(&api, &session_id, input).await
        }
        SessionsCommand::Search {
            text,
            target,
            since,
            max,
        } => {
            return crate::recording::search(
                &api,
                &text,
                target.as_deref(),
                since.as_deref(),
                max,
                format,
            )
            .await
        }
        SessionsCommand::Replay {
            session_id,
            speed,
            from,
            idle_cap,
            follow,
        } => {
            let o = crate::recording::ReplayOptions {
                speed,
                from,
                idle_cap,
                follow,
            };
            return crate::recording::replay(&api, &session_id, o).await;
        }
        SessionsCommand::Terminate { session_id } => {
            let out = api
                .call(
                    "AmazonSSM.TerminateSession",
                    &json!({ "SessionId": session_id }),
                )
                .await?;
            print(
                format,
                &out,
                &["TERMINATED"],
                vec![vec![s(&out, "SessionId")]],
            );
        }
    }
    Ok(0)
}

/// A session's typed end reason for the table: `IdleTimeout`, `TerminatedBy alice`,
/// `AccessRevoked: access key AKIA… was disabled`, `Exited 0`.
fn end_reason(x: &serde_json::Value) -> String {
    let kind = x["EndReason"]["Kind"].as_str().unwrap_or_default();
    let detail = x["EndReason"]["Detail"].as_str().unwrap_or_default();
    match kind {
        "" => String::new(),
        "TerminatedBy" => format!(
            "TerminatedBy {}",
            detail.rsplit('/').next().unwrap_or(detail)
        ),
        "Exited" | "IdleTimeout" | "MaxDuration" if !detail.is_empty() => {
            let unit = if kind == "Exited" { "" } else { " min" };
            format!("{kind} {detail}{unit}")
        }
        _ if detail.is_empty() => kind.to_owned(),
        _ => {
            let short: String = detail.chars().take(80).collect();
            format!("{kind}: {short}")
        }
    }
}

/// `airlock instances …`.
pub async fn instances(c: InstancesCommand, format: Format) -> anyhow::Result<i32> {
    let api = client()?;
    let InstancesCommand::List = c;
    let all = fetch_all(
        &api,
        "AmazonSSM.DescribeInstanceInformation",
        json!({ "MaxResults": 50 }),
        "InstanceInformationList",
    )
    .await?;
    let rows = all
        .iter()
        .map(|x| {
            vec![
                s(x, "InstanceId"),
                s(x, "PingStatus"),
                s(x, "ComputerName"),
                s(x, "IPAddress"),
                s(x, "PlatformName"),
                ts(x, "LastPingDateTime"),
            ]
        })
        .collect();
    print(
        format,
        &json!({ "InstanceInformationList": all }),
        &["INSTANCE", "PING", "HOST", "IP", "PLATFORM", "LAST PING"],
        rows,
    );
    Ok(0)
}

/// `airlock admin …`.
pub async fn admin(c: AdminCommand, format: Format) -> anyhow::Result<i32> {
    match c {
        AdminCommand::Group(g) => return crate::iam::group(g, format).await,
        AdminCommand::Policy(p) => return crate::iam::policy(p, format).await,
        AdminCommand::Grant(g) => return crate::iam::grant(g, format).await,
        AdminCommand::Apply { file } => return crate::iam::apply(file, format).await,
        AdminCommand::Preferences(p) => return crate::documents::preferences(p, format).await,
        AdminCommand::Document(d) => return crate::documents::document(d, format).await,
        AdminCommand::Webhook(w) => return crate::webhooks::webhook(w, format).await,
        AdminCommand::SessionToken { duration } => {
            return crate::iam::session_token(duration, format).await
        }
        AdminCommand::User(UserCommand::Extra(e)) => {
            return crate::iam::user_extra(e, format).await
        }
        AdminCommand::Instance(InstanceCommand::Tags {
            instance_id,
            set,
            remove,
        }) => return crate::iam::instance_tags(instance_id, set, remove, format).await,
        _ => {}
    }
    let api = client()?;
    match c {
        AdminCommand::Group(_)
        | AdminCommand::Policy(_)
        | AdminCommand::Grant(_)
        | AdminCommand::Apply { .. }
        | AdminCommand::Preferences(_)
        | AdminCommand::Document(_)
        | AdminCommand::Webhook(_)
        | AdminCommand::SessionToken { .. }
        | AdminCommand::User(UserCommand::Extra(_))
        | AdminCommand::Instance(InstanceCommand::Tags { .. }) => {}

        AdminCommand::User(UserCommand::Create { name, admin }) => {
            let out = api
                .call(
                    "Airlock.CreateUser",
                    &json!({ "UserName": name, "Admin": admin }),
                )
                .await?;
            let u = &out["User"];
            print(
                format,
                &out,
                &["USER", "ID", "ARN", "ADMIN"],
                vec![vec![
                    s(u, "UserName"),
                    s(u, "UserId"),
                    s(u, "Arn"),
                    s(u, "Admin"),
                ]],
            );
        }
        AdminCommand::User(UserCommand::List) => {
            let out = api.call("Airlock.ListUsers", &json!({})).await?;
            let rows = out["Users"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|u| {
                    vec![
                        s(u, "UserName"),
                        s(u, "UserId"),
                        s(u, "Admin"),
                        ts(u, "CreateDate"),
                    ]
                })
                .collect();
            print(format, &out, &["USER", "ID", "ADMIN", "CREATED"], rows);
        }
        AdminCommand::User(UserCommand::Delete { name }) => {
            let out = api
                .call("Airlock.DeleteUser", &json!({ "UserName": name }))
                .await?;
            print(format, &out, &["DELETED"], vec![vec![name]]);
        }
        AdminCommand::AccessKey(KeyCommand::Create(u)) => {
            let mut input = json!({});
            if let Some(n) = u.user {
                input["UserName"] = json!(n);
            }
            let out = api.call("Airlock.CreateAccessKey", &input).await?;
            let k = &out["AccessKey"];
            print(
                format,
                &out,
                &["USER", "ACCESS KEY ID", "SECRET ACCESS KEY"],
                vec![vec![
                    s(k, "UserName"),
                    s(k, "AccessKeyId"),
                    s(k, "SecretAccessKey"),
                ]],
            );
        }
        AdminCommand::AccessKey(KeyCommand::List(u)) => {
            let mut input = json!({});
            if let Some(n) = u.user {
                input["UserName"] = json!(n);
            }
            let out = api.call("Airlock.ListAccessKeys", &input).await?;
            let rows = out["AccessKeyMetadata"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|k| {
                    vec![
                        s(k, "UserName"),
                        s(k, "AccessKeyId"),
                        s(k, "Status"),
                        ts(k, "CreateDate"),
                        ts(k, "LastUsedDate"),
                    ]
                })
                .collect();
            print(
                format,
                &out,
                &["USER", "ACCESS KEY ID", "STATUS", "CREATED", "LAST USED"],
                rows,
            );
        }
        AdminCommand::AccessKey(KeyCommand::Disable { access_key_id }) => {
            let out = api
                .call(
                    "Airlock.UpdateAccessKey",
                    &json!({ "AccessKeyId": access_key_id, "Status": "Inactive" }),
                )
                .await?;
            print(format, &out, &["DISABLED"], vec![vec![access_key_id]]);
        }
        AdminCommand::AccessKey(KeyCommand::Enable { access_key_id }) => {
            let out = api
                .call(
                    "Airlock.UpdateAccessKey",
                    &json!({ "AccessKeyId": access_key_id, "Status": "Active" }),
                )
                .await?;
            print(format, &out, &["ENABLED"], vec![vec![access_key_id]]);
        }
        AdminCommand::AccessKey(KeyCommand::Delete { access_key_id }) => {
            let out = api
                .call(
                    "Airlock.DeleteAccessKey",
                    &json!({ "AccessKeyId": access_key_id }),
                )
                .await?;
            print(format, &out, &["DELETED"], vec![vec![access_key_id]]);
        }
        AdminCommand::Activation(ActivationCommand::Create {
            limit,
            expires_in_hours,
            name,
            description,
            role,
        }) => {
            let expires = time::OffsetDateTime::now_utc().unix_timestamp()
                + i64::from(expires_in_hours) * 3600;
            let out = api
                .call(
                    "AmazonSSM.CreateActivation",
                    &json!({ "IamRole": role, "RegistrationLimit": limit, "ExpirationDate": expires, "DefaultInstanceName": name, "Description": description }),
                )
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => {
                    println!(
                        "Activation id:   {}\nActivation code: {} (shown once)",
                        s(&out, "ActivationId"),
                        s(&out, "ActivationCode")
                    );
                    println!(
                        "On the host: airlock agent register --server {} --activation-id {} --activation-code {}",
                        api.profile().endpoint,
                        s(&out, "ActivationId"),
                        s(&out, "ActivationCode")
                    );
                }
            }
        }
        AdminCommand::Activation(ActivationCommand::List) => {
            let out = api
                .call("AmazonSSM.DescribeActivations", &json!({}))
                .await?;
            let rows = out["ActivationList"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        s(a, "ActivationId"),
                        format!(
                            "{}/{}",
                            s(a, "RegistrationsCount"),
                            s(a, "RegistrationLimit")
                        ),
                        ts(a, "ExpirationDate"),
                        s(a, "Expired"),
                        s(a, "DefaultInstanceName"),
                    ]
                })
                .collect();
            print(
                format,
                &out,
                &["ACTIVATION", "USED", "EXPIRES", "EXPIRED", "NAME"],
                rows,
            );
        }
        AdminCommand::Activation(ActivationCommand::Delete { activation_id }) => {
            let out = api
                .call(
                    "AmazonSSM.DeleteActivation",
                    &json!({ "ActivationId": activation_id }),
                )
                .await?;
            print(format, &out, &["DELETED"], vec![vec![activation_id]]);
        }
        AdminCommand::Instance(InstanceCommand::Deregister { instance_id }) => {
            let out = api
                .call(
                    "AmazonSSM.DeregisterManagedInstance",
                    &json!({ "InstanceId": instance_id }),
                )
                .await?;
            print(format, &out, &["DEREGISTERED"], vec![vec![instance_id]]);
        }
    }
    Ok(0)
}
