//! A JSON tree that keeps object members in document order *including duplicates*.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, but IAM refuses a
//! policy in which a key appears twice in one object (two `Effect`s, two copies of one
//! condition operator). Parsing into this tree first lets `document.rs` report such a
//! duplicate with the statement and field it belongs to.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value, as written in the policy text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// A number, kept as its shortest decimal text (integers exactly, other numbers via f64).
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order; duplicates are kept so the validator can refuse them.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What kind of value this is, for error messages ("expected a string, found an array").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        // Rust's `Display` for f64 never uses an exponent and round-trips, so `1.5`
        // stays `1.5` and `1e3` becomes `1000`.
        Ok(Json::Number(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn keeps_duplicate_keys_in_order() {
        let v: Json = serde_json::from_str(r#"{"a":1,"b":true,"a":"x"}"#).unwrap();
        assert_eq!(
            v,
            Json::Object(vec![
                ("a".into(), Json::Number("1".into())),
                ("b".into(), Json::Bool(true)),
                ("a".into(), Json::String("x".into())),
            ])
        );
    }

    #[test]
    fn numbers_become_decimal_text() {
        let v: Json = serde_json::from_str(r#"[1, -2, 1.5, 1e3, 18446744073709551615]"#).unwrap();
        let Json::Array(items) = v else { panic!() };
        let texts: Vec<_> = items
            .iter()
            .map(|j| match j {
                Json::Number(n) => n.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(texts, ["1", "-2", "1.5", "1000", "18446744073709551615"]);
    }
}
