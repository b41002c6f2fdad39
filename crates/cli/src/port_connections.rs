//! `airlock port-connections list`: the connections port sessions forwarded (port forwarding
//! and SSH over a session), as the server recorded them: who, which session and host, where
//! to, bytes each way, when, how long, how it ended. A thin wrapper over
//! `Airlock.ListPortConnections`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};

use crate::output::{print, s, ts};
use crate::Format;

/// `airlock port-connections …`.
#[derive(Subcommand, Debug)]
pub enum PortConnectionsCommand {
    /// List forwarded connections, newest first.
    List(ListArgs),
}

/// `airlock port-connections list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this session's connections.
    #[arg(long)]
    pub session_id: Option<String>,
    /// Only connections through this instance (mi-…).
    #[arg(long)]
    pub target: Option<String>,
    /// Only sessions of this user (name or principal ARN).
    #[arg(long)]
    pub owner: Option<String>,
    /// Only connections started at or after this time (RFC 3339, e.g. 2026-12-01T08:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only connections started at or before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Show at most this many, and how to continue.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_items: Option<u32>,
    /// Continue a listing that --max-items stopped (the token it printed).
    #[arg(long)]
    pub starting_token: Option<String>,
}

/// `airlock port-connections …`.
pub async fn run(c: PortConnectionsCommand, format: Format) -> anyhow::Result<i32> {
    let PortConnectionsCommand::List(a) = c;
    let api = ApiClient::new(Profile::load()?)?;
    let mut input = json!({ "MaxResults": 1000 });
    for (key, v) in [
        ("SessionId", &a.session_id),
        ("Target", &a.target),
        ("Owner", &a.owner),
        ("NextToken", &a.starting_token),
    ] {
        if let Some(v) = v {
            input[key] = json!(v);
        }
    }
    if let Some(t) = &a.since {
        input["Since"] = json!(crate::iam::parse_time(t)?);
    }
    if let Some(t) = &a.until {
        input["Until"] = json!(crate::iam::parse_time(t)?);
    }
    let got = crate::admin::fetch_pages(
        &api,
        "Airlock.ListPortConnections",
        input,
        "Connections",
        a.max_items.map(|n| n as usize),
    )
    .await?;
    let rows = got.items.iter().map(row).collect();
    let mut out = json!({ "Connections": got.items });
    if let Some(t) = &got.next_token {
        out["NextToken"] = json!(t);
    }
    print(
        format,
        &out,
        &[
            "STARTED",
            "SESSION",
            "TARGET",
            "OWNER",
            "DESTINATION",
            "TO TARGET",
            "FROM TARGET",
            "DURATION",
            "END",
        ],
        rows,
    );
    if let (Format::Text, Some(t)) = (format, &got.next_token) {
        eprintln!("More connections: continue with --starting-token {t}");
    }
    Ok(0)
}

fn row(c: &Value) -> Vec<String> {
    let num = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
    let owner = s(c, "Owner");
    // `arn:aws:iam::<account>:user/<name>` reads better as the name in a table.
    let owner = match owner.split_once(":user/") {
        Some((_, name)) => name.to_owned(),
        None => owner,
    };
    let end = s(c, "EndReason");
    let end = if c.get("Failed").and_then(Value::as_bool) == Some(true) {
        format!("error: {end}")
    } else {
        end
    };
    vec![
        ts(c, "StartDate"),
        s(c, "SessionId"),
        s(c, "Target"),
        owner,
        s(c, "Destination"),
        crate::port::human(num("BytesToTarget")),
        crate::port::human(num("BytesFromTarget")),
        duration(num("DurationMs")),
        end,
    ]
}

/// Milliseconds for people: 850 ms, 12.3 s, 5m03s, 2h05m.
fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(303_000), "5m03s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}
