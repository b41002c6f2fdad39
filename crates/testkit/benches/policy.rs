//! Authorisation benchmarks.
//!
//! * Policy decisions per second for a principal with 10 policies of 10 statements each (a mix
//!   of exact, wildcard and `NotAction` actions, ARN patterns with policy variables, and
//!   `StringEquals`/`StringLike`/`IpAddress`/`Bool(IfExists)`/`DateLessThan` conditions), using
//!   `airlock_policy` directly: parse once, then evaluate in a loop over a mix of requests
//!   (allowed, implicitly denied after scanning everything, explicitly denied).
//! * The latency that authorisation and the audit record add to an API call: p50/p99 of a
//!   signed `AmazonSSM.GetConnectionStatus` as an admin against a real server on loopback,
//!   beside the same HTTP client's `GET /healthz` (no signature, no policy, no audit) in the
//!   same run, on the same connection pool.
//!
//! `cargo bench -p airlock-testkit --bench policy`. `AIRLOCK_BENCH_CALLS` sets the number of
//! timed API calls (2000). Prints one markdown table.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use airlock_policy::{evaluate, NamedPolicy, Policy, RequestContext};
use airlock_testkit::TestServer;

const POLICIES: usize = 10;
const STATEMENTS: usize = 10;
/// Wall-clock budget of the decision loop.
const DECIDE_FOR: Duration = Duration::from_secs(3);
const WARMUP_CALLS: usize = 200;

/// Statement `s` of policy `p`: ten shapes, each with its own action and resource so that most
/// requests have to look at every statement.
fn statement(p: usize, s: usize) -> Value {
    let sid = format!("P{p}S{s}");
    let inst = format!("arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-{p:02}{s:02}*");
    match s {
        0 => {
            json!({ "Sid": sid, "Effect": "Allow", "Action": format!("ssm:Describe{p}*"), "Resource": "*" })
        }
        1 => json!({
            "Sid": sid, "Effect": "Allow", "Action": "ssm:StartSession", "Resource": inst,
            "Condition": { "StringEquals": { "ssm:resourceTag/Env": format!("env{p}") } }
        }),
        2 => json!({
            "Sid": sid, "Effect": "Allow", "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
            "Resource": format!("arn:aws:ssm:*:*:session/${{aws:username}}-{p}*")
        }),
        3 => json!({
            "Sid": sid, "Effect": "Allow", "Action": "ssm:StartSession",
            "Resource": [inst, "arn:aws:ssm:us-east-1:000000000000:document/SSM-SessionManagerRunShell"],
            "Condition": { "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" } }
        }),
        4 => json!({
            "Sid": sid, "Effect": "Allow", "Action": format!("ssm:Get{p}*"), "Resource": "*",
            "Condition": { "IpAddress": { "aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"] } }
        }),
        5 => json!({
            "Sid": sid, "Effect": "Deny", "Action": "ssm:StartSession", "Resource": "*",
            "Condition": { "StringLike": { "ssm:resourceTag/Classification": format!("secret-{p}-*") } }
        }),
        6 => json!({
            "Sid": sid, "Effect": "Allow", "NotAction": ["ssm:Delete*", "ssm:Deregister*", "iam:*", "ssm:StartSession", "ssm:Terminate*", "ssm:Describe*", "sts:*"],
            "Resource": format!("arn:aws:ssm:us-east-1:000000000000:document/team{p}-*")
        }),
        7 => json!({
            "Sid": sid, "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*",
            "Condition": {
                "StringEquals": { "aws:PrincipalTag/Team": format!("team{p}") },
                "DateLessThan": { "aws:CurrentTime": "2099-01-01T00:00:00Z" }
            }
        }),
        8 => json!({
            "Sid": sid, "Effect": "Deny", "Action": "ssm:*", "Resource": "*",
            "Condition": { "BoolIfExists": { "aws:MultiFactorAuthPresent": "false" }, "StringEquals": { "aws:username": format!("blocked{p}") } }
        }),
        _ => json!({
            "Sid": sid, "Effect": "Allow", "Action": format!("ssm:List{p}*"),
            "Resource": format!("arn:aws:ssm:us-east-1:000000000000:*/{p}-*"),
            "Condition": { "ForAnyValue:StringEquals": { "aws:TagKeys": [format!("k{p}"), "Owner"] } }
        }),
    }
}

fn policies() -> Vec<(String, Policy)> {
    (0..POLICIES)
        .map(|p| {
            let statements: Vec<Value> = (0..STATEMENTS).map(|s| statement(p, s)).collect();
            let doc = json!({ "Version": "2012-10-17", "Statement": statements }).to_string();
            (format!("managed/p{p}"), Policy::parse(&doc).unwrap())
        })
        .collect()
}

fn context(action: &str, resource: &str) -> RequestContext {
    RequestContext::new(action, resource)
        .with("aws:username", "alice")
        .with("aws:userid", "AIDAALICEEXAMPLE0000")
        .with("aws:PrincipalArn", "arn:aws:iam::000000000000:user/alice")
        .with("aws:PrincipalTag/Team", "team9")
        .with("aws:CurrentTime", "2026-11-28T12:00:00Z")
        .with("aws:EpochTime", "1795867200")
        .with("aws:SourceIp", "10.1.2.3")
        .with("aws:SecureTransport", "true")
        .with("aws:RequestedRegion", "us-east-1")
}

/// Requests and the outcome each must have.
fn requests() -> Vec<(&'static str, RequestContext, &'static str)> {
    let inst = "arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0901aaaaaaaaaaaaa";
    vec![
        // Allowed by the last policy's tag statement, after scanning everything for a deny.
        (
            "start, tag allow",
            context("ssm:StartSession", inst)
                .with("ssm:resourceTag/Env", "env9")
                .with("ssm:SessionDocumentAccessCheck", "false"),
            "Allow",
        ),
        // Nothing matches: every statement is examined.
        (
            "unknown action",
            context(
                "ssm:SendCommand",
                "arn:aws:ssm:us-east-1:000000000000:document/x",
            ),
            "ImplicitDeny",
        ),
        // An explicit deny from a tag pattern.
        (
            "start, denied by tag",
            context("ssm:StartSession", inst).with("ssm:resourceTag/Classification", "secret-4-x"),
            "ExplicitDeny",
        ),
        // A policy-variable resource.
        (
            "terminate own",
            context(
                "ssm:TerminateSession",
                "arn:aws:ssm:us-east-1:000000000000:session/alice-7abc",
            ),
            "Allow",
        ),
    ]
}

fn kind(d: &airlock_policy::Decision) -> &'static str {
    match d {
        airlock_policy::Decision::Allow { .. } => "Allow",
        airlock_policy::Decision::ExplicitDeny { .. } => "ExplicitDeny",
        airlock_policy::Decision::ImplicitDeny { .. } => "ImplicitDeny",
    }
}

/// Decisions per second over the request mix, and per request kind.
fn decisions() -> (f64, Vec<(&'static str, f64)>) {
    let owned = policies();
    let named: Vec<NamedPolicy> = owned
        .iter()
        .map(|(n, p)| NamedPolicy { name: n, policy: p })
        .collect();
    let reqs = requests();
    for (what, ctx, want) in &reqs {
        let got = kind(&evaluate(&named, None, ctx));
        assert_eq!(got, *want, "{what}");
    }
    let mut per = Vec::new();
    for (what, ctx, _) in &reqs {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < DECIDE_FOR / 4 {
            for _ in 0..1000 {
                black_box(evaluate(black_box(&named), None, black_box(ctx)));
            }
            n += 1000;
        }
        per.push((*what, n as f64 / start.elapsed().as_secs_f64()));
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < DECIDE_FOR {
        for _ in 0..250 {
            for (_, ctx, _) in &reqs {
                black_box(evaluate(black_box(&named), None, black_box(ctx)));
            }
        }
        n += 250 * reqs.len() as u64;
    }
    (n as f64 / start.elapsed().as_secs_f64(), per)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

type Latencies = (
    Vec<Duration>,
    Vec<Duration>,
    usize,
    Vec<(&'static str, Vec<Duration>)>,
);

/// Times `calls` API calls and `calls` health checks, interleaved so both see the same machine.
async fn latencies(calls: usize) -> Latencies {
    let server = TestServer::start().await;
    let api = server.api();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = format!("{}/healthz", server.url);
    let body = json!({ "Target": "mi-00000000000000000" });
    let mut api_t = Vec::with_capacity(calls);
    let mut health_t = Vec::with_capacity(calls);
    for i in 0..WARMUP_CALLS + calls {
        let t = Instant::now();
        let out = api
            .call("AmazonSSM.GetConnectionStatus", &body)
            .await
            .unwrap();
        let a = t.elapsed();
        assert_eq!(out["Status"], "notconnected");
        let t = Instant::now();
        let r = http.get(&health).send().await.unwrap();
        assert!(r.status().is_success());
        let _ = r.bytes().await.unwrap();
        let h = t.elapsed();
        if i >= WARMUP_CALLS {
            api_t.push(a);
            health_t.push(h);
        }
    }
    let records = server.state().store.verify_audit().await.unwrap().records;
    let parts = parts(&server, calls).await;
    (
        api_t,
        health_t,
        usize::try_from(records).unwrap_or(0),
        parts,
    )
}

/// Where the time goes, measured directly on the server's state: loading the caller's
/// policies, tags and boundary (what every request does after SigV4), and appending one audit
/// record (a SQLite transaction).
async fn parts(server: &TestServer, n: usize) -> Vec<(&'static str, Vec<Duration>)> {
    let state = server.state();
    let user = state.store.user_by_name("admin").await.unwrap().unwrap();
    let mut load = Vec::with_capacity(n);
    let mut append = Vec::with_capacity(n);
    let event = airlock_server::store::audit::AuditEvent {
        event: "api".into(),
        principal: "arn:aws:iam::000000000000:user/admin".into(),
        source_ip: "127.0.0.1".into(),
        action: "ssm:GetConnectionStatus".into(),
        resource: "arn:aws:ssm:us-east-1:000000000000:*".into(),
        decision: "Allow".into(),
        statement: "allowed by statement 0 of identity policy \"managed/AdministratorAccess\""
            .into(),
        request_id: "00000000-0000-4000-8000-000000000000".into(),
        user_agent: "bench".into(),
        detail: String::new(),
    };
    for _ in 0..n {
        let t = Instant::now();
        let p = airlock_server::authz::load_principal(
            &state.store,
            &state.policies,
            &state.config.account_id,
            user.clone(),
            None,
        )
        .await
        .unwrap();
        load.push(t.elapsed());
        black_box(p);
        let t = Instant::now();
        state.store.append_audit(&event).await.unwrap();
        append.push(t.elapsed());
    }
    vec![
        (
            "… of which: loading the caller's policies, tags, boundary",
            load,
        ),
        ("… of which: appending the audit record", append),
    ]
}

fn main() {
    let calls: usize = std::env::var("AIRLOCK_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    println!(
        "policy: {} cores, {POLICIES} policies × {STATEMENTS} statements, {calls} API calls",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let (mixed, per) = decisions();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut api_t, mut health_t, records, parts) = rt.block_on(latencies(calls));
    assert!(
        records >= WARMUP_CALLS + calls,
        "every call was audited ({records} records)"
    );
    api_t.sort();
    health_t.sort();

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| policy decisions/s, 10×10 statements, request mix (1 thread) | {:.0} |",
        mixed
    );
    for (what, rate) in &per {
        println!("| … {what} | {rate:.0}/s ({:.2} µs each) |", 1e6 / rate);
    }
    println!();
    println!("| per call (µs), loopback, {calls} calls | p50 | p99 |");
    println!("|---|---|---|");
    let row = |name: &str, t: &[Duration]| {
        println!(
            "| {name} | {:.0} | {:.0} |",
            us(percentile(t, 0.50)),
            us(percentile(t, 0.99))
        );
    };
    row("`GET /healthz` (no auth, no policy, no audit)", &health_t);
    row(
        "`GetConnectionStatus` signed (SigV4 + policy + audit)",
        &api_t,
    );
    println!(
        "| added by authentication, authorisation and audit | {:.0} | {:.0} |",
        us(percentile(&api_t, 0.50)) - us(percentile(&health_t, 0.50)),
        us(percentile(&api_t, 0.99)) - us(percentile(&health_t, 0.99)),
    );
    for (name, mut t) in parts {
        t.sort();
        row(name, &t);
    }
}
