//! The sans-I/O reliable channel of protocol.md §7, used by Airlock's agent and
//! client (the gateway relays frames untouched and does not use it).
//!
//! The caller owns the socket and the clock: it feeds inbound WebSocket messages
//! to [`ReliableChannel::handle_bytes`], writes whatever
//! [`ReliableChannel::poll_transmit`] returns, delivers
//! [`ReliableChannel::poll_event`] to the session, and calls
//! [`ReliableChannel::handle_timeout`] at [`ReliableChannel::poll_timeout`].
//!
//! The algorithm is the AWS one (per-direction sequence numbers, one ack per
//! frame, Jacobson/Karels RTO) with three changes that keep it compatible with
//! the real plugin and agent: duplicates are re-acked, every overdue frame is
//! resent (not just the head, and at most once per RTO), and an optional send
//! window bounds the frames in flight. Every queue is bounded.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{ChannelError, FrameError};
use crate::frame::{
    decode, DecodeOptions, EncodedFrame, Frame, MessageType, PayloadType, DEFAULT_MAX_FRAME_LEN,
    FLAG_SYN, FRAME_HEADER_LEN,
};
use crate::message::{AcknowledgeContent, AirlockCapabilities, JsonPayload};

/// AWS stream payload size (`StreamDataPayloadSize`).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024;
/// Default bound of the outgoing and incoming buffers (the plugin's value).
pub const DEFAULT_BUFFER_CAPACITY: usize = 10_000;
/// Resend count after which the plugin gives up (≈ 5 min at 100 ms per resend).
pub const PLUGIN_MAX_RESENDS: u32 = 3000;

/// Extra room in the event queue for control frames beyond `incoming_capacity` data events.
const CONTROL_EVENT_SLACK: usize = 1024;
/// Bound of the queue of control frames waiting to be transmitted.
const CONTROL_TX_CAPACITY: usize = 1024;
/// Bound on the payload bytes held in the out-of-order buffer, whatever the
/// frame count, so a peer sending large frames out of order cannot exhaust memory.
const MAX_INCOMING_BYTES: usize = 64 * 1024 * 1024;

/// Which end of the data channel this is; decides the message types used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends `input_stream_data`, receives `output_stream_data`.
    Client,
    /// Sends `output_stream_data` (SYN flag on seq 0), receives
    /// `input_stream_data`, honours `pause_publication`.
    Agent,
}

impl Role {
    /// Message type of the stream frames this role sends.
    pub fn outgoing_type(self) -> MessageType {
        match self {
            Role::Client => MessageType::InputStreamData,
            Role::Agent => MessageType::OutputStreamData,
        }
    }

    /// Message type of the stream frames this role receives.
    pub fn incoming_type(self) -> MessageType {
        match self {
            Role::Client => MessageType::OutputStreamData,
            Role::Agent => MessageType::InputStreamData,
        }
    }
}

/// [`ChannelConfig::ack_delay`] between Airlock peers: far below the smallest RTO (10 ms
/// variance floor), so a delayed ack never causes a resend.
pub const AIRLOCK_ACK_DELAY: Duration = Duration::from_millis(1);

/// Limits and timers of a [`ReliableChannel`]. [`ChannelConfig::new`] gives the AWS defaults.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Which end this is.
    pub role: Role,
    /// Largest stream payload [`ReliableChannel::send`] accepts (1024 for AWS peers).
    pub max_payload: usize,
    /// Most stream frames kept for resending (queued plus in flight).
    pub outgoing_capacity: usize,
    /// Most out-of-order inbound frames buffered; also bounds undelivered data events.
    pub incoming_capacity: usize,
    /// Most unacked frames in flight; `None` = up to `outgoing_capacity` (AWS behaviour).
    pub window: Option<usize>,
    /// Compute digests on send and verify them on receive.
    pub digest: bool,
    /// Inbound frames longer than this are refused.
    pub max_frame_len: usize,
    /// RTO before the first RTT sample.
    pub initial_rto: Duration,
    /// Upper bound of the RTO.
    pub max_rto: Duration,
    /// Lower bound of the variance term of the RTO.
    pub min_rto_var: Duration,
    /// Resend checks happen at most this often, which batches resends.
    pub resend_tick: Duration,
    /// After this many resends of one frame, [`Event::ResendLimitReached`] is raised; `None` = never.
    pub max_resends: Option<u32>,
    /// How long an ack may wait for a frame going the other way to travel with (zero: acks
    /// go at once, as AWS peers expect). Between Airlock peers a reply usually follows within
    /// it, so a request and its answer cost one message each way instead of three.
    pub ack_delay: Duration,
}

impl ChannelConfig {
    /// The AWS defaults: 1024-byte payloads, 10 000-frame buffers, no window,
    /// digests on, RTO 200 ms initially and at most 1 s, 100 ms resend tick, no
    /// resend limit.
    pub fn new(role: Role) -> Self {
        ChannelConfig {
            role,
            max_payload: DEFAULT_MAX_PAYLOAD,
            outgoing_capacity: DEFAULT_BUFFER_CAPACITY,
            incoming_capacity: DEFAULT_BUFFER_CAPACITY,
            window: None,
            digest: true,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            initial_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(1),
            min_rto_var: Duration::from_millis(10),
            resend_tick: Duration::from_millis(100),
            max_resends: None,
            ack_delay: Duration::ZERO,
        }
    }

    /// These settings with the limits negotiated between two Airlock peers.
    pub fn with_capabilities(mut self, caps: &AirlockCapabilities) -> Self {
        self.set_capabilities(caps);
        self
    }

    fn set_capabilities(&mut self, caps: &AirlockCapabilities) {
        if caps.max_payload > 0 {
            // Never below the floor: a peer advertising a few bytes would make every write
            // thousands of frames (and the send queue a megabyte of headers).
            self.max_payload = (caps.max_payload as usize).max(MIN_NEGOTIATED_PAYLOAD);
        }
        self.window = match caps.window {
            0 => None,
            w => Some(w as usize),
        };
        self.digest = caps.digest;
        self.ack_delay = AIRLOCK_ACK_DELAY;
        self.max_frame_len = self
            .max_frame_len
            .max(FRAME_HEADER_LEN.saturating_add(self.max_payload));
    }
}

/// The smallest payload a negotiated `max_payload` can set: the AWS agent's own frames carry up
/// to 1 KiB, so no real peer asks for less, and a hostile one cannot make the channel cut data
/// into frames of a few bytes (found by the channel fuzz property).
pub const MIN_NEGOTIATED_PAYLOAD: usize = 1024;

/// Something the session must handle, from [`ReliableChannel::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// In-order stream data, delivered exactly once (handshake payload types included).
    Data {
        /// How to read the payload.
        payload_type: PayloadType,
        /// The payload.
        payload: Bytes,
    },
    /// A frame that is neither stream data nor an ack: `channel_closed`,
    /// `agent_session_state`, `start/pause_publication`, …
    Control(Frame),
    /// A frame has been resent `max_resends` times without an ack; raised once.
    ResendLimitReached,
}

/// A stream frame sent (or queued) and not yet acknowledged.
#[derive(Debug)]
struct OutFrame {
    /// The exact bytes, reused for every resend.
    bytes: EncodedFrame,
    /// When it was last put on the wire.
    last_sent: Instant,
    /// Number of resends so far; RTT is only sampled when 0 (Karn's rule).
    resends: u32,
    /// Already in the resend queue.
    resend_queued: bool,
}

/// The reliable channel state machine of one end of a data channel.
#[derive(Debug)]
pub struct ReliableChannel {
    config: ChannelConfig,

    /// Sequence number of the next frame given to `send`.
    next_seq: i64,
    /// Encoded frames accepted by `send` and not yet transmitted, in order.
    pending: VecDeque<(i64, EncodedFrame)>,
    /// Transmitted, unacked frames by sequence number.
    in_flight: BTreeMap<i64, OutFrame>,
    /// Sequence numbers due for a resend.
    resend_queue: VecDeque<i64>,
    /// Encoded acks waiting to be transmitted.
    ack_queue: VecDeque<Bytes>,
    /// When the oldest ack in `ack_queue` was queued (for [`ChannelConfig::ack_delay`]).
    ack_since: Option<Instant>,
    /// The ack delay ran out while the caller could not transmit: acks go with the next write.
    acks_due: bool,
    /// Control frames waiting to be transmitted.
    control_queue: VecDeque<Frame>,

    /// Next inbound sequence number to deliver.
    expected: i64,
    /// Out-of-order (or not yet deliverable) inbound frames, already acked.
    incoming: BTreeMap<i64, Frame>,
    /// Payload bytes in `incoming`.
    incoming_bytes: usize,
    /// Events not yet taken by the caller.
    events: VecDeque<Event>,
    /// Number of `Event::Data` in `events`.
    data_events: usize,
    receiver_ready: bool,

    /// Agent role: MGS asked us to stop publishing.
    paused: bool,
    /// Last time resends were looked for.
    last_resend_check: Option<Instant>,
    resend_limit_signalled: bool,

    /// Smoothed RTT and its variance, in nanoseconds (as the Go code does).
    srtt: f64,
    rttvar: f64,
    rto: Duration,
}

impl ReliableChannel {
    /// A fresh channel: both sequence counters at 0, receiver ready.
    pub fn new(config: ChannelConfig) -> Self {
        let rto = config.initial_rto.min(config.max_rto);
        ReliableChannel {
            config,
            next_seq: 0,
            pending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            resend_queue: VecDeque::new(),
            ack_queue: VecDeque::new(),
            ack_since: None,
            acks_due: false,
            control_queue: VecDeque::new(),
            expected: 0,
            incoming: BTreeMap::new(),
            incoming_bytes: 0,
            events: VecDeque::new(),
            data_events: 0,
            receiver_ready: true,
            paused: false,
            last_resend_check: None,
            resend_limit_signalled: false,
            srtt: Duration::from_millis(100).as_nanos() as f64,
            rttvar: 0.0,
            rto,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Switches to the limits negotiated in the handshake (max_payload, window,
    /// digest). Frames already encoded keep their bytes.
    pub fn apply_capabilities(&mut self, caps: &AirlockCapabilities) {
        self.config.set_capabilities(caps);
    }

    /// Most frames that may be queued plus in flight.
    fn send_limit(&self) -> usize {
        let cap = self.config.outgoing_capacity;
        self.config.window.map_or(cap, |w| w.min(cap)).max(1)
    }

    /// Whether [`send`](Self::send) would accept a frame now.
    pub fn can_send(&self) -> bool {
        self.outstanding() < self.send_limit()
    }

    /// Queues one stream frame with the given payload type. Refuses empty
    /// payloads and payloads over `max_payload` (the caller splits), and
    /// returns [`ChannelError::Full`] when the window or outgoing buffer has no
    /// room (retry after acks arrive; see [`can_send`](Self::can_send)).
    pub fn send(
        &mut self,
        payload_type: PayloadType,
        payload: Bytes,
        _now: Instant,
    ) -> Result<(), ChannelError> {
        if payload.is_empty() {
            return Err(ChannelError::EmptyPayload);
        }
        if payload.len() > self.config.max_payload {
            return Err(ChannelError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        if !self.can_send() {
            return Err(ChannelError::Full);
        }
        let seq = self.next_seq;
        let flags = if seq == 0 && self.config.role == Role::Agent {
            FLAG_SYN
        } else {
            0
        };
        let frame = Frame::new(
            self.config.role.outgoing_type(),
            seq,
            flags,
            payload_type,
            payload,
        );
        self.pending.push_back((seq, self.encode(&frame)));
        self.next_seq = seq.wrapping_add(1);
        Ok(())
    }

    /// Splits `data` into `max_payload`-sized frames of `payload_type` and
    /// queues as many as fit, advancing `data` past what was accepted. Returns
    /// the number of bytes accepted, which is less than the input when the
    /// window fills.
    pub fn send_stream(
        &mut self,
        payload_type: PayloadType,
        data: &mut Bytes,
        now: Instant,
    ) -> usize {
        let mut accepted = 0;
        while !data.is_empty() && self.can_send() {
            let n = data.len().min(self.config.max_payload.max(1));
            let chunk = data.split_to(n);
            if self.send(payload_type, chunk, now).is_err() {
                break;
            }
            accepted += n;
        }
        accepted
    }

    /// Queues a non-stream frame (`agent_session_state`, …) for transmission
    /// once, outside the sequence space; it is never resent. Dropped if 1024
    /// control frames are already waiting.
    pub fn send_control(&mut self, frame: Frame) {
        if self.control_queue.len() < CONTROL_TX_CAPACITY {
            self.control_queue.push_back(frame);
        }
    }

    /// Decodes one inbound WebSocket message with the channel's digest and size
    /// settings and handles it. A decode error leaves the state untouched.
    pub fn handle_bytes(&mut self, raw: Bytes, now: Instant) -> Result<(), FrameError> {
        let opts = DecodeOptions {
            max_frame_len: self.config.max_frame_len,
            verify_digest: self.config.digest,
        };
        let frame = decode(raw, &opts)?;
        self.handle_frame(frame, now);
        Ok(())
    }

    /// Handles one decoded inbound frame.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        match &frame.message_type {
            MessageType::Acknowledge => {
                self.paused = false;
                self.handle_ack(&frame, now);
            }
            t if *t == self.config.role.incoming_type() => {
                self.paused = false;
                self.handle_stream(frame, now);
            }
            t => {
                match t {
                    MessageType::PausePublication if self.config.role == Role::Agent => {
                        self.paused = true;
                    }
                    MessageType::StartPublication => self.paused = false,
                    _ => {}
                }
                if self.events.len()
                    < self
                        .config
                        .incoming_capacity
                        .saturating_add(CONTROL_EVENT_SLACK)
                {
                    self.events.push_back(Event::Control(frame));
                }
            }
        }
    }

    fn handle_ack(&mut self, frame: &Frame, now: Instant) {
        let Ok(ack) = AcknowledgeContent::from_payload(&frame.payload) else {
            return;
        };
        let seq = ack.acknowledged_message_sequence_number;
        if let Some(out) = self.in_flight.remove(&seq) {
            if out.resends == 0 {
                self.update_rtt(now.saturating_duration_since(out.last_sent));
            }
        }
    }

    /// Jacobson/Karels, in float nanoseconds like the Go code.
    fn update_rtt(&mut self, sample: Duration) {
        let r = sample.as_nanos() as f64;
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
        self.srtt = 0.875 * self.srtt + 0.125 * r;
        let var = (4.0 * self.rttvar).max(self.config.min_rto_var.as_nanos() as f64);
        let rto = Duration::from_nanos((self.srtt + var).min(u64::MAX as f64) as u64);
        self.rto = rto.min(self.config.max_rto);
    }

    fn handle_stream(&mut self, frame: Frame, now: Instant) {
        let seq = frame.sequence_number;
        if seq < self.expected {
            // A duplicate: our ack was probably lost; unlike the plugin, ack again.
            self.queue_ack(&frame, now);
        } else if seq == self.expected {
            if self.can_deliver() {
                self.queue_ack(&frame, now);
                self.deliver(frame);
                self.drain_incoming();
            } else if self.incoming.contains_key(&seq) {
                // Buffered and acked earlier, held back by the receiver: re-ack the resend.
                self.queue_ack(&frame, now);
            }
            // Otherwise not ready: no ack, `expected` unchanged, the peer resends.
        } else if self.incoming.contains_key(&seq) {
            self.queue_ack(&frame, now);
        } else if self.incoming.len() < self.config.incoming_capacity
            && self.incoming_bytes.saturating_add(frame.payload.len()) <= MAX_INCOMING_BYTES
        {
            self.queue_ack(&frame, now);
            self.incoming_bytes = self.incoming_bytes.saturating_add(frame.payload.len());
            self.incoming.insert(seq, frame);
        }
        // Otherwise the buffer is full: drop without an ack, the peer resends.
    }

    fn can_deliver(&self) -> bool {
        self.receiver_ready && self.data_events < self.config.incoming_capacity.max(1)
    }

    fn deliver(&mut self, frame: Frame) {
        self.events.push_back(Event::Data {
            payload_type: frame.payload_type,
            payload: frame.payload,
        });
        self.data_events += 1;
        self.expected = self.expected.wrapping_add(1);
    }

    /// Moves buffered frames that are now in order into the event queue.
    fn drain_incoming(&mut self) {
        while self.can_deliver() {
            let Some(entry) = self.incoming.first_entry() else {
                break;
            };
            if *entry.key() > self.expected {
                break;
            }
            let stale = *entry.key() < self.expected;
            let frame = entry.remove();
            self.incoming_bytes = self.incoming_bytes.saturating_sub(frame.payload.len());
            if !stale {
                self.deliver(frame);
            }
            // A stale entry was delivered from a resend while it sat here; drop it.
        }
    }

    fn queue_ack(&mut self, frame: &Frame, now: Instant) {
        // Bounded: if the caller is not transmitting, dropping an ack only costs a resend.
        if self.ack_queue.len() < self.config.incoming_capacity.saturating_mul(2).max(16) {
            let ack = AcknowledgeContent::for_frame(frame).to_frame();
            let bytes = ack.encode(self.config.digest);
            self.ack_queue.push_back(bytes);
            self.ack_since.get_or_insert(now);
        }
    }

    /// Whether queued acks may go now: at once without an ack delay, with anything else that
    /// is going anyway, or once the delay has run out.
    fn acks_ready(&self, now: Instant) -> bool {
        !self.ack_queue.is_empty()
            && (self.config.ack_delay.is_zero()
                || self.acks_due
                || self.other_ready()
                || self
                    .ack_since
                    .is_some_and(|t| now >= t + self.config.ack_delay))
    }

    /// Whether a control frame, new data within the window, or a resend is ready to go.
    fn other_ready(&self) -> bool {
        !self.control_queue.is_empty()
            || (!self.is_paused()
                && ((!self.pending.is_empty()
                    && self
                        .config
                        .window
                        .is_none_or(|w| self.in_flight.len() < w.max(1)))
                    || !self.resend_queue.is_empty()))
    }

    fn encode(&self, frame: &Frame) -> EncodedFrame {
        frame.encode_parts(self.config.digest)
    }

    /// While false, an in-order frame is neither acked nor delivered and
    /// `expected` does not move (the peer resends it); out-of-order frames are
    /// still buffered and acked. Setting it to true delivers what is buffered.
    pub fn set_receiver_ready(&mut self, ready: bool) {
        self.receiver_ready = ready;
        if ready {
            self.drain_incoming();
        }
    }

    /// The next event for the session, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if matches!(ev, Event::Data { .. }) {
            self.data_events = self.data_events.saturating_sub(1);
            self.drain_incoming();
        }
        Some(ev)
    }

    /// Whether the agent is paused by `pause_publication`.
    fn is_paused(&self) -> bool {
        self.paused && self.config.role == Role::Agent
    }

    /// Next encoded frame to write to the socket: acks first, then control
    /// frames, then new data within the window, then due resends. `None` when
    /// there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        self.poll_transmit_parts(now).map(EncodedFrame::into_bytes)
    }

    /// [`poll_transmit`](Self::poll_transmit) with the frame's header and payload apart,
    /// for a writer that copies them into its own buffer (no contiguous copy first).
    pub fn poll_transmit_parts(&mut self, now: Instant) -> Option<EncodedFrame> {
        if self.acks_ready(now) {
            if let Some(ack) = self.ack_queue.pop_front() {
                if self.ack_queue.is_empty() {
                    self.ack_since = None;
                    self.acks_due = false;
                }
                return Some(EncodedFrame::whole(ack));
            }
        }
        if let Some(frame) = self.control_queue.pop_front() {
            return Some(self.encode(&frame));
        }
        if self.is_paused() {
            return None;
        }
        let window_open = self
            .config
            .window
            .is_none_or(|w| self.in_flight.len() < w.max(1));
        if window_open {
            if let Some((seq, bytes)) = self.pending.pop_front() {
                self.in_flight.insert(
                    seq,
                    OutFrame {
                        bytes: bytes.clone(),
                        last_sent: now,
                        resends: 0,
                        resend_queued: false,
                    },
                );
                return Some(bytes);
            }
        }
        while let Some(seq) = self.resend_queue.pop_front() {
            if let Some(out) = self.in_flight.get_mut(&seq) {
                out.resend_queued = false;
                out.last_sent = now;
                return Some(out.bytes.clone());
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called;
    /// `None` when nothing is in flight (or the agent is paused).
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Delayed acks: when they must go (unless they are due already, then the caller's
        // next transmit sends them and there is nothing to wake up for).
        let acks = match self.ack_since {
            Some(t) if !self.acks_due && !self.config.ack_delay.is_zero() => {
                Some(t + self.config.ack_delay)
            }
            _ => None,
        };
        if self.is_paused() {
            return acks;
        }
        let resends = self
            .in_flight
            .values()
            .filter(|o| !o.resend_queued)
            .map(|o| o.last_sent + backoff(self.rto, self.config.max_rto, o.resends))
            .min()
            .map(|earliest| match self.last_resend_check {
                Some(last) => earliest.max(last + self.config.resend_tick),
                None => earliest,
            });
        match (acks, resends) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// Queues a resend of every frame unacked for longer than the RTO (each at
    /// most once per RTO) and raises [`Event::ResendLimitReached`] when a frame
    /// reaches `max_resends`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .ack_since
            .is_some_and(|t| now >= t + self.config.ack_delay)
        {
            self.acks_due = true;
        }
        if self.is_paused() {
            return;
        }
        if let Some(last) = self.last_resend_check {
            if now < last + self.config.resend_tick {
                return;
            }
        }
        self.last_resend_check = Some(now);
        let rto = self.rto;
        let max_rto = self.config.max_rto;
        let mut limit_hit = false;
        for (seq, out) in self.in_flight.iter_mut() {
            if out.resend_queued || now < out.last_sent + backoff(rto, max_rto, out.resends) {
                continue;
            }
            out.resends = out.resends.saturating_add(1);
            out.resend_queued = true;
            self.resend_queue.push_back(*seq);
            if self.config.max_resends.is_some_and(|m| out.resends >= m) {
                limit_hit = true;
            }
        }
        if limit_hit && !self.resend_limit_signalled {
            self.resend_limit_signalled = true;
            self.events.push_back(Event::ResendLimitReached);
        }
    }

    /// Frames transmitted and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.in_flight.len()
    }

    /// Frames accepted by `send` and not yet acknowledged (queued or in flight);
    /// 0 means everything sent has been acked.
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// Sequence number the next `send` will use.
    pub fn next_send_sequence(&self) -> i64 {
        self.next_seq
    }

    /// Next inbound sequence number to be delivered.
    pub fn expected_sequence(&self) -> i64 {
        self.expected
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Whether the agent is paused by MGS's `pause_publication`.
    pub fn paused(&self) -> bool {
        self.is_paused()
    }

    /// Whether any frame waits to be transmitted right now (acks, control, data
    /// within the window, due resends).
    pub fn wants_transmit(&self) -> bool {
        (!self.ack_queue.is_empty() && (self.config.ack_delay.is_zero() || self.acks_due))
            || self.other_ready()
    }
}

/// The wait before the next resend of a frame already resent `resends` times: the RTO doubled
/// per resend (as TCP backs off), capped at `max_rto`, so a peer that is away (reconnecting)
/// is not flooded with copies.
fn backoff(rto: Duration, max_rto: Duration, resends: u32) -> Duration {
    let doubled = rto.saturating_mul(1u32 << resends.min(16));
    doubled.min(max_rto.max(rto))
}
