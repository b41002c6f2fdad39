//! `airlock-client`, the SDK: a SigV4-signed API client, the client side of a session's data
//! channel, command sessions run to their exit status ([`command`]), port forwarding over it ([`port`], on the multiplexing engine [`mux`] that the
//! agent shares), outbound WebSockets (TLS, proxies) shared with the agent, and profile loading.
#![forbid(unsafe_code)]

pub mod api;
pub mod command;
pub mod config;
pub mod mux;
pub mod port;
pub mod recording;
pub mod resolve;
pub mod session;
pub mod tls;
pub mod ws;

pub use api::{
    ApiClient, ApiError, ListPortConnectionsInput, ListPortConnectionsOutput, PortConnectionInfo,
    StreamGrant,
};
pub use command::{CommandError, CommandOutput, CommandRequest};
pub use config::Profile;
pub use recording::{Recording, RecordingError, RecordingPage};
pub use session::{
    HandshakeInfo, Input, Outcome, Output, SessionError, SessionEvent, SessionOptions,
};
