//! The request being authorised: action, one resource ARN, and the condition keys.
//!
//! Condition key names are case-insensitive (`aws:SourceIP` is `aws:sourceip`, and the
//! tag part of `ssm:resourceTag/Finance` is too), so keys are stored folded. Every key
//! holds a list of strings: single-valued keys have one, multivalued keys
//! (`aws:TagKeys`) any number. A key with an empty list behaves exactly like an absent
//! key everywhere in the engine.

use std::collections::BTreeMap;

use crate::matching::fold_case;

/// Everything the engine knows about one request, for one resource.
///
/// A call that touches several resources (StartSession: the node and the document) is
/// authorised once per resource; build one context per resource, since tag keys such
/// as `ssm:resourceTag/K` describe the resource being evaluated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The action, e.g. `ssm:StartSession`. Matched case-insensitively.
    pub action: String,
    /// The resource ARN, e.g. `arn:aws:ssm:us-east-2:123456789012:session/alice-0a1b`,
    /// or `*` for actions without resource-level permissions. Matched case-sensitively.
    pub resource: String,
    keys: BTreeMap<String, Vec<String>>,
}

impl RequestContext {
    /// A context for `action` on `resource` with no condition keys yet.
    pub fn new(action: impl Into<String>, resource: impl Into<String>) -> Self {
        RequestContext {
            action: action.into(),
            resource: resource.into(),
            keys: BTreeMap::new(),
        }
    }

    /// Builder form of [`RequestContext::insert`]: sets `key` to the single `value`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Builder form of [`RequestContext::set_values`]: sets a multivalued key.
    #[must_use]
    pub fn with_values<I, V>(mut self, key: &str, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        self.set_values(key, values);
        self
    }

    /// Sets `key` to the single `value`, replacing what was there.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(fold_case(key), vec![value.into()]);
    }

    /// Sets `key` to `values`, replacing what was there. An empty list is treated as an
    /// absent key.
    pub fn set_values<I, V>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        self.keys
            .insert(fold_case(key), values.into_iter().map(Into::into).collect());
    }

    /// Removes `key` and returns its values, if it was set.
    pub fn remove(&mut self, key: &str) -> Option<Vec<String>> {
        self.keys.remove(&fold_case(key))
    }

    /// The values of `key` (looked up case-insensitively), if it is set.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&fold_case(key)).map(Vec::as_slice)
    }

    /// All keys (folded to lower case) with their values, in key order; for audit logs
    /// and `policy simulate` output.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The values of an already-folded key; `None` when absent or empty.
    pub(crate) fn values(&self, folded_key: &str) -> Option<&[String]> {
        self.keys
            .get(folded_key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// The value of an already-folded key when it has exactly one, as policy variables
    /// require; `None` for absent, empty or multivalued keys.
    pub(crate) fn single(&self, folded_key: &str) -> Option<&str> {
        match self.values(folded_key)? {
            [only] => Some(only.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn keys_are_case_insensitive() {
        let ctx = RequestContext::new("a:b", "*").with("ssm:resourceTag/Finance", "WebServers");
        assert_eq!(
            ctx.get("SSM:RESOURCETAG/finance"),
            Some(&["WebServers".to_string()][..])
        );
        assert_eq!(ctx.single("ssm:resourcetag/finance"), Some("WebServers"));
    }

    #[test]
    fn empty_and_multivalued() {
        let ctx = RequestContext::new("a:b", "*")
            .with_values("aws:TagKeys", Vec::<String>::new())
            .with_values("k", ["a", "b"]);
        assert_eq!(ctx.values("aws:tagkeys"), None);
        assert_eq!(ctx.single("k"), None);
        assert_eq!(ctx.values("k").map(<[String]>::len), Some(2));
    }
}
