//! Properties of the decision rule over generated policies and requests:
//! adding a Deny never turns a deny into an allow, statement and policy order do not
//! matter, a boundary never widens access, adding an Allow never turns an allow into a
//! deny, and evaluation is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_policy::{evaluate, Decision, NamedPolicy, Policy, RequestContext};
use proptest::prelude::*;

const ACTIONS: &[&str] = &[
    "*",
    "ssm:*",
    "ssm:StartSession",
    "ssm:*Session",
    "ssm:Describe*",
    "SSM:terminatesession",
    "ec2:DescribeInstances",
];

const RESOURCES: &[&str] = &[
    "*",
    "arn:aws:ec2:*:*:instance/*",
    "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0",
    "arn:aws:ssm:*:*:document/AWS-*",
    "arn:aws:ssm:us-east-2:123456789012:document/SSM-SessionManagerRunShell",
    "arn:aws:ssm:*:*:session/${aws:username}-*",
    "arn:aws:ssm:us-east-2:123456789012:managed-instance/mi-?????????????????",
];

const CONDITIONS: &[&str] = &[
    r#"{"StringEquals":{"aws:PrincipalTag/Team":"red"}}"#,
    r#"{"StringNotEquals":{"ssm:resourceTag/Finance":["Database","Payroll"]}}"#,
    r#"{"StringLike":{"ssm:resourceTag/Finance":"Web*"}}"#,
    r#"{"BoolIfExists":{"ssm:SessionDocumentAccessCheck":"true"}}"#,
    r#"{"Bool":{"aws:SecureTransport":true}}"#,
    r#"{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}"#,
    r#"{"NotIpAddress":{"aws:SourceIp":["10.0.0.0/8"]}}"#,
    r#"{"Null":{"aws:TokenIssueTime":"true"}}"#,
    r#"{"DateLessThan":{"aws:CurrentTime":"2024-07-01T00:00:00Z"}}"#,
    r#"{"NumericLessThanIfExists":{"aws:MultiFactorAuthAge":"3600"}}"#,
    r#"{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}"#,
    r#"{"ForAnyValue:StringLike":{"aws:TagKeys":"a*"}}"#,
    r#"{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/*"}}"#,
];

const REQ_ACTIONS: &[&str] = &[
    "ssm:StartSession",
    "ssm:TerminateSession",
    "ssm:DescribeSessions",
    "ec2:DescribeInstances",
    "ssm:GetDocument",
];

const REQ_RESOURCES: &[&str] = &[
    "*",
    "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0",
    "arn:aws:ec2:us-east-2:123456789012:instance/i-0bbbbbbbbbbbbbbbb",
    "arn:aws:ssm:us-east-2::document/AWS-StartSSHSession",
    "arn:aws:ssm:us-east-2:123456789012:document/SSM-SessionManagerRunShell",
    "arn:aws:ssm:us-east-2:123456789012:session/alice-037a2e2586edc1ad4",
    "arn:aws:ssm:us-east-2:123456789012:managed-instance/mi-0123456789abcdef0",
];

/// Optional context keys: (key, candidate values).
const KEYS: &[(&str, &[&str])] = &[
    ("aws:username", &["alice", "bob"]),
    ("aws:PrincipalTag/team", &["red", "blue"]),
    ("ssm:resourceTag/Finance", &["WebServers", "Database"]),
    ("ssm:SessionDocumentAccessCheck", &["true", "false"]),
    ("aws:SecureTransport", &["true", "false"]),
    ("aws:SourceIp", &["203.0.113.5", "10.1.2.3", "2001:db8::1"]),
    ("aws:TokenIssueTime", &["2024-06-15T11:00:00Z"]),
    (
        "aws:CurrentTime",
        &["2024-06-15T12:00:00Z", "2024-08-01T00:00:00Z"],
    ),
    ("aws:MultiFactorAuthAge", &["60", "7200"]),
    (
        "aws:PrincipalArn",
        &["arn:aws:iam::123456789012:user/alice"],
    ),
];

/// One statement as JSON.
fn statement(effect: Option<&'static str>) -> impl Strategy<Value = String> {
    let effect = match effect {
        Some(e) => Just(e).boxed(),
        None => prop::sample::select(&["Allow", "Deny"][..]).boxed(),
    };
    (
        effect,
        any::<bool>(),
        prop::collection::vec(prop::sample::select(ACTIONS), 1..3),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(RESOURCES), 1..3),
        prop::option::of(prop::sample::select(CONDITIONS)),
    )
        .prop_map(
            |(effect, not_action, actions, not_resource, resources, condition)| {
                let list = |v: &[&str]| serde_json::to_string(v).unwrap_or_default();
                let mut s = format!(
                    r#"{{"Effect":"{effect}","{}":{},"{}":{}"#,
                    if not_action { "NotAction" } else { "Action" },
                    list(&actions),
                    if not_resource {
                        "NotResource"
                    } else {
                        "Resource"
                    },
                    list(&resources),
                );
                if let Some(c) = condition {
                    s.push_str(&format!(r#","Condition":{c}"#));
                }
                s.push('}');
                s
            },
        )
}

fn statements(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(statement(None), 1..max)
}

fn at_least_two_statements(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(statement(None), 2..max)
}

fn compile(statements: &[String]) -> Policy {
    let json = format!(
        r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
        statements.join(",")
    );
    match Policy::parse(&json) {
        Ok(p) => p,
        Err(e) => panic!("generated policy does not parse: {e}\n{json}"),
    }
}

fn context() -> impl Strategy<Value = RequestContext> {
    let keys = KEYS
        .iter()
        .map(|(k, vs)| prop::option::of(prop::sample::select(*vs)).prop_map(move |v| (*k, v)))
        .collect::<Vec<_>>();
    (
        prop::sample::select(REQ_ACTIONS),
        prop::sample::select(REQ_RESOURCES),
        keys,
        prop::option::of(prop::collection::vec(
            prop::sample::select(&["a", "b", "c", "ab"][..]),
            0..3,
        )),
    )
        .prop_map(|(action, resource, keys, tag_keys)| {
            let mut ctx = RequestContext::new(action, resource);
            for (k, v) in keys {
                if let Some(v) = v {
                    ctx.insert(k, v);
                }
            }
            if let Some(tag_keys) = tag_keys {
                ctx.set_values("aws:TagKeys", tag_keys);
            }
            ctx
        })
}

fn allowed(policies: &[&Policy], boundary: Option<&Policy>, ctx: &RequestContext) -> bool {
    decide(policies, boundary, ctx).is_allowed()
}

fn decide(policies: &[&Policy], boundary: Option<&Policy>, ctx: &RequestContext) -> Decision {
    let named: Vec<NamedPolicy<'_>> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| NamedPolicy {
            name: ["p0", "p1", "p2", "p3"].get(i).copied().unwrap_or("pn"),
            policy: p,
        })
        .collect();
    let boundary = boundary.map(|policy| {
        vec![NamedPolicy {
            name: "boundary",
            policy,
        }]
    });
    evaluate(&named, boundary.as_deref(), ctx)
}

/// The decision's kind, without which statement was cited.
fn kind(d: &Decision) -> &'static str {
    match d {
        Decision::Allow { .. } => "allow",
        Decision::ExplicitDeny { .. } => "explicit deny",
        Decision::ImplicitDeny { .. } => "implicit deny",
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn adding_a_deny_never_allows(
        base in statements(6),
        deny in statement(Some("Deny")),
        at in any::<prop::sample::Index>(),
        ctx in context(),
    ) {
        let mut with_deny = base.clone();
        with_deny.insert(at.index(base.len() + 1), deny);
        let before = compile(&base);
        let after = compile(&with_deny);
        if !allowed(&[&before], None, &ctx) {
            prop_assert!(!allowed(&[&after], None, &ctx));
        }
        // As a separate policy too.
        let deny_only = compile(&with_deny[at.index(base.len() + 1)..=at.index(base.len() + 1)]);
        if !allowed(&[&before], None, &ctx) {
            prop_assert!(!allowed(&[&before, &deny_only], None, &ctx));
        }
    }

    #[test]
    fn adding_an_allow_never_denies(
        base in statements(6),
        allow in statement(Some("Allow")),
        ctx in context(),
    ) {
        let mut with_allow = base.clone();
        with_allow.push(allow);
        if allowed(&[&compile(&base)], None, &ctx) {
            prop_assert!(allowed(&[&compile(&with_allow)], None, &ctx));
        }
    }

    #[test]
    fn statement_order_does_not_matter(
        (original, shuffled) in statements(8).prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
        ctx in context(),
    ) {
        let a = decide(&[&compile(&original)], None, &ctx);
        let b = decide(&[&compile(&shuffled)], None, &ctx);
        prop_assert_eq!(kind(&a), kind(&b));
    }

    #[test]
    fn policy_split_and_order_do_not_matter(
        all in at_least_two_statements(8),
        split in any::<prop::sample::Index>(),
        ctx in context(),
    ) {
        // 1 ≤ cut < len: both halves are non-empty.
        let cut = split.index(all.len() - 1) + 1;
        let single = decide(&[&compile(&all)], None, &ctx);
        let first = compile(&all[..cut]);
        let second = compile(&all[cut..]);
        prop_assert_eq!(kind(&single), kind(&decide(&[&first, &second], None, &ctx)));
        prop_assert_eq!(kind(&single), kind(&decide(&[&second, &first], None, &ctx)));
    }

    #[test]
    fn a_boundary_never_widens(
        identity in statements(6),
        boundary in statements(4),
        ctx in context(),
    ) {
        let identity = compile(&identity);
        let boundary = compile(&boundary);
        if allowed(&[&identity], Some(&boundary), &ctx) {
            prop_assert!(allowed(&[&identity], None, &ctx));
            prop_assert!(
                allowed(&[&boundary], None, &ctx),
                "allowed within the boundary means the boundary alone would allow it"
            );
        }
    }

    #[test]
    fn evaluation_is_deterministic(
        stmts in statements(8),
        boundary in prop::option::of(statements(3)),
        ctx in context(),
    ) {
        let p = compile(&stmts);
        prop_assert_eq!(&p, &compile(&stmts));
        let b = boundary.map(|b| compile(&b));
        let first = decide(&[&p], b.as_ref(), &ctx);
        let second = decide(&[&p], b.as_ref(), &ctx);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first.explain(), second.explain());
    }
}
