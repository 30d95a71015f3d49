//! The protocol core for shell requests, on its own thread: the shell socket's thread forwards each verified
//! request here through a channel, so a long cell never blocks the sockets (control, heartbeat, and the
//! shell socket itself keep being served). Requests are handled strictly in arrival order, each between a
//! `busy` and an `idle` status, with every output published before the `idle`.
//!
//! Execution counts: start at 1, and only a cell with `store_history` true and `silent` false takes a new
//! one; the count goes in execute_input, execute_result and execute_reply.
//!
//! After a failed cell with `stop_on_error`, the execute requests already queued behind it when it failed
//! are answered "aborted" without running (a notebook's "Run all" stops at the first error); a request sent
//! after the error reply runs normally.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;

use serde_json::{json, Map, Value};

use crate::interpreter::{ErrorInfo, ExecContext, ExecuteOk, Interpreter, KernelInfo};
use crate::messages::{
    bad_request, to_content, CodeAt, CommClose, CommInfoReply, CompleteReply, ExecuteInput, ExecuteReply, ExecuteRequest, ExecuteResult,
    ExecutionState, HistoryReply, HistoryRequest, InspectReply, KernelInfoReply, Request, ShutdownReply,
};
use crate::publish::{log, with_plain, OutputPublisher, Sender};
use crate::wire::{Message, PROTOCOL_VERSION};

/// One executed cell, for history requests.
struct Entry {
    count: u64,
    code: String,
    output: Option<String>,
}

pub struct Worker<I: Interpreter> {
    interp: I,
    info: KernelInfo,
    /// Replies go back to the shell socket's thread, IOPub messages to the IOPub thread.
    replies: Sender,
    iopub: Sender,
    execution_count: u64,
    history: Vec<Entry>,
    /// Requests that were queued when a cell failed with stop_on_error.
    to_abort: Vec<Message>,
    /// Called with `restart` when a shutdown_request arrives on the shell socket (old clients send it there).
    on_shutdown: Box<dyn Fn(bool) + Send>,
}

/// kernel_info_reply content, shared by the shell worker and the control thread.
pub fn kernel_info_reply(info: &KernelInfo) -> Value {
    to_content(&KernelInfoReply {
        status: "ok",
        protocol_version: PROTOCOL_VERSION.into(),
        implementation: info.implementation.clone(),
        implementation_version: info.implementation_version.clone(),
        language_info: info.language_info.clone(),
        banner: info.banner.clone(),
        help_links: info.help_links.clone(),
        debugger: false,
    })
}

impl<I: Interpreter> Worker<I> {
    pub fn new(interp: I, replies: Sender, iopub: Sender, on_shutdown: Box<dyn Fn(bool) + Send>) -> Worker<I> {
        let info = interp.kernel_info();
        Worker { interp, info, replies, iopub, execution_count: 0, history: Vec::new(), to_abort: Vec::new(), on_shutdown }
    }

    /// Serves requests until the channel closes.
    pub fn run(mut self, rx: Receiver<Message>) {
        while let Ok(msg) = rx.recv() {
            self.handle(&msg, &rx);
            // Requests queued behind a cell that failed with stop_on_error: executes are aborted, the rest
            // served (a request sent after the error reply went out is not among them).
            for queued in std::mem::take(&mut self.to_abort) {
                if queued.header.msg_type == "execute_request" {
                    self.iopub.status(&queued, ExecutionState::Busy);
                    let reply = ExecuteReply::Aborted { execution_count: self.execution_count, user_expressions: Map::new(), payload: vec![] };
                    self.replies.reply(&queued, "execute_reply", to_content(&reply));
                    self.iopub.status(&queued, ExecutionState::Idle);
                } else {
                    self.handle(&queued, &rx);
                }
            }
        }
    }

    /// Serves one request between busy and idle.
    pub fn handle(&mut self, msg: &Message, queue: &Receiver<Message>) {
        let req = match Request::parse(&msg.header.msg_type, &msg.content) {
            Ok(r) => r,
            Err(e) => {
                log(&format!("a {} with bad content: {e}", msg.header.msg_type));
                self.refuse(msg, &format!("bad content: {e}"));
                return;
            }
        };
        self.iopub.status(msg, ExecutionState::Busy);
        match req {
            Request::KernelInfo => self.replies.reply(msg, "kernel_info_reply", kernel_info_reply(&self.info)),
            Request::Execute(e) => self.execute(msg, e, queue),
            Request::Complete(c) => self.complete(msg, c),
            Request::Inspect(c) => self.inspect(msg, c),
            Request::IsComplete(r) => {
                let status = guard(|| self.interp.is_complete(&r.code)).unwrap_or(crate::messages::IsComplete::Unknown);
                self.replies.reply(msg, "is_complete_reply", to_content(&status));
            }
            Request::History(h) => {
                let history = self.history(&h);
                self.replies.reply(msg, "history_reply", to_content(&HistoryReply { status: "ok", history }));
            }
            Request::CommInfo => self.replies.reply(msg, "comm_info_reply", to_content(&CommInfoReply { status: "ok", comms: Map::new() })),
            Request::CommOpen(o) => {
                // No comm targets exist: close at once so the frontend does not wait on a dead comm.
                log(&format!("comm_open for unknown target {:?}: closing it", o.target_name));
                self.iopub.publish(msg, "comm_close", to_content(&CommClose { comm_id: o.comm_id, data: Map::new() }));
            }
            Request::CommIgnored => {}
            Request::Interrupt => {
                // Belongs on control, but answer it here too rather than leave a client waiting.
                (self.interp.interrupter())();
                self.replies.reply(msg, "interrupt_reply", json!({"status": "ok"}));
            }
            Request::Shutdown(s) => {
                self.replies.reply(msg, "shutdown_reply", to_content(&ShutdownReply { status: "ok", restart: s.restart }));
                (self.on_shutdown)(s.restart);
            }
            Request::Unknown(t) => {
                log(&format!("unsupported message type {t:?}"));
                if let Some((reply_type, content)) = bad_request(&t, "this kernel does not serve this message type", self.execution_count) {
                    self.replies.reply(msg, &reply_type, content);
                }
            }
        }
        self.iopub.status(msg, ExecutionState::Idle);
    }

    /// Answers a request that cannot be served with an error reply (between busy and idle).
    fn refuse(&mut self, msg: &Message, why: &str) {
        if let Some((reply_type, content)) = bad_request(&msg.header.msg_type, why, self.execution_count) {
            self.iopub.status(msg, ExecutionState::Busy);
            self.replies.reply(msg, &reply_type, content);
            self.iopub.status(msg, ExecutionState::Idle);
        }
    }

    /// Runs a cell. If it fails with `stop_on_error`, the requests queued by then go to `to_abort`.
    fn execute(&mut self, msg: &Message, e: ExecuteRequest, queue: &Receiver<Message>) {
        let store = e.store_history && !e.silent;
        if store {
            self.execution_count += 1;
        }
        let count = self.execution_count;
        if !e.silent {
            self.iopub.publish(msg, "execute_input", to_content(&ExecuteInput { code: e.code.clone(), execution_count: count }));
        }
        let mut out = OutputPublisher::new(&self.iopub, msg, e.silent);
        let result = {
            let interp = &mut self.interp;
            let mut sink = |o| out.output(o);
            let mut ctx = ExecContext::new(&mut sink);
            guard(|| interp.execute(&e.code, &mut ctx)).unwrap_or_else(|| Err(panicked()))
        };
        out.flush();
        let reply = match result {
            Ok(ExecuteOk { result, page }) => {
                let text = result.as_ref().and_then(|r| r.get("text/plain")).and_then(Value::as_str).map(String::from);
                if let (Some(data), false) = (result, e.silent) {
                    let r = ExecuteResult { execution_count: count, data: with_plain(data), metadata: Map::new() };
                    self.iopub.publish(msg, "execute_result", to_content(&r));
                }
                if store {
                    self.history.push(Entry { count, code: e.code.clone(), output: text });
                }
                let payload = page.map(|p| json!({"source": "page", "data": with_plain(p), "start": 0})).into_iter().collect();
                let user_expressions = self.user_expressions(&e.user_expressions);
                ExecuteReply::Ok { execution_count: count, user_expressions, payload }
            }
            Err(err) => {
                if !e.silent {
                    self.iopub.publish(msg, "error", to_content(&err));
                }
                if store {
                    self.history.push(Entry { count, code: e.code.clone(), output: None });
                }
                ExecuteReply::Error { execution_count: count, error: err, user_expressions: Map::new(), payload: vec![] }
            }
        };
        if matches!(reply, ExecuteReply::Error { .. }) && e.stop_on_error {
            // Before the reply goes out, so that nothing the client sends after seeing it is aborted.
            self.to_abort.extend(queue.try_iter());
        }
        self.replies.reply(msg, "execute_reply", to_content(&reply));
    }

    /// Evaluates user_expressions (after a successful cell, as ipykernel does): each is run as code with its
    /// outputs discarded; its value or error goes in the reply. Always an object.
    fn user_expressions(&mut self, exprs: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, expr) in exprs {
            let code = expr.as_str().unwrap_or_default();
            let mut discard = |_| {};
            let mut ctx = ExecContext::new(&mut discard);
            let interp = &mut self.interp;
            let v = match guard(|| interp.execute(code, &mut ctx)).unwrap_or_else(|| Err(panicked())) {
                Ok(ok) => json!({"status": "ok", "data": with_plain(ok.result.unwrap_or_default()), "metadata": {}}),
                Err(err) => {
                    let mut v = to_content(&err);
                    v["status"] = json!("error");
                    v
                }
            };
            out.insert(name.clone(), v);
        }
        out
    }

    fn complete(&mut self, msg: &Message, c: CodeAt) {
        let cursor = c.cursor_pos.unwrap_or_else(|| c.code.chars().count());
        let comp = guard(|| self.interp.complete(&c.code, cursor)).unwrap_or_default();
        let (start, end) = if comp.matches.is_empty() { (cursor, cursor) } else { (comp.cursor_start, comp.cursor_end) };
        let reply = CompleteReply { status: "ok", matches: comp.matches, cursor_start: start, cursor_end: end, metadata: Map::new() };
        self.replies.reply(msg, "complete_reply", to_content(&reply));
    }

    fn inspect(&mut self, msg: &Message, c: CodeAt) {
        let cursor = c.cursor_pos.unwrap_or_else(|| c.code.chars().count());
        let found = guard(|| self.interp.inspect(&c.code, cursor, c.detail_level)).flatten();
        let reply = InspectReply { status: "ok", found: found.is_some(), data: found.unwrap_or_default(), metadata: Map::new() };
        self.replies.reply(msg, "inspect_reply", to_content(&reply));
    }

    /// tail (last n), range (lines start..stop of this session), search (glob over the whole cell, newest n,
    /// optionally unique). Sessions: only this one, numbered 1 (0 and negative numbers also mean it).
    fn history(&self, h: &HistoryRequest) -> Vec<Value> {
        let entries: Vec<&Entry> = match h.hist_access_type.as_str() {
            "tail" => {
                let n = h.n.unwrap_or(10);
                self.history.iter().skip(self.history.len().saturating_sub(n)).collect()
            }
            "range" => {
                if h.session > 1 {
                    Vec::new()
                } else {
                    let stop = h.stop.unwrap_or(i64::MAX);
                    self.history.iter().filter(|e| (e.count as i64) >= h.start && (e.count as i64) < stop).collect()
                }
            }
            "search" => {
                let mut hits: Vec<&Entry> = self.history.iter().filter(|e| glob(&h.pattern, &e.code)).collect();
                if h.unique {
                    let mut seen = std::collections::HashSet::new();
                    // Keep the newest occurrence of each cell.
                    hits = hits.into_iter().rev().filter(|e| seen.insert(e.code.as_str())).collect::<Vec<_>>().into_iter().rev().collect();
                }
                if let Some(n) = h.n {
                    hits = hits.split_off(hits.len().saturating_sub(n));
                }
                hits
            }
            _ => Vec::new(),
        };
        entries
            .into_iter()
            .map(|e| if h.output { json!([1, e.count, [e.code, e.output]]) } else { json!([1, e.count, e.code]) })
            .collect()
    }
}

/// Runs interpreter code, turning a panic into `None` (the kernel stays up; the panic message goes to the log).
fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(p) => {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            log(&format!("the interpreter panicked: {}", what.unwrap_or_default()));
            None
        }
    }
}

fn panicked() -> ErrorInfo {
    ErrorInfo {
        ename: "InternalError".into(),
        evalue: "the interpreter panicked (see the kernel log); the kernel goes on".into(),
        traceback: vec!["InternalError: the interpreter panicked; the kernel goes on".into()],
    }
}

/// Glob match: `*` any run, `?` one character, everything else literal (IPython's history search).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("set*", "set threshold 0.8"));
        assert!(glob("1?2*", "1+2+3"));
        assert!(!glob("set", "set x"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }
}
