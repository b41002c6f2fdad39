//! The decision rule and its explanations beyond the §3.6 vectors: pooling across
//! policies, NotAction/NotResource, boundaries, resource variables, common AWS guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_policy::{
    evaluate, keys, Decision, ImplicitDenyReason, NamedPolicy, Policy, PolicyKind, RequestContext,
    StatementRef,
};

fn policy(statements: &str) -> Policy {
    match Policy::parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#
    )) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn named<'a>(name: &'a str, policy: &'a Policy) -> NamedPolicy<'a> {
    NamedPolicy { name, policy }
}

const INST: &str = "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0";

#[test]
fn no_policies_is_implicit_deny() {
    let d = evaluate(&[], None, &RequestContext::new("ssm:StartSession", INST));
    assert_eq!(
        d,
        Decision::ImplicitDeny {
            reason: ImplicitDenyReason::NoIdentityAllow
        }
    );
    assert!(!d.is_allowed());
    assert_eq!(
        d.aws_reason("ssm:StartSession").as_deref(),
        Some(" because no identity-based policy allows the ssm:StartSession action")
    );
}

#[test]
fn statements_pool_across_policies_and_deny_wins() {
    let allow = policy(r#"{"Sid":"A","Effect":"Allow","Action":"ssm:*","Resource":"*"}"#);
    let deny = policy(
        r#"{"Sid":"Other","Effect":"Allow","Action":"ec2:*","Resource":"*"},
           {"Sid":"NoStart","Effect":"Deny","Action":"ssm:StartSession","Resource":"arn:aws:ec2:*:*:instance/*"}"#,
    );
    let ctx = RequestContext::new("ssm:StartSession", INST);
    for order in [
        [named("allow", &allow), named("deny", &deny)],
        [named("deny", &deny), named("allow", &allow)],
    ] {
        let d = evaluate(&order, None, &ctx);
        assert_eq!(
            d,
            Decision::ExplicitDeny {
                by: StatementRef {
                    policy: "deny".into(),
                    kind: PolicyKind::Identity,
                    index: 1,
                    sid: Some("NoStart".into()),
                }
            }
        );
    }
    let d = evaluate(
        &[named("allow", &allow), named("deny", &deny)],
        None,
        &RequestContext::new("ssm:DescribeSessions", "*"),
    );
    assert_eq!(
        d.explain(),
        r#"allowed by statement 0 (Sid "A") of identity policy "allow""#
    );
}

#[test]
fn actions_are_case_insensitive_resources_are_not() {
    let p = policy(
        r#"{"Effect":"Allow","Action":"SSM:startSESSION","Resource":"arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0"}"#,
    );
    let ps = [named("p", &p)];
    assert!(evaluate(&ps, None, &RequestContext::new("ssm:StartSession", INST)).is_allowed());
    assert!(evaluate(&ps, None, &RequestContext::new("Ssm:StartSession", INST)).is_allowed());
    assert!(!evaluate(
        &ps,
        None,
        &RequestContext::new("ssm:StartSession", INST.to_uppercase())
    )
    .is_allowed());
}

#[test]
fn deny_not_action_guards_but_grants_nothing() {
    let guard = policy(
        r#"{"Effect":"Deny","NotAction":["ssm:Describe*","ssm:GetConnectionStatus"],"Resource":"*"}"#,
    );
    let ps = [named("guard", &guard)];
    let start = RequestContext::new("ssm:StartSession", INST);
    assert!(matches!(
        evaluate(&ps, None, &start),
        Decision::ExplicitDeny { .. }
    ));
    let describe = RequestContext::new("ssm:DescribeSessions", "*");
    assert!(matches!(
        evaluate(&ps, None, &describe),
        Decision::ImplicitDeny { .. }
    ));
    let all = policy(r#"{"Effect":"Allow","Action":"*","Resource":"*"}"#);
    let ps = [named("guard", &guard), named("all", &all)];
    assert!(evaluate(&ps, None, &describe).is_allowed());
    assert!(!evaluate(&ps, None, &start).is_allowed());
}

#[test]
fn boundaries() {
    let identity = policy(r#"{"Effect":"Allow","Action":"ssm:*","Resource":"*"}"#);
    let boundary = policy(
        r#"{"Effect":"Allow","Action":"*","Resource":"*"},
           {"Sid":"NoTerminate","Effect":"Deny","Action":"ssm:TerminateSession","Resource":"*"}"#,
    );
    let ids = [named("id", &identity)];
    let bs = [named("b", &boundary)];
    let start = RequestContext::new("ssm:StartSession", INST);
    assert!(evaluate(&ids, Some(&bs), &start).is_allowed());
    // A deny in the boundary is an explicit deny.
    let term = RequestContext::new(
        "ssm:TerminateSession",
        "arn:aws:ssm:us-east-2:1:session/x-0",
    );
    let d = evaluate(&ids, Some(&bs), &term);
    assert!(matches!(&d, Decision::ExplicitDeny { by } if by.kind == PolicyKind::Boundary));
    assert_eq!(
        d.aws_reason("ssm:TerminateSession").as_deref(),
        Some(" with an explicit deny in a permissions boundary")
    );
    // A boundary grants nothing by itself.
    let d = evaluate(
        &[],
        Some(&bs),
        &RequestContext::new("ec2:DescribeInstances", "*"),
    );
    assert!(matches!(
        d,
        Decision::ImplicitDeny {
            reason: ImplicitDenyReason::NoIdentityAllow
        }
    ));
    // An empty boundary allows nothing; no boundary restricts nothing.
    let d = evaluate(&ids, Some(&[]), &start);
    assert!(matches!(
        d,
        Decision::ImplicitDeny {
            reason: ImplicitDenyReason::BoundaryDidNotAllow { .. }
        }
    ));
    assert!(evaluate(&ids, None, &start).is_allowed());
}

#[test]
fn resource_variables() {
    let p = policy(
        r#"{"Sid":"Team","Effect":"Allow","Action":"ssm:GetDocument",
            "Resource":"arn:aws:ssm:*:*:document/${aws:PrincipalTag/team, 'shared'}-*"},
           {"Sid":"Literal","Effect":"Allow","Action":"ssm:GetDocument",
            "Resource":"arn:aws:ssm:*:*:document/odd${*}name"}"#,
    );
    let ps = [named("p", &p)];
    let get = |doc: &str| {
        RequestContext::new(
            "ssm:GetDocument",
            format!("arn:aws:ssm:us-east-2:123456789012:document/{doc}"),
        )
    };
    assert!(evaluate(
        &ps,
        None,
        &get("red-runbook").with("aws:PrincipalTag/Team", "red")
    )
    .is_allowed());
    assert!(!evaluate(
        &ps,
        None,
        &get("blue-runbook").with("aws:PrincipalTag/team", "red")
    )
    .is_allowed());
    assert!(
        evaluate(&ps, None, &get("shared-runbook")).is_allowed(),
        "default value"
    );
    // A tag value cannot widen the pattern.
    assert!(!evaluate(
        &ps,
        None,
        &get("blue-runbook").with("aws:PrincipalTag/team", "*")
    )
    .is_allowed());
    assert!(evaluate(
        &ps,
        None,
        &get("*-runbook").with("aws:PrincipalTag/team", "*")
    )
    .is_allowed());
    // `${*}` is a literal star.
    assert!(evaluate(&ps, None, &get("odd*name")).is_allowed());
    assert!(!evaluate(&ps, None, &get("oddXname")).is_allowed());
}

#[test]
fn unresolvable_variable_in_not_resource_matches_nothing() {
    // The NotResource entry matches nothing, so every resource is "not" it.
    let p = policy(
        r#"{"Effect":"Deny","Action":"ssm:TerminateSession","NotResource":"arn:aws:ssm:*:*:session/${aws:username}-*"}"#,
    );
    let ps = [named("p", &p)];
    let ctx = RequestContext::new(
        "ssm:TerminateSession",
        "arn:aws:ssm:us-east-2:1:session/alice-0a",
    );
    assert!(matches!(
        evaluate(&ps, None, &ctx),
        Decision::ExplicitDeny { .. }
    ));
    let ctx = ctx.with(keys::USERNAME, "alice");
    assert!(matches!(
        evaluate(&ps, None, &ctx),
        Decision::ImplicitDeny { .. }
    ));
}

#[test]
fn mfa_guard_denies_long_term_keys() {
    let p = policy(
        r#"{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*"},
           {"Sid":"RequireMfa","Effect":"Deny","Action":"*","Resource":"*",
            "Condition":{"BoolIfExists":{"aws:MultiFactorAuthPresent":"false"}}}"#,
    );
    let ps = [named("p", &p)];
    let base = RequestContext::new("ssm:StartSession", INST);
    assert!(matches!(
        evaluate(&ps, None, &base),
        Decision::ExplicitDeny { .. }
    ));
    let temp_no_mfa = base.clone().with(keys::MULTI_FACTOR_AUTH_PRESENT, "false");
    assert!(matches!(
        evaluate(&ps, None, &temp_no_mfa),
        Decision::ExplicitDeny { .. }
    ));
    let temp_mfa = base.with(keys::MULTI_FACTOR_AUTH_PRESENT, "true");
    assert!(evaluate(&ps, None, &temp_mfa).is_allowed());
}

#[test]
fn time_window_and_source_ip() {
    let p = policy(
        r#"{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*","Condition":{
              "DateGreaterThan":{"aws:CurrentTime":"2024-06-01T00:00:00Z"},
              "DateLessThan":{"aws:EpochTime":"1719791999"},
              "IpAddress":{"aws:SourceIp":["203.0.113.0/24","2001:db8::/32"]}}}"#,
    );
    let ps = [named("p", &p)];
    let ctx = |now: &str, epoch: &str, ip: &str| {
        RequestContext::new("ssm:StartSession", INST)
            .with(keys::CURRENT_TIME, now)
            .with(keys::EPOCH_TIME, epoch)
            .with(keys::SOURCE_IP, ip)
    };
    assert!(evaluate(
        &ps,
        None,
        &ctx("2024-06-15T12:00:00Z", "1718452800", "203.0.113.9")
    )
    .is_allowed());
    assert!(evaluate(
        &ps,
        None,
        &ctx("2024-06-15T12:00:00Z", "1718452800", "2001:db8::9")
    )
    .is_allowed());
    assert!(!evaluate(
        &ps,
        None,
        &ctx("2024-06-15T12:00:00Z", "1718452800", "198.51.100.1")
    )
    .is_allowed());
    assert!(!evaluate(
        &ps,
        None,
        &ctx("2024-05-15T12:00:00Z", "1715774400", "203.0.113.9")
    )
    .is_allowed());
    assert!(!evaluate(
        &ps,
        None,
        &ctx("2024-07-15T12:00:00Z", "1721044800", "203.0.113.9")
    )
    .is_allowed());
}

#[test]
fn decisions_serialise_for_audit() {
    let p = policy(r#"{"Sid":"S","Effect":"Allow","Action":"*","Resource":"*"}"#);
    let d = evaluate(
        &[named("p", &p)],
        None,
        &RequestContext::new("ssm:StartSession", INST),
    );
    let json = serde_json::to_value(&d).unwrap_or_default();
    assert_eq!(
        json,
        serde_json::json!({
            "decision": "Allow",
            "by": {"policy": "p", "kind": "Identity", "index": 0, "sid": "S"},
            "boundary": null
        })
    );
    let d = evaluate(&[], None, &RequestContext::new("ssm:StartSession", INST));
    assert_eq!(
        serde_json::to_value(&d).unwrap_or_default(),
        serde_json::json!({"decision": "ImplicitDeny", "reason": {"kind": "NoIdentityAllow"}})
    );
}

#[test]
fn policies_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<RequestContext>();
    assert_send_sync::<Decision>();
}

#[test]
fn empty_sid_is_no_sid() {
    let p = policy(
        r#"{"Sid":"","Effect":"Allow","Action":"*","Resource":"*"},{"Sid":"","Effect":"Deny","Action":"ec2:*","Resource":"*"}"#,
    );
    assert_eq!(p.statements()[0].sid(), None);
    let d = evaluate(
        &[named("p", &p)],
        None,
        &RequestContext::new("ssm:StartSession", INST),
    );
    assert_eq!(
        d.explain(),
        r#"allowed by statement 0 of identity policy "p""#
    );
}
