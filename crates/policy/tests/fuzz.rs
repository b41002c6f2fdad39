//! Property-based fuzzing of policy documents on the stable toolchain (the libFuzzer target in
//! `fuzz/` mirrors it for nightly): `Policy::parse` on arbitrary text and on generated
//! JSON-ish documents built from the policy grammar's vocabulary (every condition operator,
//! malformed variables, wrong types), then `evaluate` of what parses against arbitrary request
//! contexts. Properties: nothing panics, evaluation is deterministic, and an explicit
//! `Deny` of everything always wins.
//!
//! Each property runs a bounded number of cases (well under 30 s for the file in a debug
//! build); set `AIRLOCK_FUZZ_CASES=N` to run N cases of each instead.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_policy::{evaluate, NamedPolicy, Policy, RequestContext};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// `default` cases, or `AIRLOCK_FUZZ_CASES` when set.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("AIRLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Null",
    "Bogus",
    "",
];

const KEYS: &[&str] = &[
    "aws:username",
    "aws:SourceIp",
    "aws:CurrentTime",
    "aws:EpochTime",
    "aws:SecureTransport",
    "aws:MultiFactorAuthAge",
    "aws:PrincipalArn",
    "aws:PrincipalTag/team",
    "aws:TagKeys",
    "ssm:resourceTag/Finance",
    "ssm:SessionDocumentAccessCheck",
    "aws:userid",
    "",
    "${aws:username}",
];

/// Values that are tricky for some operator: bad IPs and CIDRs, odd numbers and dates,
/// wildcards, policy variables well and badly formed.
const VALUES: &[&str] = &[
    "",
    "*",
    "?",
    "**?*",
    "alice",
    "${aws:username}",
    "${aws:username",
    "${",
    "${}",
    "${*}",
    "${?}",
    "${$}",
    "${aws:username}-*",
    "${aws:PrincipalTag/team}",
    "true",
    "false",
    "TRUE",
    "203.0.113.0/24",
    "203.0.113.5",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "::/0",
    "2001:db8::/129",
    "2001:db8::1",
    "256.1.1.1",
    "1.2.3.4/",
    "0",
    "-0",
    "1e400",
    "-1e400",
    "NaN",
    "18446744073709551616",
    "-9223372036854775809",
    "3600",
    "0.5",
    "2024-07-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1719792000",
    "-99999999999999999",
    "aGVsbG8=",
    "not base64!",
    "arn:aws:iam::*:user/*",
    "arn:aws:iam::123456789012:user/alice",
    "arn:",
    "arn:aws",
    "arn:aws:ssm:*:*:session/${aws:username}-*",
];

const ACTIONS: &[&str] = &[
    "*",
    "ssm:*",
    "ssm:StartSession",
    "ssm:Start*",
    "SSM:terminatesession",
    "ssm:*Session?",
    "ssm",
    ":",
    "ssm:",
    "*:*",
    "",
    "${aws:username}",
];

const RESOURCES: &[&str] = &[
    "*",
    "arn:aws:ssm:*:*:session/${aws:username}-*",
    "arn:aws:ssm:us-east-2:123456789012:document/AWS-*",
    "arn:aws:ec2:*:*:instance/*",
    "arn:*",
    "arn:aws:ssm:*:*:session/${",
    "arn:aws:ssm:*:*:session/${aws:username",
    "arn:aws:ssm:*:*:session/${*}${?}${$}",
    "",
    "not-an-arn",
];

/// A string from `vocab`, or anything.
fn text(vocab: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vocab).prop_map(str::to_owned),
        1 => ".{0,16}",
    ]
}

/// A value where a string or list of strings belongs, sometimes of the wrong type.
fn strings(vocab: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => text(vocab).prop_map(Value::String),
        4 => prop::collection::vec(text(vocab), 0..4)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect())),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => Just(json!({"a": ["b"]})),
        1 => Just(json!([["nested"]])),
    ]
}

fn operator() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["", "", "", "ForAllValues:", "ForAnyValue:", "Bogus:"][..]),
        text(OPERATORS),
        prop::sample::select(&["", "", "IfExists", "ifexists"][..]),
    )
        .prop_map(|(p, o, s)| format!("{p}{o}{s}"))
}

fn condition() -> BoxedStrategy<Value> {
    let block = prop::collection::vec(
        (
            text(KEYS),
            prop_oneof![
                6 => strings(VALUES),
                1 => any::<f64>().prop_map(Value::from),
                1 => any::<u64>().prop_map(Value::from),
            ],
        ),
        0..3,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()));
    prop_oneof![
        8 => prop::collection::vec((operator(), block), 0..3)
            .prop_map(|ops| Value::Object(ops.into_iter().collect::<Map<_, _>>())),
        1 => strings(VALUES),
    ]
    .boxed()
}

fn statement() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            8 => prop::sample::select(&["Allow", "Deny"][..]).prop_map(Value::from),
            1 => strings(&["allow", "", "Maybe"]),
        ],
        prop::sample::select(&["Action", "NotAction", "Both", "Neither"][..]),
        strings(ACTIONS),
        prop::sample::select(&["Resource", "NotResource", "Both", "Neither"][..]),
        strings(RESOURCES),
        prop::option::weighted(0.6, condition()),
        prop::option::weighted(0.2, strings(&["s1", "s2", ""])),
        prop::option::weighted(
            0.1,
            (text(&["Principal", "Unknown", "Effect"]), strings(VALUES)),
        ),
    )
        .prop_map(
            |(effect, a_key, actions, r_key, resources, cond, sid, extra)| {
                let mut s = Map::new();
                s.insert("Effect".into(), effect);
                for (base, key, value) in
                    [("Action", a_key, actions), ("Resource", r_key, resources)]
                {
                    match key {
                        "Both" => {
                            s.insert(base.into(), value.clone());
                            s.insert(format!("Not{base}"), value);
                        }
                        "Neither" => {}
                        k => {
                            s.insert(k.into(), value);
                        }
                    }
                }
                if let Some(c) = cond {
                    s.insert("Condition".into(), c);
                }
                if let Some(sid) = sid {
                    s.insert("Sid".into(), sid);
                }
                if let Some((k, v)) = extra {
                    s.insert(k, v);
                }
                Value::Object(s)
            },
        )
        .boxed()
}

fn document() -> BoxedStrategy<String> {
    (
        prop_oneof![
            4 => Just(Some(Value::from("2012-10-17"))),
            1 => Just(Some(Value::from("2008-10-17"))),
            1 => Just(None),
            1 => strings(&["2012-10-18", ""]).prop_map(Some),
        ],
        prop_oneof![
            6 => prop::collection::vec(statement(), 0..4).prop_map(Value::Array),
            2 => statement(),
            1 => strings(&["x"]),
        ],
        prop::option::weighted(0.1, strings(&["id"])),
    )
        .prop_map(|(version, statement, id)| {
            let mut d = Map::new();
            if let Some(v) = version {
                d.insert("Version".into(), v);
            }
            d.insert("Statement".into(), statement);
            if let Some(id) = id {
                d.insert("Id".into(), id);
            }
            Value::Object(d).to_string()
        })
        .boxed()
}

fn context() -> BoxedStrategy<RequestContext> {
    (
        text(ACTIONS),
        text(RESOURCES),
        prop::collection::vec(
            (text(KEYS), prop::collection::vec(text(VALUES), 0..3)),
            0..6,
        ),
    )
        .prop_map(|(action, resource, keys)| {
            let mut ctx = RequestContext::new(action, resource);
            for (k, vs) in keys {
                if vs.len() == 1 {
                    ctx.insert(&k, vs[0].clone());
                } else {
                    ctx.set_values(&k, vs);
                }
            }
            ctx
        })
        .boxed()
}

fn named(p: &Policy) -> [NamedPolicy<'_>; 1] {
    [NamedPolicy {
        name: "fuzz",
        policy: p,
    }]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn parse_survives_arbitrary_text(s in prop_oneof![".{0,200}", "[\\[\\]{}\":,0-9a-zA-Z ]{0,200}"]) {
        let _ = Policy::parse(&s);
    }

    #[test]
    fn parse_survives_deep_nesting(depth in 0usize..5000, open in prop::sample::select(&["[", "{\"a\":"][..])) {
        let mut s = open.repeat(depth);
        s.push('1');
        let _ = Policy::parse(&s);
        let doc = format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}}}}"#,
            s
        );
        let _ = Policy::parse(&doc);
    }

    #[test]
    fn generated_documents_parse_or_fail_and_evaluate_deterministically(
        doc in document(),
        boundary in prop::option::of(document()),
        contexts in prop::collection::vec(context(), 1..4),
    ) {
        let Ok(policy) = Policy::parse(&doc) else {
            return Ok(());
        };
        prop_assert_eq!(policy.source(), doc.as_str());
        let boundary = boundary.and_then(|b| Policy::parse(&b).ok());
        let bnamed = boundary.as_ref().map(named);
        for ctx in &contexts {
            let a = evaluate(&named(&policy), bnamed.as_ref().map(|b| &b[..]), ctx);
            let b = evaluate(&named(&policy), bnamed.as_ref().map(|b| &b[..]), ctx);
            prop_assert_eq!(&a, &b);
            let _ = a.explain();
            let _ = a.aws_reason("ssm:StartSession");
        }
    }

    #[test]
    fn an_explicit_deny_of_everything_always_wins(
        doc in document(),
        ctx in context(),
    ) {
        let Ok(policy) = Policy::parse(&doc) else {
            return Ok(());
        };
        let deny = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*"}}"#,
        )
        .unwrap();
        let both = [
            NamedPolicy { name: "fuzz", policy: &policy },
            NamedPolicy { name: "deny", policy: &deny },
        ];
        prop_assert!(!evaluate(&both, None, &ctx).is_allowed());
    }
}
