//! dllm-repl: the `Session` that keeps a model resident and drives the decoder, its ONE command table
//! (`commands`), typed results (`value`) rendered in one place (`render`), and the terminal front-end.

mod api;
mod commands;
mod fidelity;
mod finetune;
pub mod grammar;
mod likelihood_cmd;
pub mod notebook;
mod parse;
mod persist;
mod research;
pub mod reward_command;
mod rl_cmd;
pub mod complete;
pub mod script;
pub mod render;
mod session;
pub mod terminal;
pub mod value;

pub use commands::{markdown as commands_markdown, Command, BREAK_EVENTS};
pub use session::{CmdResult, CommandError, ModelSource, Session};
/// The engine (model, decoder, likelihoods, RL, tasks), for code of your own beside the session.
pub use dllm_engine as engine;
