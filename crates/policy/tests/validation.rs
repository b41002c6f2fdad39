//! `Policy::parse` refuses invalid documents with an error naming the statement (index
//! and Sid) and field at fault, and accepts the grammar's legitimate variations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_policy::{Policy, PolicyError, PolicyVersion, Problem, StatementLocation};

/// The error for `json`, which must be refused.
fn refuse(json: &str) -> PolicyError {
    match Policy::parse(json) {
        Ok(_) => panic!("accepted an invalid policy: {json}"),
        Err(e) => e,
    }
}

/// Refuses a one-statement policy whose statement body is `body`.
fn refuse_stmt(body: &str) -> PolicyError {
    refuse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{body}]}}"#
    ))
}

fn accept(json: &str) -> Policy {
    match Policy::parse(json) {
        Ok(p) => p,
        Err(e) => panic!("refused a valid policy: {e}\n{json}"),
    }
}

fn accept_stmt(body: &str) -> Policy {
    accept(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{body}]}}"#
    ))
}

/// Asserts where the error points: statement index, Sid and field path.
fn assert_at(e: &PolicyError, statement: Option<(usize, Option<&str>)>, path: &[&str]) {
    let location = e.location().unwrap_or_else(|| panic!("no location in {e}"));
    let expected = statement.map(|(index, sid)| StatementLocation {
        index,
        sid: sid.map(str::to_owned),
    });
    assert_eq!(location.statement, expected, "{e}");
    assert_eq!(location.path, path, "{e}");
}

const OK: &str = r#""Effect":"Allow","Action":"ssm:StartSession","Resource":"*""#;

#[test]
fn not_json() {
    let e = refuse("{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n}");
    match e {
        PolicyError::Syntax { line, .. } => assert_eq!(line, 4),
        other => panic!("{other}"),
    }
    assert!(matches!(refuse(""), PolicyError::Syntax { .. }));
}

#[test]
fn document_level() {
    let e = refuse("[]");
    assert!(
        matches!(e.problem(), Some(Problem::WrongType { .. })),
        "{e}"
    );

    let e = refuse(r#"{"Version":"2012-10-17","Statment":[]}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::UnknownElement {
            name: "Statment".into()
        })
    );
    assert_at(&e, None, &[]);

    let e = refuse(r#"{"Version":"2012-10-18","Statement":[]}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::UnsupportedVersion {
            found: "2012-10-18".into()
        })
    );
    assert_at(&e, None, &["Version"]);
    assert_eq!(
        e.to_string(),
        r#"Version: unsupported Version "2012-10-18": expected "2012-10-17" or "2008-10-17""#
    );

    let e = refuse(r#"{"Version":2012,"Statement":[]}"#);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));

    let e = refuse(r#"{"Version":"2012-10-17"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::MissingElement { name: "Statement" })
    );
    assert_eq!(e.to_string(), r#"policy: "Statement" is required"#);

    let e = refuse(r#"{"Version":"2012-10-17","Statement":[]}"#);
    assert_eq!(e.problem(), Some(&Problem::Empty));
    assert_at(&e, None, &["Statement"]);

    let e = refuse(r#"{"Version":"2012-10-17","Statement":"Allow"}"#);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));

    let e = refuse(&format!(
        r#"{{"Version":"2012-10-17","Version":"2012-10-17","Statement":{{{OK}}}}}"#
    ));
    assert_eq!(
        e.problem(),
        Some(&Problem::DuplicateElement {
            name: "Version".into()
        })
    );
}

#[test]
fn statement_structure() {
    let e = refuse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{{{OK}}}, "x"]}}"#
    ));
    assert_at(&e, Some((1, None)), &[]);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));

    let e = refuse_stmt(
        r#"{"Sid":"Twice","Effect":"Allow","Effect":"Deny","Action":"*","Resource":"*"}"#,
    );
    assert_eq!(
        e.problem(),
        Some(&Problem::DuplicateElement {
            name: "Effect".into()
        })
    );
    assert_at(&e, Some((0, Some("Twice"))), &[]);

    let e = refuse_stmt(r#"{"Sid":"S1","Effect":"Allow","Actions":"*","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::UnknownElement {
            name: "Actions".into()
        })
    );
    assert_eq!(
        e.to_string(),
        r#"Statement[0] (Sid "S1"): unknown element "Actions""#
    );

    let e = refuse_stmt(r#"{"Action":"*","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::MissingElement { name: "Effect" })
    );

    let e = refuse_stmt(r#"{"Effect":"allow","Action":"*","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidEffect {
            found: "allow".into()
        })
    );
    assert_at(&e, Some((0, None)), &["Effect"]);

    let e = refuse_stmt(r#"{"Effect":"Allow","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::MissingElement {
            name: "Action or NotAction"
        })
    );
    let e = refuse_stmt(r#"{"Effect":"Allow","Action":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::MissingElement {
            name: "Resource or NotResource"
        })
    );
    let e = refuse_stmt(r#"{"Effect":"Allow","Action":"*","NotAction":"ssm:*","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::ConflictingElements {
            first: "Action",
            second: "NotAction"
        })
    );
    let e = refuse_stmt(r#"{"Effect":"Allow","Action":"*","Resource":"*","NotResource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::ConflictingElements {
            first: "Resource",
            second: "NotResource"
        })
    );
}

#[test]
fn principal_is_refused_in_identity_policies() {
    for name in ["Principal", "NotPrincipal"] {
        let e = refuse_stmt(&format!(
            r#"{{"Sid":"Trust","Effect":"Allow","{name}":{{"AWS":"*"}},"Action":"*","Resource":"*"}}"#
        ));
        assert_eq!(
            e.problem(),
            Some(&Problem::PrincipalNotAllowed { name: name.into() })
        );
        assert_at(&e, Some((0, Some("Trust"))), &[name]);
        assert!(
            e.to_string()
                .contains("not allowed in an identity-based policy"),
            "{e}"
        );
    }
}

#[test]
fn sids() {
    let e = refuse_stmt(r#"{"Sid":"my-sid","Effect":"Allow","Action":"*","Resource":"*"}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidSid {
            sid: "my-sid".into()
        })
    );
    assert_at(&e, Some((0, None)), &["Sid"]);

    let e = refuse_stmt(&format!(
        r#"{{"Sid":"Same",{OK}}},{{"Sid":"Other",{OK}}},{{"Sid":"Same",{OK}}}"#
    ));
    assert_eq!(
        e.problem(),
        Some(&Problem::DuplicateSid { sid: "Same".into() })
    );
    assert_at(&e, Some((2, Some("Same"))), &["Sid"]);

    let e = refuse_stmt(r#"{"Sid":7,"Effect":"Allow","Action":"*","Resource":"*"}"#);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));
}

#[test]
fn actions() {
    let e = refuse_stmt(r#"{"Effect":"Allow","Action":[],"Resource":"*"}"#);
    assert_eq!(e.problem(), Some(&Problem::Empty));
    assert_at(&e, Some((0, None)), &["Action"]);
    assert_eq!(e.to_string(), "Statement[0] › Action: must not be empty");

    let e = refuse_stmt(r#"{"Effect":"Allow","Action":["ssm:StartSession",5],"Resource":"*"}"#);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));
    assert_at(&e, Some((0, None)), &["Action[1]"]);

    for bad in [
        "StartSession",
        "ssm:",
        ":StartSession",
        "ssm*:StartSession",
        "ssm:Start Session",
    ] {
        let e = refuse_stmt(&format!(
            r#"{{"Effect":"Allow","Action":"{bad}","Resource":"*"}}"#
        ));
        assert!(
            matches!(e.problem(), Some(Problem::InvalidAction { action, .. }) if action == bad),
            "{bad}: {e}"
        );
    }
    let e = refuse_stmt(r#"{"Effect":"Allow","NotAction":{"a":1},"Resource":"*"}"#);
    assert_at(&e, Some((0, None)), &["NotAction"]);
}

#[test]
fn resources() {
    for bad in [
        "i-1234567890abcdef0",
        "arn:aws:ssm",
        "urn:aws:ssm:us-east-2:1:document/x",
        "arn:aws::us-east-2:1:document/x",
        "arn:aws:ss*:us-east-2:1:document/x",
        "${aws:username}",
    ] {
        let e = refuse_stmt(&format!(
            r#"{{"Effect":"Allow","Action":"*","Resource":["*","{bad}"]}}"#
        ));
        assert!(
            matches!(e.problem(), Some(Problem::InvalidResource { resource, .. }) if resource == bad),
            "{bad}: {e}"
        );
        assert_at(&e, Some((0, None)), &["Resource[1]"]);
    }
    for bad in [
        "arn:aws:ssm:${aws:RequestedRegion}:*:session/x",
        "arn:aws:ssm:*:${aws:PrincipalAccount}:session/x",
    ] {
        let e = refuse_stmt(&format!(
            r#"{{"Effect":"Allow","Action":"*","NotResource":"{bad}"}}"#
        ));
        assert_eq!(
            e.problem(),
            Some(&Problem::VariableOutsideResourcePart {
                resource: bad.into()
            }),
            "{e}"
        );
    }
    let e = refuse_stmt(
        r#"{"Effect":"Allow","Action":"*","Resource":"arn:aws:ssm:*:*:session/${aws:username"}"#,
    );
    assert!(
        matches!(e.problem(), Some(Problem::InvalidVariable { .. })),
        "{e}"
    );
    // With 2008-10-17 the same text is literal, hence acceptable.
    accept(
        r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:ssm:*:*:session/${aws:username"}}"#,
    );
}

#[test]
fn conditions() {
    let cond = |c: &str| {
        refuse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{{{OK}}},{{"Sid":"Second",{OK},"Condition":{c}}}]}}"#
        ))
    };
    let e = cond(r#"{"StringEqual":{"aws:username":"alice"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::UnknownOperator {
            name: "StringEqual".into(),
            suggestion: None
        })
    );
    assert_at(&e, Some((1, Some("Second"))), &["Condition", "StringEqual"]);

    let e = cond(r#"{"stringequals":{"aws:username":"alice"}}"#);
    assert!(
        e.to_string().contains(r#"did you mean "StringEquals"?"#),
        "{e}"
    );

    let e = cond(r#"{"DateLessThan":{"aws:CurrentTime":"2024-13-01T00:00:00Z"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidDate {
            value: "2024-13-01T00:00:00Z".into()
        })
    );
    assert_at(
        &e,
        Some((1, Some("Second"))),
        &["Condition", "DateLessThan", "aws:CurrentTime"],
    );
    assert!(
        e.to_string().starts_with(
            r#"Statement[1] (Sid "Second") › Condition › DateLessThan › aws:CurrentTime: "2024-13-01T00:00:00Z" is not a valid date"#
        ),
        "{e}"
    );

    let e = cond(r#"{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","10.0.0.0/33"]}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidCidr {
            value: "10.0.0.0/33".into()
        })
    );
    let e = cond(r#"{"NumericLessThan":{"aws:MultiFactorAuthAge":"an hour"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidNumber {
            value: "an hour".into()
        })
    );
    let e = cond(r#"{"Bool":{"aws:SecureTransport":"yes"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidBool {
            value: "yes".into()
        })
    );
    let e = cond(r#"{"BinaryEquals":{"k":"%%%"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::InvalidBase64 {
            value: "%%%".into()
        })
    );
    let e = cond(r#"{"NullIfExists":{"k":"true"}}"#);
    assert!(matches!(e.problem(), Some(Problem::InvalidOperator { .. })));
    let e = cond(r#"{"DateGreaterThan":{"aws:CurrentTime":"${aws:TokenIssueTime}"}}"#);
    assert!(matches!(
        e.problem(),
        Some(Problem::VariableNotAllowed { .. })
    ));
    let e = cond(r#"{"StringEquals":{"k":"${aws:username"}}"#);
    assert!(matches!(e.problem(), Some(Problem::InvalidVariable { .. })));

    for bad in [r#"null"#, r#"{"a":1}"#, r#"[["a"]]"#] {
        let e = cond(&format!(r#"{{"StringEquals":{{"k":{bad}}}}}"#));
        assert!(
            matches!(e.problem(), Some(Problem::InvalidConditionValue { .. })),
            "{e}"
        );
    }
    let e = cond(r#"{"StringEquals":{"k":[]}}"#);
    assert_eq!(e.problem(), Some(&Problem::Empty));
    let e = cond(r#"{"StringEquals":{"":"x"}}"#);
    assert_eq!(e.problem(), Some(&Problem::EmptyConditionKey));
    let e = cond(r#"{"StringEquals":"x"}"#);
    assert!(matches!(e.problem(), Some(Problem::WrongType { .. })));
    assert_at(
        &e,
        Some((1, Some("Second"))),
        &["Condition", "StringEquals"],
    );
    let e = cond(r#"["x"]"#);
    assert_at(&e, Some((1, Some("Second"))), &["Condition"]);
    let e = cond(r#"{"StringEquals":{"k":"a"},"StringEquals":{"k":"b"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::DuplicateElement {
            name: "StringEquals".into()
        })
    );
    assert_at(&e, Some((1, Some("Second"))), &["Condition"]);
    let e = cond(r#"{"StringEquals":{"k":"a","k":"b"}}"#);
    assert_eq!(
        e.problem(),
        Some(&Problem::DuplicateElement { name: "k".into() })
    );
}

#[test]
fn accepted_variations() {
    // Statement as a single object, Id present, no Version.
    let p = accept(&format!(r#"{{"Id":"x","Statement":{{{OK}}}}}"#));
    assert_eq!(p.version(), PolicyVersion::Unspecified);
    assert_eq!(p.statements().len(), 1);
    let p = accept(&format!(
        r#"{{"Version":"2008-10-17","Statement":[{{{OK}}}]}}"#
    ));
    assert_eq!(p.version(), PolicyVersion::V2008_10_17);
    // Elements in any order, unquoted numbers and booleans, every operator family.
    let p = accept_stmt(
        r#"{"Condition":{
              "NumericLessThan":{"aws:MultiFactorAuthAge":3600},
              "Bool":{"aws:SecureTransport":true},
              "BoolIfExists":{"aws:MultiFactorAuthPresent":"${aws:PrincipalTag/mfa, 'true'}"},
              "DateGreaterThan":{"aws:CurrentTime":"2024-01-01T00:00:00Z","aws:EpochTime":1700000000},
              "IpAddress":{"aws:SourceIp":["203.0.113.0/24","2001:DB8:1234:5678::/64"]},
              "ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/*"},
              "BinaryEquals":{"k":"QmluYXJ5VmFsdWVJbkJhc2U2NA=="},
              "Null":{"aws:TokenIssueTime":true},
              "ForAllValues:StringLikeIfExists":{"aws:TagKeys":["a*"]},
              "StringEqualsIgnoreCase":{"ssm:resourceTag/Team":"${aws:PrincipalTag/Team}"}
            },
            "Resource":"arn:aws:ssm:*:*:session/${aws:username}-${*}${?}${$}",
            "Action":["ssm:*Session","SSM:describe?essions"],
            "Sid":"Everything1",
            "Effect":"Deny"}"#,
    );
    assert_eq!(p.statements()[0].sid(), Some("Everything1"));
    // AWS-owned documents have an empty account; a trailing empty resource is legal.
    accept_stmt(
        r#"{"Effect":"Allow","Action":"*","Resource":["arn:aws:ssm:us-east-2::document/AWS-StartSSHSession","arn:aws:s3:::bucket"]}"#,
    );
    // Empty Condition object.
    accept_stmt(r#"{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}"#);
    // The source text is kept as given.
    let text = format!(r#"{{"Statement":{{{OK}}}}}"#);
    assert_eq!(accept(&text).source(), text);
    assert!(text.parse::<Policy>().is_ok());
}
