//! What crosses a process boundary in cubenet, defined once as serde types:
//! the control-socket requests, replies and events of `overlayd` and
//! `routed`, their `status` and `routes` documents, and the route updates
//! routed sends overlayd. The daemons, their CLIs and metrics, `cubenet-lab`
//! and the tests all use these types, so renaming a field is a compile
//! error instead of a silently missing key.
//!
//! The wire format is newline-delimited JSON on a Unix stream socket: one
//! request per line, one reply line per request. A reply is the body of
//! the answer with `"ok": true` added, or `{"ok": false, "error": "..."}`
//! ([`Reply`]). The JSON the README documents is this format; fields may be
//! added, never renamed or removed.

pub mod client;
pub mod lab;
pub mod overlayd;
pub mod reply;
pub mod routed;

pub use client::{CallError, Client};
pub use reply::{Empty, Reply};

/// A document as the CLIs print it with `--json`: indented JSON.
pub fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A field the CLIs print as a table cell: its value, or `-` when absent.
pub fn or_dash<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |v| v.to_string())
}

/// One JSON line (with its newline) for a request, reply or event.
pub fn line<T: serde::Serialize>(v: &T) -> String {
    // Serialising these types cannot fail: they hold no maps with
    // non-string keys and no failing custom serialisers.
    let mut s = serde_json::to_string(v).unwrap_or_else(|e| {
        serde_json::to_string(&Reply::<Empty>::Err(format!("cannot encode reply: {e}")))
            .unwrap_or_default()
    });
    s.push('\n');
    s
}
