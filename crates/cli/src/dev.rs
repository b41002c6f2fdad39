//! `airlock dev`: everything on one machine in one command — a server on loopback, an admin
//! profile for the CLI, and a registered local agent — then it prints the next command to type.
//! Running it again reuses the same state.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use airlock_client::{ApiClient, Profile};

use crate::{DevArgs, Format};

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn read_admin(path: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .with_context(|| format!("{} has no {k}", path.display()))
    };
    Ok((get("AccessKeyId")?, get("SecretAccessKey")?))
}

/// Chooses the profile name: `default` unless it already points at another server.
fn profile_name(config: &Path, endpoint: &str) -> &'static str {
    match Profile::load_from(config, |k| {
        (k == "AIRLOCK_PROFILE").then(|| "default".to_owned())
    }) {
        Ok(p) if p.endpoint != endpoint => "dev",
        _ => "default",
    }
}

async fn ensure_agent(
    api: &ApiClient,
    server_url: &str,
    state_path: &Path,
) -> anyhow::Result<airlock_agent::AgentState> {
    if let Ok(state) = airlock_agent::AgentState::load(state_path) {
        if state.server == server_url {
            let out = api
                .call("AmazonSSM.DescribeInstanceInformation", &json!({ "Filters": [{ "Key": "InstanceIds", "Values": [state.instance_id] }] }))
                .await?;
            let known = out["InstanceInformationList"]
                .as_array()
                .is_some_and(|l| !l.is_empty());
            if known {
                return Ok(state);
            }
        }
    }
    let act = api
        .call(
            "AmazonSSM.CreateActivation",
            &json!({ "IamRole": "AirlockDev", "RegistrationLimit": 1, "DefaultInstanceName": "dev", "Description": "airlock dev local agent" }),
        )
        .await?;
    let state = airlock_agent::register(&airlock_agent::Registration {
        server: server_url.to_owned(),
        activation_id: act["ActivationId"].as_str().unwrap_or_default().to_owned(),
        activation_code: act["ActivationCode"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        ca_file: None,
    })
    .await?;
    state.save(state_path)?;
    Ok(state)
}

/// Runs the dev environment until Ctrl-C.
pub async fn run(a: DevArgs, format: Format) -> anyhow::Result<i32> {
    if !a.listen.ip().is_loopback() {
        anyhow::bail!(
            "airlock dev listens on loopback only; use `airlock server` for {}",
            a.listen
        );
    }
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| home().join(".airlock").join("dev"));
    // The agent's key and the server's state live here: private to this user.
    airlock_server::private_dir(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    airlock_server::datadir::secure_and_log(&data_dir)
        .with_context(|| format!("making {} private", data_dir.display()))?;
    let server_dir = data_dir.join("server");
    let server = airlock_server::start(airlock_server::ServerConfig {
        listen: a.listen,
        data_dir: server_dir.clone(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("starting the server on {} (another airlock dev running? choose another port with --listen)", a.listen))?;
    let (access_key_id, secret_access_key) =
        read_admin(&server_dir.join("admin-credentials.json"))?;
    let profile = Profile {
        endpoint: server.url.clone(),
        access_key_id,
        secret_access_key,
        region: "us-east-1".to_owned(),
        ca_file: None,
        session_token: None,
    };
    let config_path = airlock_client::config::default_config_path();
    let name = profile_name(&config_path, &profile.endpoint);
    profile.save(&config_path, name)?;
    let api = ApiClient::new(profile)?;
    let state = ensure_agent(&api, &server.url, &data_dir.join("agent.json")).await?;
    let instance_id = state.instance_id.clone();

    let cancel = tokio_util::sync::CancellationToken::new();
    let agent_cancel = cancel.clone();
    let agent = tokio::spawn(async move {
        airlock_agent::run(state, airlock_agent::AgentConfig::default(), agent_cancel).await
    });

    let prefix = if name == "default" {
        String::new()
    } else {
        format!("AIRLOCK_PROFILE={name} ")
    };
    match format {
        Format::Json => println!(
            "{}",
            json!({ "Endpoint": server.url, "Profile": name, "ConfigFile": config_path, "DataDir": data_dir, "InstanceId": instance_id })
        ),
        Format::Text => {
            println!(
                "Airlock dev server on {} (state in {})",
                server.url,
                data_dir.display()
            );
            println!(
                "Admin profile '{name}' written to {}",
                config_path.display()
            );
            println!("Local agent {instance_id} is connecting.\n");
            println!("Open a shell through Airlock, in another terminal:\n\n    {prefix}airlock start-session --target {instance_id}\n");
            println!("Press Ctrl-C to stop.");
        }
    }
    tokio::select! {
        _ = crate::shutdown_signal() => {}
        r = agent => {
            match r {
                Ok(Err(e)) => eprintln!("airlock: the local agent stopped: {e}"),
                Err(e) => eprintln!("airlock: the local agent crashed: {e}"),
                Ok(Ok(())) => {}
            }
        }
    }
    cancel.cancel();
    server.shutdown().await;
    Ok(0)
}
