//! Parses arbitrary text as a policy document and, when it parses, evaluates it against a
//! request context built from the same bytes (action, resource and a few keys), twice: the
//! decision must be the same, and a Deny of everything beside it must win. Mirrors
//! `crates/policy/tests/fuzz.rs`. Run with `cargo fuzz run policy` from fuzz/ (nightly).
#![no_main]

use airlock_policy::{evaluate, NamedPolicy, Policy, RequestContext};
use libfuzzer_sys::fuzz_target;

const DENY_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*"}}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Document first; after a NUL, the request: action, resource, then key=value lines.
    let (doc, request) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(policy) = Policy::parse(doc) else {
        return;
    };
    let mut lines = request.split('\n');
    let mut ctx = RequestContext::new(
        lines.next().unwrap_or("ssm:StartSession"),
        lines.next().unwrap_or("*"),
    );
    for line in lines {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        ctx.insert(k, v);
    }
    let named = [NamedPolicy {
        name: "fuzz",
        policy: &policy,
    }];
    let a = evaluate(&named, None, &ctx);
    assert_eq!(a, evaluate(&named, None, &ctx));
    let _ = a.explain();
    let deny = Policy::parse(DENY_ALL).expect("the deny-all policy parses");
    let both = [
        named[0],
        NamedPolicy {
            name: "deny",
            policy: &deny,
        },
    ];
    assert!(!evaluate(&both, None, &ctx).is_allowed());
});
