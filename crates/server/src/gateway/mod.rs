//! The WebSocket gateway: agents' control channels, both sides' data channels, and the relay
//! that pairs them.

pub mod control;
pub mod data;
pub mod fast;
pub mod hub;
pub mod relay;
