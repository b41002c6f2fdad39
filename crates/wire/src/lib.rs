//! Airlock's data-channel transport. A data channel is a WebSocket over TLS that carries
//! gigabytes when it forwards a port; a general-purpose stack (rustls streams under
//! tungstenite) copies each byte four or five times between its buffers and reads the socket
//! 4 KiB at a time. Here the WebSocket codec ([`ws`]) runs directly on a TLS 1.3 record layer
//! ([`record`]) that opens and seals records in place with the keys rustls negotiated, and
//! the connection ([`conn`]) hands out payloads as slices of its receive buffer.
//!
//! On the wire nothing changes: peers see standard TLS 1.3 and RFC 6455 frames.
#![forbid(unsafe_code)]

pub mod conn;
pub mod record;
pub mod ws;

pub use conn::{Role, WireError, WsConn, WsReader, WsWriter, DEFAULT_MAX_MESSAGE};
pub use ws::{CloseFrame, Message};
