//! serde types for the message contents this kernel reads and writes (messaging spec 5.3).
//!
//! Own types rather than a crate such as `jupyter-protocol`: the kernel handles about fifteen message types,
//! each a handful of fields, and owning them keeps the dependency tree to `serde_json` (that crate brings an
//! async runtime's worth of dependencies and its own transport assumptions), lets the defaults follow the spec
//! exactly where clients omit fields (`store_history` true, `stop_on_error` true), and keeps one file to read
//! when checking a field name against the spec.
//!
//! Requests become one `Request` enum, so dispatch is a `match` on a type, not string comparisons.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A MIME bundle: mimetype -> data.
pub type MimeBundle = Map<String, Value>;

fn yes() -> bool {
    true
}

/// (`allow_stdin` is not read: dllm commands never ask for input.)
#[derive(Debug, Clone, Deserialize)]
pub struct ExecuteRequest {
    pub code: String,
    #[serde(default)]
    pub silent: bool,
    #[serde(default = "yes")]
    pub store_history: bool,
    #[serde(default)]
    pub user_expressions: Map<String, Value>,
    #[serde(default = "yes")]
    pub stop_on_error: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeAt {
    pub code: String,
    /// In Unicode code points.
    #[serde(default)]
    pub cursor_pos: Option<usize>,
    #[serde(default)]
    pub detail_level: u8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IsCompleteRequest {
    pub code: String,
}

/// (`raw` is not read: cells are stored as typed, there is no transformed form.)
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub output: bool,
    #[serde(default)]
    pub hist_access_type: String,
    #[serde(default)]
    pub session: i64,
    #[serde(default)]
    pub start: i64,
    #[serde(default)]
    pub stop: Option<i64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub pattern: String,
    #[serde(default)]
    pub unique: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommOpen {
    pub comm_id: String,
    #[serde(default)]
    pub target_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ShutdownRequest {
    #[serde(default)]
    pub restart: bool,
}

/// Every request the kernel understands, decoded from (msg_type, content).
#[derive(Debug, Clone)]
pub enum Request {
    KernelInfo,
    Execute(ExecuteRequest),
    Complete(CodeAt),
    Inspect(CodeAt),
    IsComplete(IsCompleteRequest),
    History(HistoryRequest),
    CommInfo,
    CommOpen(CommOpen),
    /// comm_msg / comm_close for comms we never opened: nothing to do.
    CommIgnored,
    Interrupt,
    Shutdown(ShutdownRequest),
    /// A request type we do not implement (debug_request, input_reply on the wrong socket, ...).
    Unknown(String),
}

impl Request {
    pub fn parse(msg_type: &str, content: &Value) -> Result<Request, serde_json::Error> {
        fn de<T: for<'de> Deserialize<'de>>(c: &Value) -> Result<T, serde_json::Error> {
            T::deserialize(c)
        }
        Ok(match msg_type {
            "kernel_info_request" => Request::KernelInfo,
            "execute_request" => Request::Execute(de(content)?),
            "complete_request" => Request::Complete(de(content)?),
            "inspect_request" => Request::Inspect(de(content)?),
            "is_complete_request" => Request::IsComplete(de(content)?),
            "history_request" => Request::History(de(content)?),
            "comm_info_request" => Request::CommInfo,
            "comm_open" => Request::CommOpen(de(content)?),
            "comm_msg" | "comm_close" => Request::CommIgnored,
            "interrupt_request" => Request::Interrupt,
            "shutdown_request" => Request::Shutdown(de(content)?),
            other => Request::Unknown(other.to_string()),
        })
    }
}

/// The error reply to a request the kernel cannot serve (content that does not fit the message type, or a
/// type it does not know): `(reply type, content)`, or `None` when the message is not a request (nobody
/// waits for a reply to it). The client gets an answer instead of waiting forever.
pub fn bad_request(msg_type: &str, why: &str, execution_count: u64) -> Option<(String, Value)> {
    let stem = msg_type.strip_suffix("_request")?;
    let mut content = serde_json::json!({
        "status": "error",
        "ename": "BadRequest",
        "evalue": format!("{msg_type}: {why}"),
        "traceback": [format!("BadRequest: {msg_type}: {why}")],
    });
    if msg_type == "execute_request" {
        content["execution_count"] = execution_count.into();
    }
    Some((format!("{stem}_reply"), content))
}

// ---------------------------------------------------------------------------------------------------------
// Replies (shell, control)

#[derive(Debug, Clone, Serialize)]
pub struct LanguageInfo {
    pub name: String,
    pub version: String,
    pub mimetype: String,
    pub file_extension: String,
    pub pygments_lexer: String,
    pub codemirror_mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HelpLink {
    pub text: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfoReply {
    pub status: &'static str,
    pub protocol_version: String,
    pub implementation: String,
    pub implementation_version: String,
    pub language_info: LanguageInfo,
    pub banner: String,
    pub help_links: Vec<HelpLink>,
    pub debugger: bool,
}

/// ename / evalue / traceback: the error of a cell, in an `error` message and the reply alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ExecuteReply {
    Ok {
        execution_count: u64,
        user_expressions: Map<String, Value>,
        payload: Vec<Value>,
    },
    Error {
        execution_count: u64,
        #[serde(flatten)]
        error: ErrorInfo,
        user_expressions: Map<String, Value>,
        payload: Vec<Value>,
    },
    Aborted {
        execution_count: u64,
        user_expressions: Map<String, Value>,
        payload: Vec<Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompleteReply {
    pub status: &'static str,
    pub matches: Vec<String>,
    pub cursor_start: usize,
    pub cursor_end: usize,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReply {
    pub status: &'static str,
    pub found: bool,
    pub data: MimeBundle,
    pub metadata: Map<String, Value>,
}

/// is_complete_reply: `status` is complete, incomplete (with `indent`), invalid or unknown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum IsComplete {
    Complete,
    Incomplete { indent: String },
    Invalid,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryReply {
    pub status: &'static str,
    /// `[session, line, input]`, or `[session, line, [input, output]]` when output was asked for.
    pub history: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommInfoReply {
    pub status: &'static str,
    pub comms: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShutdownReply {
    pub status: &'static str,
    pub restart: bool,
}

// ---------------------------------------------------------------------------------------------------------
// IOPub

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionState {
    Starting,
    Busy,
    Idle,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub execution_state: ExecutionState,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecuteInput {
    pub code: String,
    pub execution_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecuteResult {
    pub execution_count: u64,
    pub data: MimeBundle,
    pub metadata: Map<String, Value>,
}

/// display_data and update_display_data (the latter always with a display_id).
#[derive(Debug, Clone, Serialize)]
pub struct DisplayData {
    pub data: MimeBundle,
    pub metadata: Map<String, Value>,
    pub transient: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    pub name: StreamName,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClearOutput {
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommClose {
    pub comm_id: String,
    pub data: Map<String, Value>,
}

/// Serialises a content struct (these types only hold strings, numbers and maps: cannot fail).
pub fn to_content<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or_else(|_| Value::Object(Map::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn execute_request_defaults_follow_the_spec() {
        let Request::Execute(e) = Request::parse("execute_request", &json!({"code": "step"})).unwrap() else { panic!() };
        assert!(e.store_history && e.stop_on_error && !e.silent);
        assert!(e.user_expressions.is_empty());
        assert!(Request::parse("execute_request", &json!({})).is_err());
        assert!(matches!(Request::parse("debug_request", &json!({})).unwrap(), Request::Unknown(_)));
    }

    #[test]
    fn replies_serialise_with_spec_names() {
        let r = to_content(&ExecuteReply::Error {
            execution_count: 3,
            error: ErrorInfo { ename: "E".into(), evalue: "v".into(), traceback: vec!["t".into()] },
            user_expressions: Map::new(),
            payload: vec![],
        });
        assert_eq!(r, json!({"status": "error", "execution_count": 3, "ename": "E", "evalue": "v", "traceback": ["t"], "user_expressions": {}, "payload": []}));
        assert_eq!(to_content(&IsComplete::Incomplete { indent: "".into() }), json!({"status": "incomplete", "indent": ""}));
        assert_eq!(to_content(&Status { execution_state: ExecutionState::Idle }), json!({"execution_state": "idle"}));
    }
}
