//! The acceptance vectors of design/policy-and-api.md §3.6 (P1–P8 and the generic
//! engine vectors G-1…G-10), as table tests.
//!
//! StartSession is authorised with the §3.3 model, reproduced by [`decide`]: without a
//! document only the target is evaluated, with `ssm:SessionDocumentAccessCheck=false`;
//! with one, the target and the document ARN are both evaluated with the key `true`,
//! and both must be allowed. Tag keys describe the resource being evaluated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_policy::{evaluate, keys, Decision, NamedPolicy, Policy, RequestContext};

const REGION: &str = "us-east-2";
const ACCOUNT: &str = "123456789012";

fn inst(id: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{id}")
}
fn doc(name: &str) -> String {
    format!("arn:aws:ssm:{REGION}:{ACCOUNT}:document/{name}")
}
fn awsdoc(name: &str) -> String {
    format!("arn:aws:ssm:{REGION}::document/{name}")
}
fn sess(id: &str) -> String {
    format!("arn:aws:ssm:{REGION}:{ACCOUNT}:session/{id}")
}
fn managed(id: &str) -> String {
    format!("arn:aws:ssm:{REGION}:{ACCOUNT}:managed-instance/{id}")
}

/// The caller's condition keys.
#[derive(Clone)]
struct Principal(Vec<(&'static str, String)>);

impl Principal {
    /// alice: an IAM user with long-term keys (no MFA or token keys).
    fn alice() -> Self {
        Principal(vec![
            (keys::USERNAME, "alice".into()),
            (keys::USERID, "AIDAALICEEXAMPLE".into()),
            (
                keys::PRINCIPAL_ARN,
                format!("arn:aws:iam::{ACCOUNT}:user/alice"),
            ),
            (keys::PRINCIPAL_TYPE, "User".into()),
            (keys::PRINCIPAL_ACCOUNT, ACCOUNT.into()),
            (keys::SECURE_TRANSPORT, "true".into()),
            (keys::SOURCE_IP, "203.0.113.10".into()),
            (keys::CURRENT_TIME, "2024-06-15T12:00:00Z".into()),
            (keys::EPOCH_TIME, "1718452800".into()),
            (keys::REQUESTED_REGION, REGION.into()),
        ])
    }

    /// An assumed role: no `aws:username`.
    fn role(userid: &str, arn: &str) -> Self {
        Principal(vec![
            (keys::USERID, userid.into()),
            (keys::PRINCIPAL_ARN, arn.into()),
            (keys::PRINCIPAL_TYPE, "AssumedRole".into()),
            (keys::SECURE_TRANSPORT, "true".into()),
        ])
    }

    fn with(mut self, key: &'static str, value: &str) -> Self {
        self.0.push((key, value.into()));
        self
    }
}

/// A request against the §3.6 fixtures.
enum Req<'a> {
    /// `ssm:StartSession` on `target` (with its tags), optionally naming a document.
    Start {
        target: String,
        tags: &'a [(&'a str, &'a str)],
        document: Option<&'a str>,
    },
    /// Any other action on one resource with its tags and extra request keys.
    Act {
        action: &'a str,
        resource: String,
        tags: &'a [(&'a str, &'a str)],
        extra: &'a [(&'a str, &'a [&'a str])],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny,
    ExplicitDeny,
}

fn outcome(d: &Decision) -> Expect {
    match d {
        Decision::Allow { .. } => Expect::Allow,
        Decision::ExplicitDeny { .. } => Expect::ExplicitDeny,
        Decision::ImplicitDeny { .. } => Expect::Deny,
    }
}

fn context(action: &str, resource: &str, who: &Principal, tags: &[(&str, &str)]) -> RequestContext {
    let mut ctx = RequestContext::new(action, resource);
    for (k, v) in &who.0 {
        ctx.insert(k, v.clone());
    }
    for (k, v) in tags {
        ctx.insert(&format!("{}{k}", keys::SSM_RESOURCE_TAG_PREFIX), *v);
        ctx.insert(&format!("{}{k}", keys::RESOURCE_TAG_PREFIX), *v);
    }
    ctx
}

/// Combines per-resource decisions: any explicit deny wins, then any implicit deny.
fn combine(decisions: &[Decision]) -> Expect {
    let outcomes: Vec<Expect> = decisions.iter().map(outcome).collect();
    if outcomes.contains(&Expect::ExplicitDeny) {
        Expect::ExplicitDeny
    } else if outcomes.contains(&Expect::Deny) {
        Expect::Deny
    } else {
        Expect::Allow
    }
}

fn decide(
    identity: &[NamedPolicy<'_>],
    boundary: Option<&[NamedPolicy<'_>]>,
    who: &Principal,
    req: &Req<'_>,
) -> Expect {
    match req {
        Req::Start {
            target,
            tags,
            document,
        } => {
            let check = if document.is_some() { "true" } else { "false" };
            let mut decisions = vec![evaluate(
                identity,
                boundary,
                &context("ssm:StartSession", target, who, tags)
                    .with(keys::SESSION_DOCUMENT_ACCESS_CHECK, check),
            )];
            if let Some(name) = document {
                let arn = if name.starts_with("AWS-") {
                    awsdoc(name)
                } else {
                    doc(name)
                };
                decisions.push(evaluate(
                    identity,
                    boundary,
                    &context("ssm:StartSession", &arn, who, &[])
                        .with(keys::SESSION_DOCUMENT_ACCESS_CHECK, check),
                ));
            }
            combine(&decisions)
        }
        Req::Act {
            action,
            resource,
            tags,
            extra,
        } => {
            let mut ctx = context(action, resource, who, tags);
            for (k, vs) in *extra {
                ctx.set_values(k, vs.iter().copied());
            }
            outcome(&evaluate(identity, boundary, &ctx))
        }
    }
}

fn start<'a>(target: String, tags: &'a [(&'a str, &'a str)], document: Option<&'a str>) -> Req<'a> {
    Req::Start {
        target,
        tags,
        document,
    }
}

fn act<'a>(action: &'a str, resource: String) -> Req<'a> {
    Req::Act {
        action,
        resource,
        tags: &[],
        extra: &[],
    }
}

fn act_tagged<'a>(action: &'a str, resource: String, tags: &'a [(&'a str, &'a str)]) -> Req<'a> {
    Req::Act {
        action,
        resource,
        tags,
        extra: &[],
    }
}

const WEB: &[(&str, &str)] = &[("Finance", "WebServers")];
const DB: &[(&str, &str)] = &[("Finance", "Database")];
const UNTAGGED: &[(&str, &str)] = &[];
const I_WEB: &str = "i-1234567890abcdef0";
const I_DB: &str = "i-0aaaaaaaaaaaaaaaa";
const I_BARE: &str = "i-0bbbbbbbbbbbbbbbb";

struct Row<'a> {
    id: &'static str,
    policy: &'a Policy,
    who: Principal,
    req: Req<'a>,
    expect: Expect,
}

fn run(rows: Vec<Row<'_>>) {
    let mut failures = Vec::new();
    for row in &rows {
        let identity = [NamedPolicy {
            name: row.id,
            policy: row.policy,
        }];
        let got = decide(&identity, None, &row.who, &row.req);
        if got != row.expect {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                row.id, row.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
}

fn parse(json: &str) -> Policy {
    match Policy::parse(json) {
        Ok(p) => p,
        Err(e) => panic!("vector policy does not parse: {e}"),
    }
}

const P1: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["ssm:StartSession"],
      "Resource": [
        "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0",
        "arn:aws:ssm:us-east-2:123456789012:document/SSM-SessionManagerRunShell"
      ],
      "Condition": { "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" } }
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:DescribeSessions", "ssm:GetConnectionStatus", "ssm:DescribeInstanceProperties", "ec2:DescribeInstances"],
      "Resource": "*"
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
      "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"]
    }
  ]
}"#;

#[test]
fn p1_quickstart_end_user() {
    let p = parse(P1);
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P1-1",
            policy: &p,
            who: alice(),
            req: start(inst(I_WEB), WEB, Some("SSM-SessionManagerRunShell")),
            expect: Expect::Allow,
        },
        Row {
            id: "P1-2",
            policy: &p,
            who: alice(),
            req: start(inst(I_WEB), WEB, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P1-3",
            policy: &p,
            who: alice(),
            req: start(inst(I_WEB), WEB, Some("AWS-StartPortForwardingSession")),
            expect: Expect::Deny,
        },
        Row {
            id: "P1-4",
            policy: &p,
            who: alice(),
            req: start(inst(I_DB), DB, Some("SSM-SessionManagerRunShell")),
            expect: Expect::Deny,
        },
        Row {
            id: "P1-5",
            policy: &p,
            who: alice(),
            req: act("ssm:TerminateSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Allow,
        },
        Row {
            id: "P1-6",
            policy: &p,
            who: alice(),
            req: act("ssm:TerminateSession", sess("bob-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        Row {
            id: "P1-7",
            policy: &p,
            who: alice(),
            req: act("ssm:DescribeSessions", "*".into()),
            expect: Expect::Allow,
        },
        Row {
            id: "P1-8",
            policy: &p,
            who: Principal::role(
                "AROAEXAMPLE:alice",
                "arn:aws:sts::123456789012:assumed-role/Dev/alice",
            ),
            req: act("ssm:ResumeSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        Row {
            id: "P1-9",
            policy: &p,
            who: alice(),
            req: act(
                "ssm:TerminateSession",
                sess("alice-smith-0123456789abcdef0"),
            ),
            expect: Expect::Allow,
        },
    ]);
}

const P2: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["ssm:StartSession"],
      "Resource": ["arn:aws:ec2:us-east-2:123456789012:instance/*"],
      "Condition": { "StringLike": { "ssm:resourceTag/Finance": ["WebServers"] } }
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:DescribeSessions", "ssm:GetConnectionStatus", "ssm:DescribeInstanceProperties", "ec2:DescribeInstances"],
      "Resource": "*"
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:CreateDocument", "ssm:UpdateDocument", "ssm:GetDocument"],
      "Resource": "arn:aws:ssm:us-east-2:123456789012:document/SSM-SessionManagerRunShell"
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
      "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"]
    }
  ]
}"#;

#[test]
fn p2_quickstart_administrator() {
    let p = parse(P2);
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P2-1",
            policy: &p,
            who: alice(),
            req: start(inst(I_WEB), WEB, None),
            expect: Expect::Allow,
        },
        Row {
            id: "P2-2",
            policy: &p,
            who: alice(),
            req: start(inst(I_DB), DB, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P2-3",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P2-4",
            policy: &p,
            who: alice(),
            req: start(
                inst("i-0cccccccccccccccc"),
                &[("finance", "WebServers")],
                None,
            ),
            expect: Expect::Allow,
        },
        Row {
            id: "P2-5",
            policy: &p,
            who: alice(),
            req: start(
                inst("i-0dddddddddddddddd"),
                &[("Finance", "webservers")],
                None,
            ),
            expect: Expect::Deny,
        },
        Row {
            id: "P2-6",
            policy: &p,
            who: alice(),
            req: start(managed("mi-0123456789abcdef0"), WEB, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P2-7",
            policy: &p,
            who: alice(),
            req: start(inst(I_WEB), WEB, Some("SSM-SessionManagerRunShell")),
            expect: Expect::Deny,
        },
        Row {
            id: "P2-8a",
            policy: &p,
            who: alice(),
            req: act("ssm:UpdateDocument", doc("SSM-SessionManagerRunShell")),
            expect: Expect::Allow,
        },
        Row {
            id: "P2-8b",
            policy: &p,
            who: alice(),
            req: act("ssm:UpdateDocument", doc("Other")),
            expect: Expect::Deny,
        },
    ]);
}

const P3: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["ssm:StartSession"],
      "Resource": [
        "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890EXAMPLE",
        "arn:aws:ec2:us-east-2:123456789012:instance/i-abcdefghijEXAMPLE",
        "arn:aws:ec2:us-east-2:123456789012:instance/i-0e9d8c7b6aEXAMPLE"
      ]
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
      "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"]
    }
  ]
}"#;

#[test]
fn p3_specific_nodes() {
    let p = parse(P3);
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P3-1",
            policy: &p,
            who: alice(),
            req: start(inst("i-abcdefghijEXAMPLE"), UNTAGGED, None),
            expect: Expect::Allow,
        },
        Row {
            id: "P3-2",
            policy: &p,
            who: alice(),
            req: start(inst("i-ABCDEFGHIJEXAMPLE"), UNTAGGED, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P3-3",
            policy: &p,
            who: alice(),
            req: start(
                format!("arn:aws:ec2:us-west-2:{ACCOUNT}:instance/i-abcdefghijEXAMPLE"),
                UNTAGGED,
                None,
            ),
            expect: Expect::Deny,
        },
        Row {
            id: "P3-4",
            policy: &p,
            who: alice(),
            req: start(
                inst("i-abcdefghijEXAMPLE"),
                UNTAGGED,
                Some("AWS-StartSSHSession"),
            ),
            expect: Expect::Deny,
        },
    ]);
}

const P4: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["ssm:StartSession"],
      "Resource": "*",
      "Condition": {
        "StringLike": {
          "ssm:resourceTag/tag-key1": ["tag-value1"],
          "ssm:resourceTag/tag-key2": ["tag-value2"]
        }
      }
    }
  ]
}"#;

#[test]
fn p4_two_tags() {
    let p = parse(P4);
    let both: &[(&str, &str)] = &[("tag-key1", "tag-value1"), ("tag-key2", "tag-value2")];
    let one: &[(&str, &str)] = &[("tag-key1", "tag-value1")];
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P4-1",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), both, None),
            expect: Expect::Allow,
        },
        Row {
            id: "P4-2",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), one, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P4-3",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), both, Some("AWS-StartPortForwardingSession")),
            expect: Expect::Deny,
        },
    ]);
}

const P5: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    { "Action": ["ssm:DescribeSessions"], "Effect": "Allow", "Resource": ["*"] },
    { "Action": ["ssm:TerminateSession"], "Effect": "Allow", "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"] }
  ]
}"#;

#[test]
fn p5_own_sessions_by_user_name() {
    let p = parse(P5);
    let p2008 = parse(&P5.replace("2012-10-17", "2008-10-17"));
    let unversioned = parse(&P5.replace(r#""Version": "2012-10-17","#, ""));
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P5-1",
            policy: &p,
            who: alice(),
            req: act("ssm:TerminateSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Allow,
        },
        Row {
            id: "P5-2",
            policy: &p,
            who: alice(),
            req: act("ssm:TerminateSession", sess("bob-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        Row {
            id: "P5-3",
            policy: &p,
            who: alice(),
            req: act("ssm:ResumeSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        Row {
            id: "P5-4a",
            policy: &p2008,
            who: alice(),
            req: act("ssm:TerminateSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        Row {
            id: "P5-4b",
            policy: &unversioned,
            who: alice(),
            req: act("ssm:TerminateSession", sess("alice-037a2e2586edc1ad4")),
            expect: Expect::Deny,
        },
        // The literal text does match a session literally named that way.
        Row {
            id: "P5-4c",
            policy: &p2008,
            who: alice(),
            req: act("ssm:TerminateSession", sess("${aws:username}-0a")),
            expect: Expect::Allow,
        },
    ]);
}

const P6: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["ssm:TerminateSession"],
      "Resource": "*",
      "Condition": {
        "StringLike": { "ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"] }
      }
    }
  ]
}"#;

#[test]
fn p6_own_sessions_by_session_tags() {
    let p = parse(P6);
    let variant = parse(&P6.replace(
        r#""ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]"#,
        r#""ssm:resourceTag/aws:ssmmessages:target-id": ["i-02573cafcfEXAMPLE"]"#,
    ));
    let carol = || {
        Principal::role(
            "AROAOPSEXAMPLE:carol",
            "arn:aws:sts::123456789012:assumed-role/Ops/carol",
        )
    };
    let by_carol: &[(&str, &str)] = &[
        ("aws:ssmmessages:session-id", "AROAOPSEXAMPLE:carol"),
        ("aws:ssmmessages:target-id", I_WEB),
    ];
    let by_dave: &[(&str, &str)] = &[
        ("aws:ssmmessages:session-id", "AROAOPSEXAMPLE:dave"),
        ("aws:ssmmessages:target-id", I_WEB),
    ];
    run(vec![
        Row {
            id: "P6-1",
            policy: &p,
            who: carol(),
            req: act_tagged(
                "ssm:TerminateSession",
                sess("carol-037a2e2586edc1ad4"),
                by_carol,
            ),
            expect: Expect::Allow,
        },
        Row {
            id: "P6-2",
            policy: &p,
            who: carol(),
            req: act_tagged(
                "ssm:TerminateSession",
                sess("dave-037a2e2586edc1ad4"),
                by_dave,
            ),
            expect: Expect::Deny,
        },
        Row {
            id: "P6-3",
            policy: &variant,
            who: carol(),
            req: act_tagged(
                "ssm:TerminateSession",
                sess("carol-037a2e2586edc1ad4"),
                by_carol,
            ),
            expect: Expect::Deny,
        },
    ]);
}

const P7: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Action": ["ssm:StartSession", "ssm:TerminateSession", "ssm:ResumeSession", "ssm:DescribeSessions", "ssm:GetConnectionStatus"],
      "Effect": "Allow",
      "Resource": ["*"]
    },
    {
      "Sid": "VisualEditor1",
      "Effect": "Deny",
      "Action": "ssm:StartSession",
      "Resource": "arn:aws:ssm:*:*:document/AWS-StartSSHSession"
    }
  ]
}"#;

const P7_WITHOUT_DENY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Action": ["ssm:StartSession", "ssm:TerminateSession", "ssm:ResumeSession", "ssm:DescribeSessions", "ssm:GetConnectionStatus"],
      "Effect": "Allow",
      "Resource": ["*"]
    }
  ]
}"#;

#[test]
fn p7_full_admin_with_ssh_deny() {
    let p = parse(P7);
    let without = parse(P7_WITHOUT_DENY);
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P7-1",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, None),
            expect: Expect::Allow,
        },
        Row {
            id: "P7-2",
            policy: &p,
            who: alice(),
            req: act("ssm:TerminateSession", sess("bob-037a2e2586edc1ad4")),
            expect: Expect::Allow,
        },
        Row {
            id: "P7-3",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, Some("AWS-StartSSHSession")),
            expect: Expect::ExplicitDeny,
        },
        Row {
            id: "P7-4",
            policy: &without,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, Some("AWS-StartSSHSession")),
            expect: Expect::Allow,
        },
    ]);
}

#[test]
fn p7_explains_the_deny() {
    let p = parse(P7);
    let ctx = context(
        "ssm:StartSession",
        &awsdoc("AWS-StartSSHSession"),
        &Principal::alice(),
        &[],
    );
    let d = evaluate(
        &[NamedPolicy {
            name: "admin",
            policy: &p,
        }],
        None,
        &ctx,
    );
    assert_eq!(
        d.explain(),
        r#"explicitly denied by statement 1 (Sid "VisualEditor1") of identity policy "admin""#
    );
    assert_eq!(
        d.aws_reason("ssm:StartSession").as_deref(),
        Some(" with an explicit deny in an identity-based policy")
    );
}

const P8: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "ssm:StartSession",
      "Resource": [
        "arn:aws:ec2:us-east-2:123456789012:instance/*",
        "arn:aws:ssm:us-east-2::document/AWS-StartPortForwardingSession"
      ],
      "Condition": { "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" } }
    },
    {
      "Effect": "Allow",
      "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
      "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"]
    }
  ]
}"#;

#[test]
fn p8_port_forwarding_only() {
    let p = parse(P8);
    let alice = Principal::alice;
    run(vec![
        Row {
            id: "P8-1",
            policy: &p,
            who: alice(),
            req: start(
                inst(I_BARE),
                UNTAGGED,
                Some("AWS-StartPortForwardingSession"),
            ),
            expect: Expect::Allow,
        },
        Row {
            id: "P8-2",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, None),
            expect: Expect::Deny,
        },
        Row {
            id: "P8-3",
            policy: &p,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, Some("SSM-SessionManagerRunShell")),
            expect: Expect::Deny,
        },
        Row {
            id: "P8-4",
            policy: &p,
            who: alice(),
            req: start(
                inst(I_BARE),
                UNTAGGED,
                Some("AWS-StartPortForwardingSessionToRemoteHost"),
            ),
            expect: Expect::Deny,
        },
    ]);
}

/// A one-statement 2012-10-17 policy.
fn stmt(body: &str) -> Policy {
    parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{body}]}}"#
    ))
}

#[test]
fn generic_engine_vectors() {
    let alice = Principal::alice;
    let g1 = stmt(r#"{"Effect":"Allow","Action":"ssm:Describe*","Resource":"*"}"#);
    let g2 = stmt(r#"{"Effect":"Allow","NotAction":"ssm:TerminateSession","Resource":"*"}"#);
    let g3 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:StartSession","NotResource":"arn:aws:ec2:*:*:instance/i-0bbbbbbbbbbbbbbbb"}"#,
    );
    let g4 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:StartSession","Resource":"arn:aws:ec2:us-east-2:123456789012:instance/i-12345678?0abcdef0"}"#,
    );
    let g5 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:GetDocument","Resource":"*"},
           {"Effect":"Deny","Action":"ssm:GetDocument","Resource":"*"}"#,
    );
    let g6 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:DescribeSessions","Resource":"*",
            "Condition":{"StringNotEquals":{"aws:PrincipalTag/Team":["red","blue"]}}}"#,
    );
    let g7 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:DescribeSessions","Resource":"*",
            "Condition":{"Null":{"aws:TokenIssueTime":"true"}}}"#,
    );
    let g8 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:AddTagsToResource","Resource":"*",
            "Condition":{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}}"#,
    );
    let g9 = stmt(
        r#"{"Effect":"Allow","Action":"ssm:AddTagsToResource","Resource":"*",
            "Condition":{"ForAnyValue:StringEquals":{"aws:TagKeys":["a"]}}}"#,
    );
    let tag_keys = |keys: &'static [&'static str]| -> Req<'static> {
        let extra: &'static [(&'static str, &'static [&'static str])] = match keys {
            ["a"] => &[("aws:TagKeys", &["a"])],
            ["a", "c"] => &[("aws:TagKeys", &["a", "c"])],
            ["b", "a"] => &[("aws:TagKeys", &["b", "a"])],
            [] => &[("aws:TagKeys", &[])],
            _ => &[],
        };
        Req::Act {
            action: "ssm:AddTagsToResource",
            resource: managed("mi-0123456789abcdef0"),
            tags: &[],
            extra,
        }
    };
    let absent = || act("ssm:AddTagsToResource", managed("mi-0123456789abcdef0"));
    let describe = || act("ssm:DescribeSessions", "*".into());
    run(vec![
        Row {
            id: "G-1",
            policy: &g1,
            who: alice(),
            req: act("ssm:DescribeSessions", "*".into()),
            expect: Expect::Allow,
        },
        Row {
            id: "G-2a",
            policy: &g2,
            who: alice(),
            req: act("ssm:TerminateSession", sess("alice-0a")),
            expect: Expect::Deny,
        },
        Row {
            id: "G-2b",
            policy: &g2,
            who: alice(),
            req: start(inst(I_WEB), WEB, None),
            expect: Expect::Allow,
        },
        Row {
            id: "G-3a",
            policy: &g3,
            who: alice(),
            req: start(inst(I_BARE), UNTAGGED, None),
            expect: Expect::Deny,
        },
        Row {
            id: "G-3b",
            policy: &g3,
            who: alice(),
            req: start(inst(I_WEB), WEB, None),
            expect: Expect::Allow,
        },
        Row {
            id: "G-4",
            policy: &g4,
            who: alice(),
            req: start(inst(I_WEB), WEB, None),
            expect: Expect::Allow,
        },
        Row {
            id: "G-5",
            policy: &g5,
            who: alice(),
            req: act("ssm:GetDocument", doc("X")),
            expect: Expect::ExplicitDeny,
        },
        Row {
            id: "G-6a",
            policy: &g6,
            who: alice().with("aws:PrincipalTag/Team", "green"),
            req: describe(),
            expect: Expect::Allow,
        },
        Row {
            id: "G-6b",
            policy: &g6,
            who: alice().with("aws:PrincipalTag/Team", "red"),
            req: describe(),
            expect: Expect::Deny,
        },
        Row {
            id: "G-6c",
            policy: &g6,
            who: alice(),
            req: describe(),
            expect: Expect::Allow,
        },
        Row {
            id: "G-7a",
            policy: &g7,
            who: alice(),
            req: describe(),
            expect: Expect::Allow,
        },
        Row {
            id: "G-7b",
            policy: &g7,
            who: alice().with(keys::TOKEN_ISSUE_TIME, "2024-06-15T11:00:00Z"),
            req: describe(),
            expect: Expect::Deny,
        },
        Row {
            id: "G-8a",
            policy: &g8,
            who: alice(),
            req: tag_keys(&["a"]),
            expect: Expect::Allow,
        },
        Row {
            id: "G-8b",
            policy: &g8,
            who: alice(),
            req: tag_keys(&["a", "c"]),
            expect: Expect::Deny,
        },
        Row {
            id: "G-8c",
            policy: &g8,
            who: alice(),
            req: absent(),
            expect: Expect::Allow,
        },
        Row {
            id: "G-9a",
            policy: &g9,
            who: alice(),
            req: tag_keys(&["b", "a"]),
            expect: Expect::Allow,
        },
        Row {
            id: "G-9b",
            policy: &g9,
            who: alice(),
            req: tag_keys(&[]),
            expect: Expect::Deny,
        },
        Row {
            id: "G-9c",
            policy: &g9,
            who: alice(),
            req: absent(),
            expect: Expect::Deny,
        },
    ]);
}

#[test]
fn g10_boundary_limits_identity() {
    let identity = stmt(r#"{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*"}"#);
    let boundary =
        stmt(r#"{"Sid":"OnlyDescribe","Effect":"Allow","Action":"ssm:Describe*","Resource":"*"}"#);
    let ids = [NamedPolicy {
        name: "user",
        policy: &identity,
    }];
    let bs = [NamedPolicy {
        name: "boundary",
        policy: &boundary,
    }];
    let ctx = context("ssm:StartSession", &inst(I_WEB), &Principal::alice(), WEB);
    let d = evaluate(&ids, Some(&bs), &ctx);
    assert_eq!(outcome(&d), Expect::Deny, "G-10");
    assert_eq!(
        d.explain(),
        r#"implicitly denied: statement 0 of identity policy "user" allows the request, but no permissions boundary statement does"#
    );
    assert_eq!(
        d.aws_reason("ssm:StartSession").as_deref(),
        Some(" because no permissions boundary allows the ssm:StartSession action")
    );
    // Within the boundary, the identity allow applies.
    let both = stmt(
        r#"{"Effect":"Allow","Action":["ssm:StartSession","ssm:DescribeSessions"],"Resource":"*"}"#,
    );
    let ids = [NamedPolicy {
        name: "user",
        policy: &both,
    }];
    let d = evaluate(
        &ids,
        Some(&bs),
        &context("ssm:DescribeSessions", "*", &Principal::alice(), &[]),
    );
    assert!(d.is_allowed());
    assert_eq!(
        d.explain(),
        r#"allowed by statement 0 of identity policy "user", within statement 0 (Sid "OnlyDescribe") of permissions boundary "boundary""#
    );
}
