//! The interpreter role (xeus's split: transport / protocol core / interpreter). The protocol core in
//! `server` and `worker` drives an `Interpreter`; an interpreter never sees a socket or a message header.
//! `session_interp` implements it over `dllm_repl::Session`; `mock` is a tiny one for protocol tests.

use std::sync::Arc;

use serde_json::{Map, Value};

pub use crate::messages::{ErrorInfo, HelpLink, IsComplete, LanguageInfo, MimeBundle, StreamName};

/// What kernel_info_reply says about the interpreter (the core adds status and protocol_version).
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub implementation: String,
    pub implementation_version: String,
    pub language_info: LanguageInfo,
    pub banner: String,
    pub help_links: Vec<HelpLink>,
}

/// Completion matches and the range they replace, in Unicode code points of the request's code.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub matches: Vec<String>,
    pub cursor_start: usize,
    pub cursor_end: usize,
}

/// What a successful cell gives: its value (an `execute_result`; `None` for none) and pager payloads.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOk {
    pub result: Option<MimeBundle>,
    /// Text for the pager (a `payload` entry with source "page"), e.g. a command's help for `step?`.
    pub page: Option<MimeBundle>,
}

/// Stops the running cell at its next safe point. Called from the control thread (interrupt_request) and
/// from the SIGINT handler, while `execute` runs on the worker thread.
pub type Interrupter = Arc<dyn Fn() + Send + Sync>;

/// One output of a running cell, in the order the interpreter produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// display_data; with a `display_id` it can be replaced later.
    Display { data: MimeBundle, display_id: Option<String> },
    /// update_display_data for an earlier display. The core coalesces these (at most ~10 per second per id).
    Update { data: MimeBundle, display_id: String },
    Stream { name: StreamName, text: String },
    ClearOutput { wait: bool },
}

/// Where a running cell sends its outputs. The core publishes them on IOPub with the request as parent.
pub struct ExecContext<'a> {
    sink: &'a mut dyn FnMut(Output),
}

impl<'a> ExecContext<'a> {
    pub fn new(sink: &'a mut dyn FnMut(Output)) -> ExecContext<'a> {
        ExecContext { sink }
    }

    pub fn display(&mut self, data: MimeBundle) {
        (self.sink)(Output::Display { data, display_id: None })
    }

    /// A display that `update_display` can replace later.
    pub fn display_with_id(&mut self, data: MimeBundle, display_id: &str) {
        (self.sink)(Output::Display { data, display_id: Some(display_id.into()) })
    }

    pub fn update_display(&mut self, data: MimeBundle, display_id: &str) {
        (self.sink)(Output::Update { data, display_id: display_id.into() })
    }

    pub fn stream(&mut self, name: StreamName, text: &str) {
        (self.sink)(Output::Stream { name, text: text.into() })
    }

    pub fn clear_output(&mut self, wait: bool) {
        (self.sink)(Output::ClearOutput { wait })
    }
}

pub trait Interpreter: Send + 'static {
    fn kernel_info(&self) -> KernelInfo;

    /// Runs a cell. Outputs go through `ctx`; an error ends the cell and becomes the ONE `error` output.
    fn execute(&mut self, code: &str, ctx: &mut ExecContext<'_>) -> Result<ExecuteOk, ErrorInfo>;

    /// `cursor_pos` in code points.
    fn complete(&mut self, code: &str, cursor_pos: usize) -> Completion;

    /// Help for the name at `cursor_pos`, if there is one.
    fn inspect(&mut self, code: &str, cursor_pos: usize, detail_level: u8) -> Option<MimeBundle>;

    fn is_complete(&mut self, code: &str) -> IsComplete;

    /// How to stop a running `execute` from another thread (it must keep the interpreter's state).
    fn interrupter(&self) -> Interrupter;
}

/// A bundle with just text/plain.
pub fn plain(text: impl Into<String>) -> MimeBundle {
    let mut m = Map::new();
    m.insert("text/plain".into(), Value::String(text.into()));
    m
}

/// Byte offset of code point `cp` in `s` (clamped to the end).
pub fn byte_offset(s: &str, cp: usize) -> usize {
    s.char_indices().nth(cp).map(|(i, _)| i).unwrap_or(s.len())
}

/// Code points before byte offset `byte` of `s`.
pub fn code_points(s: &str, byte: usize) -> usize {
    s.char_indices().take_while(|(i, _)| *i < byte).count()
}
