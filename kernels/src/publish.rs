//! Sending side of IOPub and of shell replies, for the threads that are not the socket's owner.
//!
//! ZeroMQ sockets must not be shared between threads, so every thread that publishes holds its own PUSH
//! socket to an inproc PULL that the IOPub thread (or the shell thread, for replies) forwards to the real
//! socket. Messages of one thread keep their order, so a request's outputs always precede its `idle`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::interpreter::Output;
use crate::messages::{to_content, ClearOutput, DisplayData, ExecutionState, MimeBundle, Status, Stream};
use crate::wire::{Message, Signer};

pub const IOPUB_INPROC: &str = "inproc://dllm-iopub";
pub const SHELL_REPLY_INPROC: &str = "inproc://dllm-shell-replies";

/// The most update_display_data messages per display per second (Jupyter Server rate-limits IOPub).
pub const UPDATES_PER_SECOND: u32 = 10;

/// Signs and sends messages through one PUSH socket.
pub struct Sender {
    socket: zmq::Socket,
    signer: Signer,
    pub session: String,
}

impl Sender {
    pub fn connect(ctx: &zmq::Context, endpoint: &str, signer: Signer, session: &str) -> zmq::Result<Sender> {
        let socket = ctx.socket(zmq::PUSH)?;
        socket.set_linger(1000)?;
        socket.connect(endpoint)?;
        Ok(Sender { socket, signer, session: session.into() })
    }

    pub fn send(&self, msg: &Message) {
        if let Err(e) = self.socket.send_multipart(msg.to_frames(&self.signer), 0) {
            log(&format!("cannot send {}: {e}", msg.header.msg_type));
        }
    }

    /// A reply to `request` on the socket it came from.
    pub fn reply(&self, request: &Message, msg_type: &str, content: Value) {
        self.send(&request.child(msg_type, &self.session, content));
    }

    /// An IOPub message caused by `parent`; the topic frame is the message type.
    pub fn publish(&self, parent: &Message, msg_type: &str, content: Value) {
        let mut m = parent.child(msg_type, &self.session, content);
        m.identities = vec![msg_type.as_bytes().to_vec()];
        self.send(&m);
    }

    pub fn status(&self, parent: &Message, state: ExecutionState) {
        self.publish(parent, "status", to_content(&Status { execution_state: state }));
    }
}

/// Publishes a cell's outputs, coalescing `update_display_data` per display id to `UPDATES_PER_SECOND`:
/// an update that comes too soon is held, replaced by later ones, and sent when the next is allowed or at
/// `flush` (before the cell's result), so the last state is always shown.
pub struct OutputPublisher<'a> {
    sender: &'a Sender,
    parent: &'a Message,
    silent: bool,
    last_sent: HashMap<String, Instant>,
    held: Vec<(String, MimeBundle)>,
}

impl<'a> OutputPublisher<'a> {
    pub fn new(sender: &'a Sender, parent: &'a Message, silent: bool) -> OutputPublisher<'a> {
        OutputPublisher { sender, parent, silent, last_sent: HashMap::new(), held: Vec::new() }
    }

    pub fn output(&mut self, out: Output) {
        if self.silent {
            return;
        }
        match out {
            Output::Display { data, display_id } => {
                let mut transient = Map::new();
                if let Some(id) = display_id {
                    // A new display with this id starts its own rate window.
                    self.held.retain(|(h, _)| *h != id);
                    self.last_sent.insert(id.clone(), Instant::now());
                    transient.insert("display_id".into(), Value::String(id));
                }
                self.send_display("display_data", data, transient);
            }
            Output::Update { data, display_id } => {
                let gap = Duration::from_secs(1) / UPDATES_PER_SECOND;
                let due = self.last_sent.get(&display_id).is_none_or(|t| t.elapsed() >= gap);
                self.held.retain(|(h, _)| *h != display_id);
                if due {
                    self.send_update(display_id, data);
                } else {
                    self.held.push((display_id, data));
                }
            }
            Output::Stream { name, text } => {
                self.flush_due();
                self.sender.publish(self.parent, "stream", to_content(&Stream { name, text }));
            }
            Output::ClearOutput { wait } => {
                self.flush_due();
                self.sender.publish(self.parent, "clear_output", to_content(&ClearOutput { wait }));
            }
        }
    }

    fn send_display(&self, msg_type: &str, data: MimeBundle, transient: Map<String, Value>) {
        let content = to_content(&DisplayData { data: with_plain(data), metadata: Map::new(), transient });
        self.sender.publish(self.parent, msg_type, content);
    }

    fn send_update(&mut self, id: String, data: MimeBundle) {
        self.last_sent.insert(id.clone(), Instant::now());
        let mut transient = Map::new();
        transient.insert("display_id".into(), Value::String(id));
        self.send_display("update_display_data", data, transient);
    }

    /// Sends held updates whose window has passed.
    fn flush_due(&mut self) {
        let gap = Duration::from_secs(1) / UPDATES_PER_SECOND;
        let held = std::mem::take(&mut self.held);
        for (id, data) in held {
            if self.last_sent.get(&id).is_none_or(|t| t.elapsed() >= gap) {
                self.send_update(id, data);
            } else {
                self.held.push((id, data));
            }
        }
    }

    /// Sends every held update (the cell is ending: its last state must be shown).
    pub fn flush(&mut self) {
        for (id, data) in std::mem::take(&mut self.held) {
            self.send_update(id, data);
        }
    }
}

/// Every displayed bundle carries text/plain (the spec asks for it; consoles show only that).
pub fn with_plain(mut data: MimeBundle) -> MimeBundle {
    if !data.contains_key("text/plain") {
        data.insert("text/plain".into(), Value::String(String::new()));
    }
    data
}

/// The kernel's log: stderr, which Jupyter shows in the server's log (never on IOPub).
pub fn log(what: &str) {
    eprintln!("[dllm-kernel {}] {what}", crate::wire::now_iso8601());
}
