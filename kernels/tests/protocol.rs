//! Protocol tests: the kernel core serving the mock interpreter on loopback, driven through real ZeroMQ
//! sockets the way jupyter_client drives it (DEALER for shell and control, SUB for IOPub, REQ for heartbeat).

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dllm_kernel::mock::MockInterpreter;
use dllm_kernel::wire::{Header, Message, Signer, DELIMITER};
use dllm_kernel::{serve, ConnectionInfo, Shutdown};
use serde_json::{json, Value};

const KEY: &str = "a0436f6c-1916-498b-8eb9-e81ab9368e84";

struct Client {
    shell: zmq::Socket,
    control: zmq::Socket,
    iopub: zmq::Socket,
    hb: zmq::Socket,
    signer: Signer,
    conn: ConnectionInfo,
    ctx: zmq::Context,
    kernel: Option<JoinHandle<anyhow::Result<Shutdown>>>,
}

fn free_ports() -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..5).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn start() -> Client {
    let p = free_ports();
    let conn = ConnectionInfo::parse(
        &json!({"shell_port": p[0], "iopub_port": p[1], "stdin_port": p[2], "control_port": p[3], "hb_port": p[4],
                "ip": "127.0.0.1", "transport": "tcp", "key": KEY, "signature_scheme": "hmac-sha256"})
        .to_string(),
    )
    .unwrap();
    let c2 = conn.clone();
    let kernel = std::thread::spawn(move || serve(&c2, MockInterpreter::new()));
    let ctx = zmq::Context::new();
    let sock = |kind, port| {
        let s = ctx.socket(kind).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&conn.endpoint(port)).unwrap();
        s
    };
    let iopub = sock(zmq::SUB, conn.iopub_port);
    iopub.set_subscribe(b"").unwrap();
    let c = Client {
        shell: sock(zmq::DEALER, conn.shell_port),
        control: sock(zmq::DEALER, conn.control_port),
        hb: sock(zmq::REQ, conn.hb_port),
        iopub,
        signer: Signer::new(KEY),
        conn,
        ctx: ctx.clone(),
        kernel: Some(kernel),
    };
    // The kernel greets each subscription: once the welcome is here, no IOPub message can be missed. (The
    // `starting` status may come first, if the subscription was quicker than the kernel's start.)
    loop {
        let m = c.iopub_msg(Duration::from_secs(10)).expect("iopub_welcome");
        if m.header.msg_type == "iopub_welcome" {
            break;
        }
        assert_eq!(m.content["execution_state"], "starting");
    }
    c.drain_iopub();
    c
}

fn request(msg_type: &str, content: Value) -> Message {
    Message {
        identities: vec![],
        header: Header::new(msg_type, "test-client"),
        parent_header: json!({}),
        metadata: json!({}),
        content,
        buffers: vec![],
    }
}

impl Client {
    fn send(&self, on: &zmq::Socket, msg_type: &str, content: Value) -> String {
        let m = request(msg_type, content);
        on.send_multipart(m.to_frames(&self.signer), 0).unwrap();
        m.header.msg_id
    }

    fn recv(&self, on: &zmq::Socket, timeout: Duration) -> Option<Message> {
        if on.poll(zmq::POLLIN, timeout.as_millis() as i64).unwrap() == 0 {
            return None;
        }
        let frames = on.recv_multipart(0).unwrap();
        Some(Message::from_frames(frames, &self.signer).expect("the kernel signs what it sends"))
    }

    fn shell_reply(&self, timeout: Duration) -> Option<Message> {
        self.recv(&self.shell, timeout)
    }

    fn iopub_msg(&self, timeout: Duration) -> Option<Message> {
        self.recv(&self.iopub, timeout)
    }

    fn drain_iopub(&self) {
        while self.iopub_msg(Duration::from_millis(100)).is_some() {}
    }

    /// IOPub messages caused by `msg_id`, from its busy to its idle (checked to be there).
    fn outputs_of(&self, msg_id: &str) -> Vec<Message> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(m) = self.iopub_msg(Duration::from_secs(10)) else { break };
            if m.parent_header["msg_id"] != msg_id {
                continue;
            }
            let idle = m.header.msg_type == "status" && m.content["execution_state"] == "idle";
            out.push(m);
            if idle {
                assert_eq!(out[0].content["execution_state"], "busy", "busy first: {:?}", types(&out));
                return out;
            }
        }
        panic!("no idle for {msg_id}; got {:?}", types(&out));
    }

    fn execute(&self, code: &str) -> (Message, Vec<Message>) {
        self.execute_with(json!({"code": code}))
    }

    fn execute_with(&self, content: Value) -> (Message, Vec<Message>) {
        let id = self.send(&self.shell, "execute_request", content);
        let reply = self.shell_reply(Duration::from_secs(10)).expect("execute_reply");
        assert_eq!(reply.parent_header["msg_id"], id);
        assert_eq!(reply.header.msg_type, "execute_reply");
        (reply, self.outputs_of(&id))
    }

    fn heartbeat(&self) -> bool {
        self.hb.send("ping", 0).unwrap();
        self.hb.poll(zmq::POLLIN, 2000).unwrap() > 0 && self.hb.recv_bytes(0).unwrap() == b"ping"
    }

    fn shutdown(mut self, restart: bool) -> Shutdown {
        let id = self.send(&self.control, "shutdown_request", json!({"restart": restart}));
        let r = self.recv(&self.control, Duration::from_secs(5)).expect("shutdown_reply");
        assert_eq!(r.header.msg_type, "shutdown_reply");
        assert_eq!(r.parent_header["msg_id"], id);
        assert_eq!(r.content["restart"], restart);
        self.kernel.take().unwrap().join().unwrap().unwrap()
    }
}

fn types(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(|m| m.header.msg_type.as_str()).collect()
}

/// The messages between busy and idle, by type.
fn middle(ms: &[Message]) -> Vec<&str> {
    types(&ms[1..ms.len() - 1])
}

#[test]
fn kernel_info_on_shell_and_control_between_busy_and_idle() {
    let c = start();
    for sock in [&c.shell, &c.control] {
        let id = c.send(sock, "kernel_info_request", json!({}));
        let r = c.recv(sock, Duration::from_secs(5)).unwrap();
        assert_eq!(r.header.msg_type, "kernel_info_reply");
        assert_eq!(r.content["protocol_version"], "5.3");
        assert_eq!(r.content["language_info"]["file_extension"], ".mock");
        assert!(r.content["language_info"].get("pygments_lexer").is_some());
        assert!(r.content["help_links"].is_array());
        assert_eq!(c.outputs_of(&id).len(), 2);
    }
    assert!(c.heartbeat());
    c.shutdown(false);
}

#[test]
fn good_signatures_are_accepted_bad_and_missing_rejected() {
    let c = start();
    let m = request("execute_request", json!({"code": "echo bad"}));
    let mut frames = m.to_frames(&c.signer);
    frames[1][0] = if frames[1][0] == b'0' { b'1' } else { b'0' };
    c.shell.send_multipart(frames, 0).unwrap();
    let mut frames = request("execute_request", json!({"code": "echo unsigned"})).to_frames(&c.signer);
    frames[1].clear();
    c.shell.send_multipart(frames, 0).unwrap();
    let frames = request("execute_request", json!({"code": "echo other key"})).to_frames(&Signer::new("wrong"));
    c.shell.send_multipart(frames, 0).unwrap();
    assert!(c.shell_reply(Duration::from_millis(300)).is_none(), "nothing answers a badly signed message");
    // The good one is answered, and it is the first cell that ran.
    let (reply, out) = c.execute("echo good");
    assert_eq!(reply.content["status"], "ok");
    assert_eq!(reply.content["execution_count"], 1);
    let result = out.iter().find(|m| m.header.msg_type == "execute_result").unwrap();
    assert_eq!(result.content["data"]["text/plain"], "good");
    c.shutdown(false);
}

#[test]
fn malformed_frames_are_ignored_and_malformed_content_answered() {
    let c = start();
    let sign = |h: &[u8], p: &[u8], m: &[u8], ct: &[u8]| c.signer.sign([h, p, m, ct]).into_bytes();
    let header = serde_json::to_vec(&Header::new("execute_request", "x")).unwrap();
    let garbage: Vec<Vec<Vec<u8>>> = vec![
        vec![b"no delimiter".to_vec()],
        vec![DELIMITER.to_vec()],
        vec![DELIMITER.to_vec(), b"sig".to_vec(), b"{}".to_vec()],
        vec![DELIMITER.to_vec(), sign(b"{nope", b"{}", b"{}", b"{}"), b"{nope".to_vec(), b"{}".to_vec(), b"{}".to_vec(), b"{}".to_vec()],
        vec![DELIMITER.to_vec(), sign(b"{}", b"{}", b"{}", b"{}"), b"{}".to_vec(), b"{}".to_vec(), b"{}".to_vec(), b"{}".to_vec()],
    ];
    for frames in garbage {
        c.shell.send_multipart(frames.clone(), 0).unwrap();
        c.control.send_multipart(frames, 0).unwrap();
    }
    assert!(c.shell_reply(Duration::from_millis(300)).is_none());
    assert!(c.recv(&c.control, Duration::from_millis(100)).is_none());
    // An authentic request whose content is not a JSON object is answered (its sender waits), and does not run.
    for content in [&b"[]"[..], &b"\xff"[..]] {
        let frames = vec![DELIMITER.to_vec(), sign(&header, b"{}", b"{}", content), header.clone(), b"{}".to_vec(), b"{}".to_vec(), content.to_vec()];
        c.shell.send_multipart(frames, 0).unwrap();
        let r = c.shell_reply(Duration::from_secs(5)).unwrap_or_else(|| panic!("no reply to content {content:?}"));
        assert_eq!((r.header.msg_type.as_str(), &r.content["ename"]), ("execute_reply", &json!("BadRequest")), "{:?}", r.content);
    }
    // Still serving, and nothing ran.
    let (reply, _) = c.execute("count");
    assert_eq!(reply.content["execution_count"], 1);
    assert!(c.heartbeat());
    c.shutdown(false);
}

#[test]
fn signed_requests_that_cannot_be_served_get_an_error_reply() {
    let c = start();
    let cases = [
        (&c.shell, "execute_request", json!({"cod": 1})),
        (&c.shell, "execute_request", json!({"code": 5})),
        (&c.shell, "inspect_request", json!({})),
        (&c.shell, "frobnicate_request", json!({})),
        (&c.control, "shutdown_request", json!({"restart": "soon"})),
        (&c.control, "execute_request", json!({"code": "echo ran"})),
    ];
    for (on, msg_type, content) in cases {
        let id = c.send(on, msg_type, content.clone());
        let r = c.recv(on, Duration::from_secs(5)).unwrap_or_else(|| panic!("no reply to {msg_type} {content}"));
        assert_eq!(r.parent_header["msg_id"], id);
        assert_eq!(r.header.msg_type, format!("{}_reply", msg_type.strip_suffix("_request").unwrap()));
        assert_eq!(r.content["status"], "error", "{msg_type} {content}");
        assert_eq!(r.content["ename"], "BadRequest");
        assert!(r.content["evalue"].as_str().unwrap().starts_with(msg_type), "{}", r.content["evalue"]);
    }
    // A message that is not a request waits for nothing and gets nothing.
    c.send(&c.shell, "frobnicate", json!({}));
    assert!(c.shell_reply(Duration::from_millis(300)).is_none());
    // Nothing ran and the kernel goes on: the first good cell is cell 1.
    let (reply, out) = c.execute("count");
    assert_eq!(reply.content["execution_count"], 1);
    assert!(out.iter().all(|m| m.content["data"]["text/plain"] != "ran"));
    assert!(c.heartbeat());
    c.shutdown(false);
}

#[test]
fn execute_outputs_counts_and_exactly_one_error() {
    let c = start();
    let (reply, out) = c.execute("print hello, world\neprint oops\ndisplay pic\necho 42");
    assert_eq!(reply.content["status"], "ok");
    assert_eq!(reply.content["execution_count"], 1);
    assert_eq!(reply.content["user_expressions"], json!({}));
    assert_eq!(middle(&out), ["execute_input", "stream", "stream", "display_data", "execute_result"]);
    assert_eq!(out[1].content["execution_count"], 1);
    assert_eq!(out[2].content, json!({"name": "stdout", "text": "hello, world\n"}));
    assert_eq!(out[3].content["name"], "stderr");
    assert_eq!(out[4].content["data"]["text/html"], "<b>pic</b>");
    assert_eq!(out[5].content["execution_count"], 1);

    let (reply, out) = c.execute("print before\nfail broken\nprint never");
    assert_eq!(reply.content["status"], "error");
    assert_eq!(reply.content["ename"], "MockError");
    assert_eq!(reply.content["evalue"], "broken");
    assert!(reply.content["traceback"].is_array());
    assert_eq!(middle(&out), ["execute_input", "stream", "error"]);
    assert_eq!(reply.content["execution_count"], 2);

    // silent: no count, no outputs; store_history false: no new count.
    let (reply, out) = c.execute_with(json!({"code": "print x\necho y", "silent": true}));
    assert_eq!((reply.content["status"].as_str(), reply.content["execution_count"].as_u64()), (Some("ok"), Some(2)));
    assert!(middle(&out).is_empty());
    let (reply, out) = c.execute_with(json!({"code": "echo y", "store_history": false}));
    assert_eq!(reply.content["execution_count"], 2);
    assert_eq!(middle(&out), ["execute_input", "execute_result"]);
    let (reply, _) = c.execute("echo z");
    assert_eq!(reply.content["execution_count"], 3);

    // user_expressions: an object with one entry per expression.
    let (reply, _) = c.execute_with(json!({"code": "", "user_expressions": {"a": "echo 1", "b": "fail no"}}));
    assert_eq!(reply.content["user_expressions"]["a"], json!({"status": "ok", "data": {"text/plain": "1"}, "metadata": {}}));
    assert_eq!(reply.content["user_expressions"]["b"]["status"], "error");
    assert_eq!(reply.content["user_expressions"]["b"]["ename"], "MockError");

    // A panic inside the interpreter is one error, and the kernel goes on.
    let (reply, out) = c.execute("panic");
    assert_eq!(reply.content["ename"], "InternalError");
    assert_eq!(middle(&out), ["execute_input", "error"]);
    assert_eq!(c.execute("echo alive").0.content["status"], "ok");
    c.shutdown(false);
}

#[test]
fn stop_on_error_aborts_queued_cells() {
    let c = start();
    let first = c.send(&c.shell, "execute_request", json!({"code": "sleep 100\nfail first"}));
    let second = c.send(&c.shell, "execute_request", json!({"code": "echo second"}));
    let r1 = c.shell_reply(Duration::from_secs(5)).unwrap();
    let r2 = c.shell_reply(Duration::from_secs(5)).unwrap();
    assert_eq!((r1.parent_header["msg_id"].as_str(), r1.content["status"].as_str()), (Some(first.as_str()), Some("error")));
    assert_eq!((r2.parent_header["msg_id"].as_str(), r2.content["status"].as_str()), (Some(second.as_str()), Some("aborted")));
    assert!(middle(&c.outputs_of(&second)).is_empty());
    // Without stop_on_error the next cell runs.
    c.send(&c.shell, "execute_request", json!({"code": "sleep 100\nfail again", "stop_on_error": false}));
    c.send(&c.shell, "execute_request", json!({"code": "echo runs"}));
    assert_eq!(c.shell_reply(Duration::from_secs(5)).unwrap().content["status"], "error");
    assert_eq!(c.shell_reply(Duration::from_secs(5)).unwrap().content["status"], "ok");
    c.shutdown(false);
}

#[test]
fn interrupt_during_a_long_execute_then_a_normal_one() {
    let c = start();
    let started = Instant::now();
    let id = c.send(&c.shell, "execute_request", json!({"code": "sleep 30000"}));
    // Wait until the cell runs.
    loop {
        let m = c.iopub_msg(Duration::from_secs(5)).expect("execute_input");
        if m.header.msg_type == "execute_input" {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    // Heartbeat and control are served while the cell runs.
    assert!(c.heartbeat());
    let kid = c.send(&c.control, "kernel_info_request", json!({}));
    assert_eq!(c.recv(&c.control, Duration::from_secs(2)).unwrap().parent_header["msg_id"], kid);
    c.send(&c.control, "interrupt_request", json!({}));
    let r = c.recv(&c.control, Duration::from_secs(2)).expect("interrupt_reply");
    assert_eq!(r.header.msg_type, "interrupt_reply");
    let reply = c.shell_reply(Duration::from_secs(5)).expect("execute_reply");
    assert_eq!(reply.parent_header["msg_id"], id);
    assert_eq!(reply.content["status"], "error");
    assert_eq!(reply.content["ename"], "Interrupted");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The interpreter's state survived: this is its second cell.
    let (reply, out) = c.execute("count");
    assert_eq!(reply.content["status"], "ok");
    let result = out.iter().find(|m| m.header.msg_type == "execute_result").unwrap();
    assert_eq!(result.content["data"]["text/plain"], "2");
    c.shutdown(false);
}

#[test]
fn display_updates_are_coalesced_and_the_last_is_shown() {
    let c = start();
    let t = Instant::now();
    let (_, out) = c.execute("progress 5000");
    // At most 10 a second (plus the last one, flushed when the cell ends).
    let allowed = (t.elapsed().as_secs_f64() * 10.0).floor() as usize + 2;
    let updates: Vec<&Message> = out.iter().filter(|m| m.header.msg_type == "update_display_data").collect();
    assert_eq!(out.iter().filter(|m| m.header.msg_type == "display_data").count(), 1);
    assert!(!updates.is_empty() && updates.len() <= allowed, "{} updates, {allowed} allowed", updates.len());
    let last = updates.last().unwrap();
    assert_eq!(last.content["data"]["text/plain"], "5000");
    assert_eq!(last.content["transient"]["display_id"], "progress");
    c.shutdown(false);
}

#[test]
fn complete_inspect_is_complete_history_and_comms() {
    let c = start();
    let ask = |t: &str, content: Value| {
        let id = c.send(&c.shell, t, content);
        let r = c.shell_reply(Duration::from_secs(5)).unwrap();
        assert_eq!(r.parent_header["msg_id"], id);
        assert_eq!(c.outputs_of(&id).first().unwrap().content["execution_state"], "busy");
        r
    };
    let r = ask("complete_request", json!({"code": "echo x\npr", "cursor_pos": 9}));
    assert_eq!(r.content["matches"], json!(["print", "progress"]));
    assert_eq!((r.content["cursor_start"].as_u64(), r.content["cursor_end"].as_u64()), (Some(7), Some(9)));
    let r = ask("inspect_request", json!({"code": "sleep 1", "cursor_pos": 2, "detail_level": 0}));
    assert_eq!((r.content["status"].as_str(), r.content["found"].as_bool()), (Some("ok"), Some(true)));
    for (code, status) in [("echo 1", "complete"), ("echo \\", "incomplete"), ("bad", "invalid")] {
        assert_eq!(ask("is_complete_request", json!({"code": code})).content["status"], status);
    }
    for code in ["echo a", "echo b", "echo a"] {
        c.execute(code);
    }
    let r = ask("history_request", json!({"hist_access_type": "tail", "n": 2, "output": false, "raw": true}));
    assert_eq!(r.content["history"], json!([[1, 2, "echo b"], [1, 3, "echo a"]]));
    let r = ask("history_request", json!({"hist_access_type": "range", "session": 1, "start": 2, "stop": 3, "output": true, "raw": true}));
    assert_eq!(r.content["history"], json!([[1, 2, ["echo b", "b"]]]));
    let r = ask("history_request", json!({"hist_access_type": "search", "pattern": "echo a*", "unique": true}));
    assert_eq!(r.content["history"], json!([[1, 3, "echo a"]]));
    let r = ask("comm_info_request", json!({}));
    assert_eq!(r.content["comms"], json!({}));
    let id = c.send(&c.shell, "comm_open", json!({"comm_id": "c1", "target_name": "nobody", "data": {}}));
    let out = c.outputs_of(&id);
    assert_eq!(middle(&out), ["comm_close"]);
    assert_eq!(out[1].content["comm_id"], "c1");
    c.shutdown(false);
}

#[test]
fn a_late_subscriber_still_sees_the_status_of_its_request() {
    let c = start();
    let id = c.send(&c.shell, "kernel_info_request", json!({}));
    c.shell_reply(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let late = c.ctx.socket(zmq::SUB).unwrap();
    late.set_subscribe(b"").unwrap();
    late.connect(&c.conn.endpoint(c.conn.iopub_port)).unwrap();
    let mut seen = Vec::new();
    while late.poll(zmq::POLLIN, 2000).unwrap() > 0 {
        let m = Message::from_frames(late.recv_multipart(0).unwrap(), &c.signer).unwrap();
        let done = m.header.msg_type == "status";
        seen.push(m);
        if done {
            break;
        }
    }
    assert_eq!(types(&seen), ["iopub_welcome", "status"]);
    assert_eq!(seen[0].content["subscription"], "");
    assert_eq!(seen[1].content["execution_state"], "idle");
    assert_eq!(seen[1].parent_header["msg_id"], id);
    // The first client saw the original idle; the re-issued one is a new message (jupyter_client rejects a
    // repeated signature as a replay), and a second late subscriber gets yet another.
    let original = loop {
        let m = c.iopub_msg(Duration::from_secs(2)).expect("the original idle");
        if m.header.msg_type == "status" && m.parent_header["msg_id"] == id && m.content["execution_state"] == "idle" {
            break m;
        }
    };
    assert_ne!(original.header.msg_id, seen[1].header.msg_id);
    let second = c.ctx.socket(zmq::SUB).unwrap();
    second.set_subscribe(b"").unwrap();
    second.connect(&c.conn.endpoint(c.conn.iopub_port)).unwrap();
    let mut again = None;
    while second.poll(zmq::POLLIN, 2000).unwrap() > 0 {
        let m = Message::from_frames(second.recv_multipart(0).unwrap(), &c.signer).unwrap();
        if m.header.msg_type == "status" {
            again = Some(m);
            break;
        }
    }
    let again = again.expect("the second subscriber gets the status too");
    assert_eq!(again.parent_header["msg_id"], id);
    assert!(![&original.header.msg_id, &seen[1].header.msg_id].contains(&&again.header.msg_id));
    c.shutdown(false);
}

#[test]
fn shutdown_and_restart_replies_end_the_kernel() {
    assert_eq!(start().shutdown(false), Shutdown { restart: false });
    assert_eq!(start().shutdown(true), Shutdown { restart: true });
    // Shutdown while a cell runs: the cell is interrupted and the kernel still ends.
    let c = start();
    c.send(&c.shell, "execute_request", json!({"code": "sleep 60000"}));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    c.shutdown(false);
    assert!(t.elapsed() < Duration::from_secs(5));
    // Old clients send shutdown_request on shell.
    let mut c = start();
    c.send(&c.shell, "shutdown_request", json!({"restart": false}));
    let r = c.shell_reply(Duration::from_secs(5)).expect("shutdown_reply on shell");
    assert_eq!(r.header.msg_type, "shutdown_reply");
    c.kernel.take().unwrap().join().unwrap().unwrap();
}

#[test]
fn binding_fails_cleanly_on_a_taken_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = free_ports();
    let conn = ConnectionInfo::parse(
        &json!({"shell_port": port, "iopub_port": p[1], "stdin_port": p[2], "control_port": p[3], "hb_port": p[4], "key": KEY})
            .to_string(),
    )
    .unwrap();
    let err = serve(&conn, MockInterpreter::new()).unwrap_err();
    assert!(format!("{err:#}").contains("shell"), "{err:#}");
}
