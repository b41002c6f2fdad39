//! Payloads carried inside frames and the text frames that open a channel
//! (protocol.md §2, §4, §5, §9): serde types whose JSON matches Go's
//! `encoding/json` output byte for byte (PascalCase keys, in the order the
//! captures show), plus the non-JSON payloads (`Flag`, `EXIT_CODE`).
//!
//! Go accepts keys in any case, so deserialization also takes the camelCase
//! spelling of each key; missing keys take their zero value, as in Go.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::MessageError;
use crate::frame::{Frame, MessageType, PayloadType, FLAG_FIN, FLAG_SYN};

/// The `AgentVersion` Airlock's agent claims: above every version gate the plugin applies (protocol.md §6.3).
pub const AGENT_VERSION: &str = "3.3.9999.0";
/// `ActionType` of the handshake action that announces the session type.
pub const SESSION_TYPE_ACTION: &str = "SessionType";
/// `ActionType` of the KMS encryption handshake action (never requested by Airlock; see protocol.md §10).
pub const KMS_ENCRYPTION_ACTION: &str = "KMSEncryption";
/// `ActionStatus` value: the client performed the action.
pub const ACTION_STATUS_SUCCESS: i64 = 1;
/// `ActionStatus` value: the client failed the action.
pub const ACTION_STATUS_FAILED: i64 = 2;
/// `ActionStatus` value: the client does not know the action.
pub const ACTION_STATUS_UNSUPPORTED: i64 = 3;

/// JSON (de)serialization of a payload type, so callers never handle serde errors for our own types.
pub trait JsonPayload: Serialize + DeserializeOwned {
    /// Name used in [`MessageError::Json`].
    const NAME: &'static str;

    /// Compact JSON, as Go emits it. Serializing these types cannot fail; an
    /// empty buffer is returned if it ever did.
    fn to_payload(&self) -> Bytes {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// Parses a payload.
    fn from_payload(payload: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(payload).map_err(|e| MessageError::Json {
            what: Self::NAME,
            reason: e.to_string(),
        })
    }
}

macro_rules! json_payload {
    ($($t:ident),* $(,)?) => {
        $(impl JsonPayload for $t {
            const NAME: &'static str = stringify!($t);
        })*
    };
}

json_payload!(
    AcknowledgeContent,
    ChannelClosed,
    SizeData,
    HandshakeRequest,
    RequestedClientAction,
    SessionTypeRequest,
    HandshakeResponse,
    ProcessedClientAction,
    HandshakeComplete,
    AgentSessionState,
    OpenDataChannelInput,
    MgsPayload,
    AgentTaskPayload,
    AgentTaskComplete,
    AgentTaskAcknowledge,
    AirlockCapabilities,
    PortConnectionRecord,
);

/// Payload of an `acknowledge` frame: which stream frame is acknowledged.
/// Receivers match on the sequence number only, so that key is required (an
/// ack without it would otherwise match seq 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AcknowledgeContent {
    /// Type of the acked frame, e.g. `output_stream_data`.
    #[serde(alias = "acknowledgedMessageType", default)]
    pub acknowledged_message_type: String,
    /// Lowercase hyphenated MessageId of the acked frame.
    #[serde(alias = "acknowledgedMessageId", default)]
    pub acknowledged_message_id: String,
    /// Sequence number of the acked frame.
    #[serde(alias = "acknowledgedMessageSequenceNumber")]
    pub acknowledged_message_sequence_number: i64,
    /// Always true.
    #[serde(alias = "isSequentialMessage", default)]
    pub is_sequential_message: bool,
}

impl AcknowledgeContent {
    /// The ack content for `frame`.
    pub fn for_frame(frame: &Frame) -> Self {
        AcknowledgeContent {
            acknowledged_message_type: frame.message_type.as_str().to_owned(),
            acknowledged_message_id: frame.message_id.hyphenated().to_string(),
            acknowledged_message_sequence_number: frame.sequence_number,
            is_sequential_message: true,
        }
    }

    /// The `acknowledge` frame carrying this content: seq 0, Flags 3, PayloadType 0, fresh MessageId.
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            MessageType::Acknowledge,
            0,
            FLAG_SYN | FLAG_FIN,
            PayloadType::NONE,
            self.to_payload(),
        )
    }
}

/// Payload of `channel_closed`: MGS ends a data channel (the plugin prints `Output` and exits 0),
/// or cancels a session on the control channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ChannelClosed {
    /// A MessageId of its own (not the frame's).
    #[serde(alias = "messageId")]
    pub message_id: String,
    /// Epoch milliseconds, as a decimal string.
    #[serde(alias = "createdDate")]
    pub created_date: String,
    /// The target (instance id).
    #[serde(alias = "destinationId")]
    pub destination_id: String,
    /// The session being closed.
    #[serde(alias = "sessionId")]
    pub session_id: String,
    /// Always `channel_closed`.
    #[serde(alias = "messageType")]
    pub message_type: String,
    /// Always 1.
    #[serde(alias = "schemaVersion")]
    pub schema_version: u32,
    /// Reason shown to the user; empty for a normal exit.
    #[serde(alias = "output")]
    pub output: String,
}

impl ChannelClosed {
    /// A `channel_closed` payload for `session_id`, with a fresh id and the current time.
    pub fn new(session_id: &str, destination_id: &str, output: &str) -> Self {
        ChannelClosed {
            message_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            created_date: crate::frame::unix_millis().to_string(),
            destination_id: destination_id.to_owned(),
            session_id: session_id.to_owned(),
            message_type: MessageType::ChannelClosed.as_str().to_owned(),
            schema_version: 1,
            output: output.to_owned(),
        }
    }

    /// The `channel_closed` frame carrying this payload (seq 0, Flags 0, PayloadType 0, as MGS sends it).
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            MessageType::ChannelClosed,
            0,
            0,
            PayloadType::NONE,
            self.to_payload(),
        )
    }
}

/// PayloadType 3: terminal size sent by the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct SizeData {
    /// Columns.
    #[serde(alias = "Cols")]
    pub cols: u32,
    /// Rows.
    #[serde(alias = "Rows")]
    pub rows: u32,
}

/// PayloadType 5: the agent's handshake request (protocol.md §5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeRequest {
    /// The version the agent claims; gates plugin features (§6.3).
    #[serde(alias = "agentVersion")]
    pub agent_version: String,
    /// Actions the client must perform, `SessionType` first.
    #[serde(alias = "requestedClientActions")]
    pub requested_client_actions: Vec<RequestedClientAction>,
    /// Airlock extension: what an Airlock agent offers; the real plugin ignores it.
    #[serde(
        rename = "AirlockCapabilities",
        alias = "airlockCapabilities",
        skip_serializing_if = "Option::is_none"
    )]
    pub airlock: Option<AirlockCapabilities>,
}

/// One action of a [`HandshakeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedClientAction {
    /// `SessionType` or `KMSEncryption`.
    #[serde(alias = "actionType")]
    pub action_type: String,
    /// For `SessionType`, a [`SessionTypeRequest`]; kept as JSON so unknown actions pass through.
    #[serde(alias = "actionParameters")]
    pub action_parameters: serde_json::Value,
}

impl RequestedClientAction {
    /// The `SessionType` action for `request`, keys in Go's order.
    pub fn session_type(request: &SessionTypeRequest) -> Self {
        RequestedClientAction {
            action_type: SESSION_TYPE_ACTION.to_owned(),
            action_parameters: serde_json::to_value(request).unwrap_or_default(),
        }
    }
}

/// `ActionParameters` of the `SessionType` action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionTypeRequest {
    /// `Standard_Stream`, `InteractiveCommands`, `NonInteractiveCommands` or `Port`.
    #[serde(alias = "sessionType")]
    pub session_type: String,
    /// Port: the document's properties object; shell types: `null`.
    #[serde(alias = "properties")]
    pub properties: serde_json::Value,
}

/// PayloadType 6: the client's handshake response (protocol.md §5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeResponse {
    /// The client's version; gates agent features (§6.3).
    #[serde(alias = "clientVersion")]
    pub client_version: String,
    /// One entry per requested action.
    #[serde(alias = "processedClientActions")]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// `null` or a list of error strings.
    #[serde(alias = "errors")]
    pub errors: Option<Vec<String>>,
    /// Airlock extension: the capabilities the client accepts (already negotiated).
    #[serde(
        rename = "AirlockCapabilities",
        alias = "airlockCapabilities",
        skip_serializing_if = "Option::is_none"
    )]
    pub airlock: Option<AirlockCapabilities>,
}

/// One entry of [`HandshakeResponse::processed_client_actions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProcessedClientAction {
    /// The action's type, as requested.
    #[serde(alias = "actionType")]
    pub action_type: String,
    /// 1 Success, 2 Failed, 3 Unsupported (the plugin leaves 0 for unknown actions).
    #[serde(alias = "actionStatus")]
    pub action_status: i64,
    /// Action-specific result; `null` for `SessionType`.
    #[serde(alias = "actionResult")]
    pub action_result: serde_json::Value,
    /// Error text, empty on success.
    #[serde(alias = "error")]
    pub error: String,
}

/// PayloadType 7: the agent ends the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeComplete {
    /// Handshake duration in nanoseconds (Go `time.Duration`).
    #[serde(alias = "handshakeTimeToComplete")]
    pub handshake_time_to_complete: i64,
    /// Printed by the plugin when not empty.
    #[serde(alias = "customerMessage")]
    pub customer_message: String,
}

/// Payload of `agent_session_state`: the agent tells MGS the session's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSessionState {
    /// Always 1.
    #[serde(alias = "schemaVersion")]
    pub schema_version: u32,
    /// `Connected` or `Terminating`.
    #[serde(alias = "sessionState")]
    pub session_state: String,
    /// The session.
    #[serde(alias = "sessionId")]
    pub session_id: String,
}

impl AgentSessionState {
    /// The `agent_session_state` frame (seq 0, Flags 3, PayloadType 0, as the agent sends it).
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            MessageType::AgentSessionState,
            0,
            FLAG_SYN | FLAG_FIN,
            PayloadType::NONE,
            self.to_payload(),
        )
    }
}

/// The first text frame on every data/control channel WebSocket (protocol.md §2, §9).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct OpenDataChannelInput {
    /// Always `1.0`.
    #[serde(alias = "messageSchemaVersion")]
    pub message_schema_version: String,
    /// A fresh v4 UUID per connection.
    #[serde(alias = "requestId")]
    pub request_id: String,
    /// The token from StartSession/ResumeSession or CreateDataChannel.
    #[serde(alias = "tokenValue")]
    pub token_value: String,
    /// Plugin: its random ClientId; agent: `""`.
    #[serde(alias = "clientId", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Plugin version (newer plugins only).
    #[serde(alias = "clientVersion", skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// Agent: its instance id.
    #[serde(alias = "clientInstanceId", skip_serializing_if = "Option::is_none")]
    pub client_instance_id: Option<String>,
    /// Agent, control channel: its version.
    #[serde(alias = "agentVersion", skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Agent, control channel: `linux`, `windows` or `macos`.
    #[serde(alias = "platformType", skip_serializing_if = "Option::is_none")]
    pub platform_type: Option<String>,
}

/// `MGSPayload`: the payload of control-channel task messages such as `interactive_shell`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MgsPayload {
    /// A JSON document as a string, e.g. an [`AgentTaskPayload`].
    #[serde(alias = "content")]
    pub content: String,
    /// The task (session) id.
    #[serde(alias = "taskId")]
    pub task_id: String,
    /// The topic, e.g. `aws.ssm.sendCommand` or the message type.
    #[serde(alias = "topic")]
    pub topic: String,
    /// Always 1.
    #[serde(alias = "schemaVersion")]
    pub schema_version: u32,
}

/// The start-session task inside [`MgsPayload::content`] (protocol.md §9).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentTaskPayload {
    /// The session to start.
    #[serde(alias = "sessionId")]
    pub session_id: String,
    /// The session document's name.
    #[serde(alias = "documentName")]
    pub document_name: String,
    /// OS user to run as.
    #[serde(alias = "runAsUser")]
    pub run_as_user: String,
    /// ARN (or name) of the principal that started the session.
    #[serde(alias = "sessionOwner")]
    pub session_owner: String,
    /// Document parameters, `{name: [values]}`.
    #[serde(alias = "parameters")]
    pub parameters: serde_json::Value,
    /// The session document after substitution.
    #[serde(alias = "documentContent")]
    pub document_content: serde_json::Value,
    /// Airlock: the data-channel token the agent presents (AWS fixtures carry it too; the AWS agent ignores it).
    #[serde(alias = "dataChannelToken", skip_serializing_if = "Option::is_none")]
    pub data_channel_token: Option<String>,
    /// Airlock: where the agent dials its data channel.
    #[serde(alias = "dataChannelUrl", skip_serializing_if = "Option::is_none")]
    pub data_channel_url: Option<String>,
}

/// Payload of `agent_task_complete`: the agent's report of a finished session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentTaskComplete {
    /// Always 1.
    #[serde(alias = "schemaVersion")]
    pub schema_version: u32,
    /// The session id.
    #[serde(alias = "taskId")]
    pub task_id: String,
    /// `agent_task_complete`.
    #[serde(alias = "topic")]
    pub topic: String,
    /// `Success`, `Failed`, …
    #[serde(alias = "finalTaskStatus")]
    pub final_task_status: String,
    /// Always false from the agent.
    #[serde(alias = "isRoutingFailure")]
    pub is_routing_failure: bool,
    /// Usually empty.
    #[serde(alias = "awsAccountId")]
    pub aws_account_id: String,
    /// The agent's instance id.
    #[serde(alias = "instanceId")]
    pub instance_id: String,
    /// Session output summary.
    #[serde(alias = "output")]
    pub output: String,
    /// S3 log bucket, if any.
    #[serde(alias = "s3Bucket")]
    pub s3_bucket: String,
    /// S3 log key suffix, if any.
    #[serde(alias = "s3UrlSuffix")]
    pub s3_url_suffix: String,
    /// CloudWatch log group, if any.
    #[serde(alias = "cwlGroup")]
    pub cwl_group: String,
    /// CloudWatch log stream, if any.
    #[serde(alias = "cwlStream")]
    pub cwl_stream: String,
    /// How many times this report was retried.
    #[serde(alias = "retryNumber")]
    pub retry_number: u32,
}

/// Payload of `agent_task_acknowledge`: MGS confirms an `agent_task_complete` by its MessageId.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentTaskAcknowledge {
    /// Always 1.
    #[serde(alias = "schemaVersion")]
    pub schema_version: u32,
    /// MessageId (text) of the acknowledged `agent_task_complete` frame.
    #[serde(alias = "messageId")]
    pub message_id: String,
    /// The session id.
    #[serde(alias = "taskId")]
    pub task_id: String,
    /// The topic of the acknowledged message.
    #[serde(alias = "topic")]
    pub topic: String,
}

/// What two Airlock peers negotiate in the handshake. The real plugin never
/// sends it, so the AWS limits (1024-byte payloads, digests, no window) apply
/// whenever it is absent. Keys missing from a peer's JSON take the AWS values
/// of [`AirlockCapabilities::default`], so an older peer still parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AirlockCapabilities {
    /// Version of the Airlock extensions; currently 1.
    #[serde(alias = "version")]
    pub version: u32,
    /// Largest stream payload either side may send.
    #[serde(alias = "maxPayload")]
    pub max_payload: u32,
    /// Most unacked frames in flight; 0 means no window (AWS behaviour).
    #[serde(alias = "window")]
    pub window: u32,
    /// Whether frames carry (and receivers verify) SHA-256 digests.
    #[serde(alias = "digest")]
    pub digest: bool,
    /// Whether the agent may send PayloadType 12 `EXIT_CODE` frames.
    #[serde(alias = "exitCode", default)]
    pub exit_code: bool,
    /// Set by a client whose input is not a terminal (a pipe or a script): the agent then runs
    /// the shell without a PTY, so there is no prompt and no echo, as `ssh` without `-t` does.
    #[serde(alias = "noPty", default)]
    pub no_pty: bool,
    /// Version of Airlock's stream multiplexing ([`crate::mux`], `MuxKind::Airlock`) offered
    /// for port sessions; 0 = none, and then smux v1 is used as with AWS peers.
    #[serde(alias = "mux", default)]
    pub mux: u32,
    /// Initial credit, in bytes, each side grants the other per multiplexed stream: what one
    /// stream may have in flight before the receiver has written it out.
    #[serde(alias = "muxWindow", default)]
    pub mux_window: u32,
}

impl Default for AirlockCapabilities {
    /// Exactly the AWS behaviour: version 1, 1024-byte payloads, no window,
    /// digests on, no exit-code frames, a PTY.
    fn default() -> Self {
        AirlockCapabilities {
            version: Self::VERSION,
            max_payload: 1024,
            window: 0,
            digest: true,
            exit_code: false,
            no_pty: false,
            mux: 0,
            mux_window: 0,
        }
    }
}

impl AirlockCapabilities {
    /// Version of the extensions this crate implements.
    pub const VERSION: u32 = 1;

    /// The result of negotiation between our offer (`self`) and the peer's:
    /// the lower version, payload size and window (a 0 window yields to the
    /// other side's), digests if either side wants them, exit codes only if both
    /// support them, Airlock mux only if both offer it (the lower version, the smaller
    /// per-stream window). Symmetric, so both peers arrive at the same values.
    pub fn negotiate(&self, peer: &AirlockCapabilities) -> AirlockCapabilities {
        let window = match (self.window, peer.window) {
            (0, w) | (w, 0) => w,
            (a, b) => a.min(b),
        };
        AirlockCapabilities {
            version: self.version.min(peer.version),
            max_payload: self.max_payload.min(peer.max_payload),
            window,
            digest: self.digest || peer.digest,
            exit_code: self.exit_code && peer.exit_code,
            no_pty: self.no_pty || peer.no_pty,
            mux: self.mux.min(peer.mux),
            mux_window: match (self.mux_window, peer.mux_window) {
                (0, w) | (w, 0) => w,
                (a, b) => a.min(b),
            },
        }
    }
}

/// `Topic` of the `agent_task_reply` frames (an [`MgsPayload`] whose `Content` is a
/// [`PortConnectionRecord`]) by which an Airlock agent reports each forwarded connection.
pub const PORT_CONNECTION_TOPIC: &str = "airlock_port_connection";

/// The audit record of one connection forwarded by a port session, sent by the agent to the
/// server when the connection ends, so port-forward and SSH traffic is never unlogged. The
/// server trusts only what the agent can know (bytes, times, how it ended); who ran the
/// session it takes from its own records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortConnectionRecord {
    /// The session that carried the connection.
    pub session_id: String,
    /// The session's owner as the task named it (informational).
    pub session_owner: String,
    /// Stream id within the session (0 for single-connection modes).
    pub stream_id: u32,
    /// `host:port` the agent connected to.
    pub destination: String,
    /// `airlock-mux`, `smux`, `basic` or `stream`.
    pub mode: String,
    /// Bytes from the client written to the target.
    pub bytes_to_target: u64,
    /// Bytes from the target sent to the client.
    pub bytes_from_target: u64,
    /// Unix epoch milliseconds when the connection was opened.
    pub started_at: u64,
    /// How long it lasted, in milliseconds.
    pub duration_ms: u64,
    /// How it ended, in words (`closed`, `cannot connect to …`, `session ended`, …).
    pub end_reason: String,
    /// Whether it ended in an error.
    pub failed: bool,
}

/// PayloadType 10 values (protocol.md §4.2), sent as a 4-byte big-endian integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    /// 1: client to agent, basic port mode: the local TCP client disconnected.
    DisconnectToPort,
    /// 2: client to agent: end the session (Ctrl-C in port sessions).
    TerminateSession,
    /// 3: agent to client, mux mode: dialling the target failed.
    ConnectToPortError,
    /// Any other value.
    Other(u32),
}

impl Flag {
    /// Numeric value of the flag.
    pub fn value(&self) -> u32 {
        match self {
            Flag::DisconnectToPort => 1,
            Flag::TerminateSession => 2,
            Flag::ConnectToPortError => 3,
            Flag::Other(v) => *v,
        }
    }

    /// The 4-byte big-endian payload.
    pub fn encode(&self) -> [u8; 4] {
        self.value().to_be_bytes()
    }

    /// Parses a Flag payload, which must be exactly 4 bytes.
    pub fn decode(p: &[u8]) -> Result<Flag, MessageError> {
        let raw: [u8; 4] = p
            .try_into()
            .map_err(|_| MessageError::BadFlagLength { len: p.len() })?;
        Ok(match u32::from_be_bytes(raw) {
            1 => Flag::DisconnectToPort,
            2 => Flag::TerminateSession,
            3 => Flag::ConnectToPortError,
            v => Flag::Other(v),
        })
    }
}

/// Prefix of the PayloadType 12 text.
const EXIT_CODE_PREFIX: &str = "EXIT_CODE:";

/// PayloadType 12 payload: `EXIT_CODE: <n>`.
pub fn exit_code_payload(code: i32) -> Bytes {
    Bytes::from(format!("{EXIT_CODE_PREFIX} {code}"))
}

/// Parses a PayloadType 12 payload; `None` if it is not `EXIT_CODE: <n>`.
/// White space around the number is tolerated.
pub fn parse_exit_code(p: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(p).ok()?;
    text.trim()
        .strip_prefix(EXIT_CODE_PREFIX)?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ack_keys_in_capture_order() {
        let a = AcknowledgeContent {
            acknowledged_message_type: "output_stream_data".into(),
            acknowledged_message_id: "ca91da99-46dd-40a8-b981-42f868795c84".into(),
            acknowledged_message_sequence_number: 0,
            is_sequential_message: true,
        };
        assert_eq!(
            &a.to_payload()[..],
            br#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"ca91da99-46dd-40a8-b981-42f868795c84","AcknowledgedMessageSequenceNumber":0,"IsSequentialMessage":true}"#
        );
    }

    #[test]
    fn camel_case_and_missing_keys_accepted() {
        let a = AcknowledgeContent::from_payload(
            br#"{"acknowledgedMessageSequenceNumber":7,"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(a.acknowledged_message_sequence_number, 7);
        assert_eq!(a.acknowledged_message_type, "");
        let s = SizeData::from_payload(br#"{"Cols":3,"Rows":4}"#).unwrap();
        assert_eq!(s, SizeData { cols: 3, rows: 4 });
    }

    #[test]
    fn flags_and_exit_codes() {
        assert_eq!(Flag::TerminateSession.encode(), [0, 0, 0, 2]);
        assert_eq!(Flag::decode(&[0, 0, 0, 1]), Ok(Flag::DisconnectToPort));
        assert_eq!(Flag::decode(&[0, 0, 0, 9]), Ok(Flag::Other(9)));
        assert_eq!(
            Flag::decode(&[0, 1]),
            Err(MessageError::BadFlagLength { len: 2 })
        );
        assert_eq!(&exit_code_payload(-3)[..], b"EXIT_CODE: -3");
        assert_eq!(parse_exit_code(b"EXIT_CODE: 42"), Some(42));
        assert_eq!(parse_exit_code(b"EXIT_CODE:0\n"), Some(0));
        assert_eq!(parse_exit_code(b"EXIT: 1"), None);
    }

    #[test]
    fn capabilities_negotiate_symmetrically() {
        let a = AirlockCapabilities {
            version: 1,
            max_payload: 65536,
            window: 0,
            digest: false,
            exit_code: true,
            no_pty: false,
            mux: 1,
            mux_window: 1 << 20,
        };
        let b = AirlockCapabilities {
            version: 2,
            max_payload: 16384,
            window: 64,
            digest: true,
            exit_code: false,
            no_pty: false,
            mux: 0,
            mux_window: 0,
        };
        assert_eq!(a.negotiate(&b), b.negotiate(&a));
        assert_eq!(a.negotiate(&b).mux, 0);
        assert_eq!(a.negotiate(&a).mux_window, 1 << 20);
        let n = a.negotiate(&b);
        assert_eq!((n.version, n.max_payload, n.window), (1, 16384, 64));
        assert!(n.digest && !n.exit_code);
        // Absent from a real plugin's response: the field is skipped.
        let r = HandshakeResponse::default();
        assert!(!String::from_utf8(r.to_payload().to_vec())
            .unwrap()
            .contains("Airlock"));
    }

    #[test]
    fn capabilities_missing_keys_take_aws_values() {
        let c = AirlockCapabilities::from_payload(br#"{"MaxPayload":65536}"#).unwrap();
        assert_eq!(
            c,
            AirlockCapabilities {
                max_payload: 65536,
                ..AirlockCapabilities::default()
            }
        );
        let r = HandshakeResponse::from_payload(
            br#"{"ClientVersion":"x","AirlockCapabilities":{"version":1,"window":8,"digest":false}}"#,
        )
        .unwrap();
        let caps = r.airlock.unwrap();
        assert_eq!(
            (caps.max_payload, caps.window, caps.digest),
            (1024, 8, false)
        );
    }

    #[test]
    fn session_type_action_key_order() {
        let req = HandshakeRequest {
            agent_version: AGENT_VERSION.into(),
            requested_client_actions: vec![RequestedClientAction::session_type(
                &SessionTypeRequest {
                    session_type: "Standard_Stream".into(),
                    properties: serde_json::Value::Null,
                },
            )],
            airlock: None,
        };
        // serde_json::Value sorts keys; Properties < SessionType either way, so check explicitly.
        let text = String::from_utf8(req.to_payload().to_vec()).unwrap();
        assert!(text.starts_with(r#"{"AgentVersion":"3.3.9999.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":"#));
        let back = HandshakeRequest::from_payload(text.as_bytes()).unwrap();
        assert_eq!(back, req);
    }
}
