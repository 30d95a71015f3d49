//! The transport: the five sockets of the connection file and the threads that serve them.
//!
//! ```text
//! heartbeat thread   REP   echo, nothing else (never starved by a cell)
//! iopub thread       XPUB  forwards what the other threads push to inproc://dllm-iopub; greets subscribers
//! shell thread       ROUTER verifies requests, queues them to the worker; sends the worker's replies
//! worker thread      ---   the protocol core for shell requests (worker.rs): runs cells off the socket loops
//! control (caller)   ROUTER kernel_info, interrupt_request (sets the interrupt at once), shutdown_request
//! stdin              ROUTER bound for clients that connect it; dllm commands never ask for input
//! ```
//!
//! Slow joiners: a client may send its first request before its IOPub subscription is live (evcxr lost
//! `idle` messages this way). The XPUB socket sees each subscription arrive and answers it with an
//! `iopub_welcome` (JEP 65) and the last `status` published, re-issued as a new message with the same parent
//! header: a client that subscribed too late for its request's `idle` still receives it, and one that saw the
//! original does not see a replayed signature.
//!
//! Invariant: every message from a client is verified (`wire::Message::from_frames`) before anything reads
//! it; bad ones are logged and dropped, and no input makes a thread panic or exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::connection::ConnectionInfo;
use crate::interpreter::Interpreter;
use crate::messages::{bad_request, to_content, ExecutionState, Request, ShutdownReply, Status};
use crate::publish::{log, Sender, IOPUB_INPROC, SHELL_REPLY_INPROC};
use crate::wire::{new_session_id, Header, Message, Signer};
use crate::worker::{kernel_info_reply, Worker};

/// Socket loops wake this often to notice a shutdown (requests themselves wake them at once).
const TICK_MS: i64 = 100;
/// How long shutdown waits for a running cell to notice its interrupt before leaving it behind.
const WORKER_GRACE: Duration = Duration::from_secs(3);
const LINGER_MS: i32 = 1000;
/// Larger incoming messages close the sender's connection instead of filling memory (cells are text).
const MAX_MESSAGE_BYTES: i64 = 64 << 20;

/// How the kernel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    pub restart: bool,
}

/// Serves `interp` on the connection's sockets until a shutdown_request; returns after the reply is out.
pub fn serve<I: Interpreter>(conn: &ConnectionInfo, interp: I) -> anyhow::Result<Shutdown> {
    let signer = Signer::new(&conn.key);
    if !signer.enabled() {
        log("the connection file has an empty key: messages are not signed or checked");
    }
    let session = new_session_id();
    let ctx = zmq::Context::new();

    let bind = |kind: zmq::SocketType, port: u16, name: &str| -> anyhow::Result<zmq::Socket> {
        let s = ctx.socket(kind)?;
        s.set_linger(LINGER_MS)?;
        s.set_maxmsgsize(MAX_MESSAGE_BYTES)?;
        if conn.ip.contains(':') {
            s.set_ipv6(true)?;
        }
        let ep = conn.endpoint(port);
        s.bind(&ep).with_context(|| format!("binding the {name} socket to {ep}"))?;
        Ok(s)
    };
    let shell = bind(zmq::ROUTER, conn.shell_port, "shell")?;
    let control = bind(zmq::ROUTER, conn.control_port, "control")?;
    let stdin = bind(zmq::ROUTER, conn.stdin_port, "stdin")?;
    let hb = bind(zmq::REP, conn.hb_port, "heartbeat")?;
    let iopub = bind(zmq::XPUB, conn.iopub_port, "iopub")?;
    iopub.set_xpub_verbose(true)?;
    let iopub_in = ctx.socket(zmq::PULL)?;
    iopub_in.bind(IOPUB_INPROC)?;
    let replies_in = ctx.socket(zmq::PULL)?;
    replies_in.bind(SHELL_REPLY_INPROC)?;

    // `stop` ends the request loops; `iopub_stop` ends IOPub after the last publisher is done.
    let stop = Arc::new(AtomicBool::new(false));
    let iopub_stop = Arc::new(AtomicBool::new(false));
    let restart = Arc::new(AtomicBool::new(false));
    let interrupter = interp.interrupter();
    let info = interp.kernel_info();

    let status = Sender::connect(&ctx, IOPUB_INPROC, signer.clone(), &session)?;
    let starting = to_content(&Status { execution_state: ExecutionState::Starting });
    status.send(&iopub_topic(Message::orphan("status", &session, starting)));

    let hb_thread = spawn("heartbeat", {
        let stop = stop.clone();
        move || heartbeat(hb, &stop)
    })?;
    let iopub_thread = spawn("iopub", {
        let (stop, signer, session) = (iopub_stop.clone(), signer.clone(), session.clone());
        move || iopub_loop(iopub, iopub_in, &stop, &signer, &session)
    })?;
    let (tx, rx) = mpsc::channel::<Message>();
    let worker = Worker::new(
        interp,
        Sender::connect(&ctx, SHELL_REPLY_INPROC, signer.clone(), &session)?,
        Sender::connect(&ctx, IOPUB_INPROC, signer.clone(), &session)?,
        Box::new({
            let (stop, restart) = (stop.clone(), restart.clone());
            move |r| {
                restart.store(r, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            }
        }),
    );
    let worker_thread = spawn("worker", move || worker.run(rx))?;
    if let Some(parent) = parent_to_watch() {
        let stop = stop.clone();
        spawn("parent-poller", move || watch_parent(parent, &stop))?;
    }
    let shell_thread = spawn("shell", {
        let (stop, signer) = (stop.clone(), signer.clone());
        move || shell_loop(shell, stdin, replies_in, tx, &stop, &signer)
    })?;

    control_loop(&control, &status, &signer, &info, &*interrupter, &stop, &restart);

    // Shut down: stop the cell (the worker finishes its current request), then the loops, then IOPub.
    stop.store(true, Ordering::SeqCst);
    interrupter();
    let _ = shell_thread.join();
    let deadline = Instant::now() + WORKER_GRACE;
    while !worker_thread.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    if !worker_thread.is_finished() {
        log("the running cell did not stop in time; exiting without it");
    }
    drop(status);
    iopub_stop.store(true, Ordering::SeqCst);
    let _ = iopub_thread.join();
    let _ = hb_thread.join();
    Ok(Shutdown { restart: restart.load(Ordering::SeqCst) })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(format!("kernel-{name}")).spawn(f).with_context(|| format!("starting the {name} thread"))
}

/// An IOPub message's topic frame is its type.
fn iopub_topic(mut m: Message) -> Message {
    m.identities = vec![m.header.msg_type.clone().into_bytes()];
    m
}

/// Receives every complete multipart message waiting on `s`, without blocking.
fn drain(s: &zmq::Socket) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Ok(frames) = s.recv_multipart(zmq::DONTWAIT) {
        out.push(frames);
    }
    out
}

fn readable(s: &zmq::Socket, timeout_ms: i64) -> bool {
    matches!(s.poll(zmq::POLLIN, timeout_ms), Ok(n) if n > 0)
}

fn heartbeat(hb: zmq::Socket, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if readable(&hb, TICK_MS) {
            // REP: strictly one receive, one send.
            if let Ok(frames) = hb.recv_multipart(zmq::DONTWAIT) {
                let _ = hb.send_multipart(frames, 0);
            }
        }
    }
}

/// `JPY_PARENT_PID`, which Jupyter sets to the process that started the kernel (ipykernel's ParentPoller).
fn parent_to_watch() -> Option<u32> {
    std::env::var("JPY_PARENT_PID").ok()?.trim().parse().ok().filter(|&p: &u32| p > 1)
}

/// Stops the kernel once its parent is gone (this process was re-parented): a kernel whose notebook server or
/// console died must not run on holding the model. Checked once a second.
fn watch_parent(parent: u32, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        #[cfg(unix)]
        if std::os::unix::process::parent_id() != parent {
            log(&format!("the parent process (JPY_PARENT_PID {parent}) is gone: shutting down"));
            stop.store(true, Ordering::SeqCst);
            return;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn iopub_loop(xpub: zmq::Socket, inbox: zmq::Socket, stop: &AtomicBool, signer: &Signer, session: &str) {
    let mut last_status: Option<Vec<Vec<u8>>> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut items = [xpub.as_poll_item(zmq::POLLIN), inbox.as_poll_item(zmq::POLLIN)];
        if zmq::poll(&mut items, if stopping { 20 } else { TICK_MS }).is_err() {
            continue;
        }
        let (subs, outgoing) = (items[0].is_readable(), items[1].is_readable());
        if outgoing {
            for frames in drain(&inbox) {
                if frames.first().map(Vec::as_slice) == Some(b"status".as_slice()) {
                    last_status = Some(frames.clone());
                }
                if let Err(e) = xpub.send_multipart(frames, 0) {
                    log(&format!("iopub send failed: {e}"));
                }
            }
        }
        if subs {
            for frames in drain(&xpub) {
                // A subscription is one frame: 1 then the topic (0 then the topic unsubscribes).
                let Some((&1, topic)) = frames.first().and_then(|f| f.split_first()) else { continue };
                let welcome = Message::orphan("iopub_welcome", session, json!({"subscription": String::from_utf8_lossy(topic)}));
                let _ = xpub.send_multipart(iopub_topic(welcome).to_frames(signer), 0);
                // The last status again, as a NEW message (fresh msg_id and signature, same parent and state):
                // a client that already saw the original would reject a byte-for-byte copy as a replay
                // ("Duplicate Signature" in jupyter_client).
                if let Some(old) = last_status.as_ref().and_then(|s| Message::from_frames(s.clone(), signer).ok()) {
                    let again = Message { header: Header::new("status", session), ..old };
                    let _ = xpub.send_multipart(again.to_frames(signer), 0);
                }
            }
        }
        if stopping && !outgoing {
            return;
        }
    }
}

fn shell_loop(shell: zmq::Socket, _stdin: zmq::Socket, replies: zmq::Socket, tx: mpsc::Sender<Message>, stop: &AtomicBool, signer: &Signer) {
    let forward_replies = || {
        for frames in drain(&replies) {
            if let Err(e) = shell.send_multipart(frames, 0) {
                log(&format!("shell send failed: {e}"));
            }
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut items = [shell.as_poll_item(zmq::POLLIN), replies.as_poll_item(zmq::POLLIN)];
        if zmq::poll(&mut items, TICK_MS).is_err() {
            continue;
        }
        let (incoming, outgoing) = (items[0].is_readable(), items[1].is_readable());
        if incoming {
            for frames in drain(&shell) {
                match Message::from_frames(frames, signer) {
                    Ok(m) => {
                        if tx.send(m).is_err() {
                            log("the worker has stopped; request dropped");
                        }
                    }
                    Err(e) => log(&format!("shell: dropped a message: {e}")),
                }
            }
        }
        if outgoing {
            forward_replies();
        }
    }
    // Shutting down: the worker's queue closes; its last replies (a shutdown_reply sent on shell, say) still
    // go out until 100 ms pass without one.
    drop(tx);
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(100) {
        if readable(&replies, 20) {
            forward_replies();
            quiet = Instant::now();
        }
    }
}

/// Serves the control socket on the calling thread until shutdown.
fn control_loop(
    control: &zmq::Socket,
    iopub: &Sender,
    signer: &Signer,
    info: &crate::interpreter::KernelInfo,
    interrupt: &(dyn Fn() + Send + Sync),
    stop: &AtomicBool,
    restart: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        if !readable(control, TICK_MS) {
            continue;
        }
        for frames in drain(control) {
            let msg = match Message::from_frames(frames, signer) {
                Ok(m) => m,
                Err(e) => {
                    log(&format!("control: dropped a message: {e}"));
                    continue;
                }
            };
            let reply = |msg_type: &str, content: Value| {
                let r = msg.child(msg_type, &iopub.session, content);
                if let Err(e) = control.send_multipart(r.to_frames(signer), 0) {
                    log(&format!("control send failed: {e}"));
                }
            };
            let req = match Request::parse(&msg.header.msg_type, &msg.content) {
                Ok(r) => r,
                Err(e) => {
                    log(&format!("control: a {} with bad content: {e}", msg.header.msg_type));
                    if let Some((reply_type, content)) = bad_request(&msg.header.msg_type, &format!("bad content: {e}"), 0) {
                        iopub.status(&msg, ExecutionState::Busy);
                        reply(&reply_type, content);
                        iopub.status(&msg, ExecutionState::Idle);
                    }
                    continue;
                }
            };
            iopub.status(&msg, ExecutionState::Busy);
            match req {
                Request::KernelInfo => reply("kernel_info_reply", kernel_info_reply(info)),
                Request::Interrupt => {
                    interrupt();
                    reply("interrupt_reply", json!({"status": "ok"}));
                }
                Request::Shutdown(s) => {
                    reply("shutdown_reply", to_content(&ShutdownReply { status: "ok", restart: s.restart }));
                    restart.store(s.restart, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                }
                other => {
                    log(&format!("control: {} is not served on control", short(&other)));
                    if let Some((reply_type, content)) = bad_request(&msg.header.msg_type, "not served on the control channel (send it on shell)", 0) {
                        reply(&reply_type, content);
                    }
                }
            }
            iopub.status(&msg, ExecutionState::Idle);
        }
    }
}

fn short(r: &Request) -> String {
    let s = format!("{r:?}");
    s.split(['(', ' ']).next().unwrap_or_default().to_string()
}
