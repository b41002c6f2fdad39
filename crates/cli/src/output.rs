//! Printing results: aligned tables for people, JSON for scripts.

use crate::Format;

/// Prints `rows` under `headers` as a table, or `json` as JSON.
pub fn print(format: Format, json: &serde_json::Value, headers: &[&str], rows: Vec<Vec<String>>) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(json).unwrap_or_default()),
        Format::Text => {
            let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
            for r in rows {
                println!("{}", line(r));
            }
        }
    }
}

/// A JSON string field, or "".
pub fn s(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// An epoch-seconds JSON timestamp as RFC 3339, or "".
pub fn ts(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|t| t.as_f64())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs as i64).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
