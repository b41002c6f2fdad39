//! Per-operator tests: semantics, missing keys, `IfExists`, set qualifiers, multivalued
//! keys and variables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn ctx() -> RequestContext {
    RequestContext::new("ssm:StartSession", "*")
}

/// Whether `op: { key: values }` holds for `ctx` in a 2012-10-17 policy.
fn holds(op: &str, key: &str, values: &[&str], ctx: &RequestContext) -> bool {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let operator = Operator::parse(op).unwrap();
    Condition::compile(&operator, key, &values, true)
        .unwrap()
        .holds(ctx)
}

fn compile_err(op: &str, values: &[&str]) -> Problem {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    match Operator::parse(op) {
        Err(p) => p,
        Ok(operator) => Condition::compile(&operator, "k", &values, true).unwrap_err(),
    }
}

fn with(key: &str, value: &str) -> RequestContext {
    ctx().with(key, value)
}

#[test]
fn string_equals_is_case_sensitive_and_ors_values() {
    let c = with("k", "Red");
    assert!(holds("StringEquals", "k", &["Red"], &c));
    assert!(!holds("StringEquals", "k", &["red"], &c));
    assert!(holds("StringEquals", "k", &["blue", "Red"], &c));
    assert!(
        !holds("StringEquals", "k", &["R*"], &c),
        "no wildcards in StringEquals"
    );
    assert!(
        holds("StringEquals", "K", &["Red"], &c),
        "key names are case-insensitive"
    );
}

#[test]
fn string_not_equals_is_and_of_negations() {
    let c = with("k", "red");
    assert!(!holds("StringNotEquals", "k", &["red", "blue"], &c));
    assert!(!holds("StringNotEquals", "k", &["blue", "red"], &c));
    assert!(holds("StringNotEquals", "k", &["blue", "green"], &c));
}

#[test]
fn ignore_case() {
    let c = with("k", "WebServers");
    assert!(holds("StringEqualsIgnoreCase", "k", &["webservers"], &c));
    assert!(!holds("StringEqualsIgnoreCase", "k", &["webserver"], &c));
    assert!(!holds(
        "StringNotEqualsIgnoreCase",
        "k",
        &["WEBSERVERS"],
        &c
    ));
    assert!(holds("StringNotEqualsIgnoreCase", "k", &["other"], &c));
    assert!(holds(
        "StringEqualsIgnoreCase",
        "k",
        &["ÄÖ"],
        &with("k", "äö")
    ));
}

#[test]
fn string_like() {
    let c = with("k", "arn:aws:iam::1:role/a/b");
    assert!(holds("StringLike", "k", &["arn:aws:iam::*"], &c));
    assert!(
        holds("StringLike", "k", &["*role/a*"], &c),
        "* crosses / and :"
    );
    assert!(!holds("StringLike", "k", &["*ROLE*"], &c), "case-sensitive");
    assert!(holds("StringLike", "k", &["arn:aws:iam::?:role/a/b"], &c));
    assert!(!holds("StringNotLike", "k", &["x", "*role*"], &c));
    assert!(holds("StringNotLike", "k", &["x", "*user*"], &c));
}

#[test]
fn missing_key_rules() {
    let c = ctx();
    for op in [
        "StringEquals",
        "StringLike",
        "StringEqualsIgnoreCase",
        "ArnLike",
        "ArnEquals",
        "Bool",
    ] {
        assert!(!holds(op, "absent", &["true"], &c), "{op}");
        assert!(
            holds(&format!("{op}IfExists"), "absent", &["true"], &c),
            "{op}IfExists"
        );
    }
    for op in [
        "StringNotEquals",
        "StringNotLike",
        "StringNotEqualsIgnoreCase",
        "ArnNotLike",
        "ArnNotEquals",
    ] {
        assert!(holds(op, "absent", &["x"], &c), "{op}");
        assert!(
            holds(&format!("{op}IfExists"), "absent", &["x"], &c),
            "{op}IfExists"
        );
    }
    assert!(!holds("NumericLessThan", "absent", &["1"], &c));
    assert!(holds("NumericNotEquals", "absent", &["1"], &c));
    assert!(!holds("DateLessThan", "absent", &["2024"], &c));
    assert!(holds("DateNotEquals", "absent", &["2024"], &c));
    assert!(!holds("IpAddress", "absent", &["10.0.0.0/8"], &c));
    assert!(holds("NotIpAddress", "absent", &["10.0.0.0/8"], &c));
    assert!(!holds("BinaryEquals", "absent", &["AAE="], &c));
    assert!(holds("BinaryEqualsIfExists", "absent", &["AAE="], &c));
    assert!(holds("IpAddressIfExists", "absent", &["10.0.0.0/8"], &c));
    assert!(holds("NumericLessThanIfExists", "absent", &["1"], &c));
    assert!(holds("DateGreaterThanIfExists", "absent", &["2024"], &c));
}

#[test]
fn if_exists_evaluates_present_keys_normally() {
    let c = with("ssm:SessionDocumentAccessCheck", "false");
    assert!(!holds(
        "BoolIfExists",
        "ssm:sessiondocumentaccesscheck",
        &["true"],
        &c
    ));
    let c = with("ssm:SessionDocumentAccessCheck", "true");
    assert!(holds(
        "BoolIfExists",
        "ssm:SessionDocumentAccessCheck",
        &["true"],
        &c
    ));
    // Deny + StringNotEqualsIfExists still applies to a missing key.
    assert!(holds("StringNotEqualsIfExists", "absent", &["x"], &ctx()));
}

#[test]
fn empty_value_list_is_a_missing_key() {
    let c = ctx().with_values("k", Vec::<String>::new());
    assert!(!holds("StringEquals", "k", &["a"], &c));
    assert!(holds("StringNotEquals", "k", &["a"], &c));
    assert!(holds("Null", "k", &["true"], &c));
}

#[test]
fn null() {
    let present = with("aws:TokenIssueTime", "2024-06-30T00:00:00Z");
    assert!(holds("Null", "aws:TokenIssueTime", &["true"], &ctx()));
    assert!(!holds("Null", "aws:TokenIssueTime", &["true"], &present));
    assert!(holds("Null", "aws:TokenIssueTime", &["false"], &present));
    assert!(!holds("Null", "aws:TokenIssueTime", &["false"], &ctx()));
    assert!(holds("Null", "aws:TokenIssueTime", &["TRUE"], &ctx()));
    assert!(matches!(
        compile_err("NullIfExists", &["true"]),
        Problem::InvalidOperator { .. }
    ));
    assert!(matches!(
        compile_err("ForAnyValue:Null", &["true"]),
        Problem::InvalidOperator { .. }
    ));
    assert!(matches!(
        compile_err("Null", &["yes"]),
        Problem::InvalidBool { .. }
    ));
}

#[test]
fn numeric() {
    let c = with("aws:MultiFactorAuthAge", "3600");
    let k = "aws:MultiFactorAuthAge";
    assert!(holds("NumericEquals", k, &["3600"], &c));
    assert!(holds("NumericEquals", k, &["3600.0"], &c));
    assert!(!holds("NumericNotEquals", k, &["3600.00"], &c));
    assert!(holds("NumericLessThan", k, &["3601"], &c));
    assert!(!holds("NumericLessThan", k, &["3600"], &c));
    assert!(holds("NumericLessThanEquals", k, &["3600"], &c));
    assert!(
        holds("NumericGreaterThan", k, &["-1", "99999"], &c),
        "values OR"
    );
    assert!(holds("NumericGreaterThanEquals", k, &["3600"], &c));
    assert!(!holds("NumericGreaterThan", k, &["3600"], &c));
    assert!(!holds("NumericEquals", k, &["3600"], &with(k, "lots")));
    assert!(matches!(
        compile_err("NumericEquals", &["ten"]),
        Problem::InvalidNumber { .. }
    ));
    assert!(matches!(
        compile_err("NumericEquals", &["${aws:x}"]),
        Problem::VariableNotAllowed { .. }
    ));
}

#[test]
fn dates_compare_iso_and_epoch_either_way() {
    let iso = with("aws:CurrentTime", "2024-06-15T12:00:00Z");
    let epoch = with("aws:EpochTime", "1718452800"); // 2024-06-15T12:00:00Z
    for (c, k) in [(&iso, "aws:CurrentTime"), (&epoch, "aws:EpochTime")] {
        assert!(holds("DateLessThan", k, &["2024-06-30T23:59:59Z"], c));
        assert!(holds("DateLessThan", k, &["1719791999"], c));
        assert!(holds("DateGreaterThan", k, &["2024-06-01"], c));
        assert!(!holds("DateGreaterThan", k, &["2024-06-15T12:00:00Z"], c));
        assert!(holds(
            "DateGreaterThanEquals",
            k,
            &["2024-06-15T12:00:00Z"],
            c
        ));
        assert!(holds("DateLessThanEquals", k, &["1718452800"], c));
        assert!(holds("DateEquals", k, &["2024-06-15T14:00:00+02:00"], c));
        assert!(!holds("DateNotEquals", k, &["2024-06-15T12:00Z"], c));
        assert!(holds("DateNotEquals", k, &["2024"], c));
    }
    assert!(matches!(
        compile_err("DateLessThan", &["2024-13-01"]),
        Problem::InvalidDate { .. }
    ));
    assert!(matches!(
        compile_err("DateLessThan", &["${aws:CurrentTime}"]),
        Problem::VariableNotAllowed { .. }
    ));
}

#[test]
fn bool_takes_literals_json_bools_and_variables() {
    let c = with("aws:SecureTransport", "true");
    assert!(holds("Bool", "aws:SecureTransport", &["true"], &c));
    assert!(holds("Bool", "aws:SecureTransport", &["TRUE"], &c));
    assert!(!holds("Bool", "aws:SecureTransport", &["false"], &c));
    assert!(holds(
        "Bool",
        "aws:SecureTransport",
        &["True"],
        &with("aws:SecureTransport", "TRUE")
    ));
    assert!(!holds(
        "Bool",
        "aws:SecureTransport",
        &["true"],
        &with("aws:SecureTransport", "yes")
    ));
    let c = c.with("aws:PrincipalTag/requireTls", "true");
    assert!(holds(
        "Bool",
        "aws:SecureTransport",
        &["${aws:PrincipalTag/requireTls}"],
        &c
    ));
    assert!(!holds(
        "Bool",
        "aws:SecureTransport",
        &["${aws:PrincipalTag/absent}"],
        &c
    ));
    assert!(matches!(
        compile_err("Bool", &["yes"]),
        Problem::InvalidBool { .. }
    ));
}

#[test]
fn binary_equals() {
    let c = with("k", "QmluYXJ5VmFsdWU=");
    assert!(holds("BinaryEquals", "k", &["QmluYXJ5VmFsdWU="], &c));
    assert!(
        holds("BinaryEquals", "k", &["QmluYXJ5VmFsdWU"], &c),
        "padding optional"
    );
    assert!(!holds("BinaryEquals", "k", &["AAE="], &c));
    assert!(matches!(
        compile_err("BinaryEquals", &["not base64!"]),
        Problem::InvalidBase64 { .. }
    ));
}

#[test]
fn ip_address() {
    let k = "aws:SourceIp";
    let v4 = with(k, "203.0.113.77");
    assert!(holds("IpAddress", k, &["203.0.113.0/24"], &v4));
    assert!(holds("IpAddress", k, &["10.0.0.0/8", "203.0.113.77"], &v4));
    assert!(!holds("IpAddress", k, &["203.0.112.0/24"], &v4));
    assert!(!holds("NotIpAddress", k, &["203.0.113.0/24"], &v4));
    assert!(holds(
        "NotIpAddress",
        k,
        &["10.0.0.0/8", "192.168.0.0/16"],
        &v4
    ));
    assert!(!holds(
        "NotIpAddress",
        k,
        &["10.0.0.0/8", "203.0.113.0/24"],
        &v4
    ));
    let v6 = with(k, "2001:db8:1234:5678::9");
    assert!(holds("IpAddress", k, &["2001:DB8:1234:5678::/64"], &v6));
    assert!(!holds("IpAddress", k, &["203.0.113.0/24"], &v6));
    assert!(holds(
        "IpAddress",
        k,
        &["203.0.113.0/24"],
        &with(k, "::ffff:203.0.113.5")
    ));
    assert!(!holds(
        "IpAddress",
        k,
        &["0.0.0.0/0"],
        &with(k, "not-an-ip")
    ));
    assert!(matches!(
        compile_err("IpAddress", &["203.0.113.0/33"]),
        Problem::InvalidCidr { .. }
    ));
    assert!(matches!(
        compile_err("IpAddress", &["${aws:SourceIp}"]),
        Problem::VariableNotAllowed { .. }
    ));
}

#[test]
fn arn_operators_are_segment_wise() {
    let k = "aws:SourceArn";
    let c = with(
        k,
        "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt",
    );
    let p = "arn:aws:someservice:*:111122223333:finance/*";
    assert!(holds("StringLike", k, &[p], &c));
    for op in ["ArnLike", "ArnEquals"] {
        assert!(!holds(op, k, &[p], &c), "{op}");
    }
    for op in ["ArnNotLike", "ArnNotEquals"] {
        assert!(holds(op, k, &[p], &c), "{op}");
    }
    let c = with(k, "arn:aws:iam::123456789012:role/Ops");
    assert!(holds("ArnLike", k, &["arn:aws:iam::*:role/*"], &c));
    assert!(holds(
        "ArnEquals",
        k,
        &["arn:aws:iam::123456789012:role/Ops"],
        &c
    ));
    assert!(!holds(
        "ArnEquals",
        k,
        &["arn:aws:iam::123456789012:role/ops"],
        &c
    ));
    assert!(holds("ArnLike", k, &["*"], &c));
    let c = c.with("aws:PrincipalArn", "arn:aws:iam::123456789012:role/Ops");
    assert!(holds("ArnEquals", k, &["${aws:PrincipalArn}"], &c));
}

#[test]
fn string_variables_resolve_and_missing_ones_match_nothing() {
    let c = ctx()
        .with("aws:username", "alice")
        .with("owner", "alice")
        .with("aws:PrincipalTag/team", "a*");
    assert!(holds("StringEquals", "owner", &["${aws:username}"], &c));
    assert!(holds("StringLike", "owner", &["${aws:username}"], &c));
    assert!(holds(
        "StringEqualsIgnoreCase",
        "owner",
        &["${AWS:USERNAME}"],
        &c
    ));
    // Missing variable: positive false, negated true.
    assert!(!holds("StringEquals", "owner", &["${aws:userid}"], &c));
    assert!(!holds("StringLike", "owner", &["${aws:userid}"], &c));
    assert!(holds("StringNotEquals", "owner", &["${aws:userid}"], &c));
    assert!(holds("StringNotLike", "owner", &["${aws:userid}"], &c));
    // Defaults.
    assert!(holds(
        "StringEquals",
        "owner",
        &["${aws:userid, 'alice'}"],
        &c
    ));
    // A substituted value containing `*` is literal.
    assert!(!holds(
        "StringLike",
        "owner",
        &["${aws:PrincipalTag/team}"],
        &c
    ));
    assert!(holds(
        "StringLike",
        "owner",
        &["${aws:PrincipalTag/team, 'x'}lice"],
        &with("owner", "a*lice").with("aws:PrincipalTag/team", "a*")
    ));
}

#[test]
fn version_2008_keeps_variables_literal() {
    let operator = Operator::parse("StringEquals").unwrap();
    let cond = Condition::compile(&operator, "k", &["${aws:username}".to_string()], false).unwrap();
    assert!(cond.holds(&with("k", "${aws:username}").with("aws:username", "alice")));
    assert!(!cond.holds(&with("k", "alice").with("aws:username", "alice")));
}

#[test]
fn set_qualifiers() {
    let k = "aws:TagKeys";
    let tags = |v: &[&str]| ctx().with_values(k, v.iter().copied());
    // ForAllValues: every request value is in the policy set; vacuously true.
    assert!(holds(
        "ForAllValues:StringEquals",
        k,
        &["a", "b"],
        &tags(&["a"])
    ));
    assert!(holds(
        "ForAllValues:StringEquals",
        k,
        &["a", "b"],
        &tags(&["b", "a"])
    ));
    assert!(!holds(
        "ForAllValues:StringEquals",
        k,
        &["a", "b"],
        &tags(&["a", "c"])
    ));
    assert!(holds("ForAllValues:StringEquals", k, &["a", "b"], &ctx()));
    assert!(holds(
        "ForAllValues:StringEquals",
        k,
        &["a", "b"],
        &tags(&[])
    ));
    // ForAnyValue: at least one request value matches; false when absent or empty.
    assert!(holds(
        "ForAnyValue:StringEquals",
        k,
        &["a"],
        &tags(&["b", "a"])
    ));
    assert!(!holds("ForAnyValue:StringEquals", k, &["a"], &tags(&["b"])));
    assert!(!holds("ForAnyValue:StringEquals", k, &["a"], &tags(&[])));
    assert!(!holds("ForAnyValue:StringEquals", k, &["a"], &ctx()));
    // The qualifier decides for a missing key before IfExists does (as AWS behaves).
    assert!(!holds(
        "ForAnyValue:StringEqualsIfExists",
        k,
        &["a"],
        &ctx()
    ));
    assert!(holds(
        "ForAllValues:StringEqualsIfExists",
        k,
        &["a"],
        &ctx()
    ));
    // Negated operators under a qualifier.
    assert!(holds(
        "ForAllValues:StringNotEquals",
        k,
        &["x"],
        &tags(&["a", "b"])
    ));
    assert!(!holds(
        "ForAllValues:StringNotEquals",
        k,
        &["a"],
        &tags(&["a", "b"])
    ));
    assert!(holds(
        "ForAnyValue:StringNotEquals",
        k,
        &["a"],
        &tags(&["a", "b"])
    ));
    assert!(!holds(
        "ForAnyValue:StringNotEquals",
        k,
        &["a", "b"],
        &tags(&["a", "b"])
    ));
    assert!(holds(
        "ForAnyValue:StringLike",
        k,
        &["team-*"],
        &tags(&["x", "team-red"])
    ));
    // A single-valued key is a one-element set.
    assert!(holds(
        "ForAnyValue:StringEquals",
        "s",
        &["v"],
        &with("s", "v")
    ));
}

#[test]
fn multivalued_key_without_qualifier() {
    let c = ctx().with_values("k", ["a", "b"]);
    assert!(holds("StringEquals", "k", &["b"], &c), "any value matches");
    assert!(!holds("StringEquals", "k", &["c"], &c));
    assert!(
        !holds("StringNotEquals", "k", &["b"], &c),
        "negated: none may match"
    );
    assert!(holds("StringNotEquals", "k", &["c"], &c));
    let ips = ctx().with_values("ips", ["10.0.0.1", "203.0.113.1"]);
    assert!(holds("IpAddress", "ips", &["203.0.113.0/24"], &ips));
    assert!(!holds("NotIpAddress", "ips", &["203.0.113.0/24"], &ips));
}

#[test]
fn operator_names() {
    assert!(matches!(
        compile_err("StringEqualz", &["x"]),
        Problem::UnknownOperator {
            suggestion: None,
            ..
        }
    ));
    assert_eq!(
        compile_err("forallvalues:stringequalsifexists", &["x"]),
        Problem::UnknownOperator {
            name: "forallvalues:stringequalsifexists".into(),
            suggestion: Some("ForAllValues:StringEqualsIfExists".into()),
        }
    );
    assert!(matches!(
        compile_err("ForSomeValues:StringEquals", &["x"]),
        Problem::UnknownOperator { .. }
    ));
    for (name, ..) in BASE_OPERATORS {
        assert!(Operator::parse(name).is_ok(), "{name}");
        if *name != "Null" {
            assert!(
                Operator::parse(&format!("{name}IfExists")).is_ok(),
                "{name}"
            );
            assert!(
                Operator::parse(&format!("ForAllValues:{name}")).is_ok(),
                "{name}"
            );
            assert!(
                Operator::parse(&format!("ForAnyValue:{name}IfExists")).is_ok(),
                "{name}"
            );
        }
    }
}
