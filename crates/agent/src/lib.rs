//! `airlock agent`: registers a host once with an activation code, then keeps one outbound
//! control channel to the server and runs each session it is given in a real PTY as an
//! unprivileged run-as user. It listens on no port.
#![forbid(unsafe_code)]

pub mod control;
pub mod destinations;
pub mod register;
pub mod runas;
pub mod session;
pub mod state;

use std::time::Duration;

/// The version the agent claims: above every gate the AWS plugin applies (protocol.md §6.3).
pub const AGENT_VERSION: &str = airlock_proto::AGENT_VERSION;

/// Settings of a running agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Run-as user for sessions when running as root (default `airlock-user`).
    pub run_as: Option<String>,
    /// Allow the run-as user to be root.
    pub allow_root_sessions: bool,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Largest payload offered to Airlock clients.
    pub max_payload: u32,
    /// Frames in flight offered to Airlock clients.
    pub window: u32,
    /// Per-stream credit offered to Airlock clients for multiplexed port forwarding (0 turns
    /// Airlock's mux off, leaving smux v1).
    pub mux_window: u32,
    /// Where port sessions may connect (the defaults refuse link-local and cloud metadata).
    pub destinations: std::sync::Arc<destinations::DestinationRules>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            run_as: None,
            allow_root_sessions: false,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_payload: 256 * 1024,
            window: 64,
            mux_window: airlock_client::port::DEFAULT_MUX_WINDOW,
            destinations: Default::default(),
        }
    }
}

pub use control::run;
pub use register::{register, Registration};
pub use state::AgentState;
