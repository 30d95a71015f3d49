//! The Rust API of a [`Session`]: what the commands do, as typed calls, for notebooks (evcxr) and programs.
//! The commands are a thin layer over these calls (`chat` calls [`Session::chat`], `step` calls
//! [`Session::step`], ...), so there is one implementation; [`Session::run`] runs any command line and returns
//! its typed values, which display in a Rust notebook as they do in the dllm kernel ([`crate::notebook`]).
//!
//! ```
//! use dllm_repl::Session;
//!
//! let mut s = Session::open("builtin", "cpu")?;
//! s.preset("S")?;
//! s.chat("sort 3814")?;
//! let steps = s.step(3)?;
//! for r in &steps.reports {
//!     println!("step {}: Gamma {:?}, Delta {:?}", r.step, r.gamma.len(), r.delta.len());
//! }
//! s.fork("greedy")?;
//! s.set("threshold", "0.9")?;
//! s.finish()?;
//! println!("{}", s.output()?);
//! let elbo = s.likelihood("sort 3814", "1348", "gauss:4", 0)?;
//! println!("log p >= {:.3} ± {:.3}", elbo.value, elbo.stderr);
//! let table = s.run("diff main greedy")?; // any command line: typed values
//! # Ok::<(), dllm_repl::CommandError>(())
//! ```

use dllm_engine::decode::{DecodeSettings, Denoiser, StepReport};
use dllm_engine::likelihood::{Estimator, LikelihoodReport};
use dllm_engine::rl::UpdateMetrics;
use dllm_engine::{Loaded, Role};

use crate::notebook::Values;
use crate::session::{CommandError, ModelSource, Session};
use crate::value::{Canvas, Steps, Value};

impl Session {
    /// A session on `model`: `builtin` (the embedded LLaDA2.1 model), `builtin:tiny-2.2` (LLaDA2.2), a
    /// checkpoint folder, or `random:SHAPE[:SEED]`; on `device` (`cpu`, `cuda`, `cuda:N`, `auto`). Waits for the
    /// load, so an error says what was wrong with the model.
    pub fn open(model: &str, device: &str) -> Result<Session, CommandError> {
        let dir = (model != "builtin").then(|| model.into());
        let mut s = Session::new(ModelSource { dir, device: device.into(), dtype: None, quantize: None, fp8_matmul: None });
        s.model()?;
        Ok(s)
    }

    /// Runs command lines as a script does (one command a line, `;` chains, `#` comments) and returns all
    /// their values; the first failing command is the error (what ran before it stays done).
    pub fn run(&mut self, script: &str) -> Result<Values, CommandError> {
        let mut out = Vec::new();
        for item in crate::script::script_items(script) {
            out.extend(self.execute(&item.command)?);
        }
        Ok(Values(out))
    }

    /// The resident model and its tokenizer (for a decoder or a likelihood of your own).
    pub fn loaded(&mut self) -> Result<&Loaded, CommandError> {
        self.model()
    }

    /// Starts a fresh decode of `text` through the model's chat template on the current branch, with the
    /// session's settings; returns the canvas.
    pub fn chat(&mut self, text: &str) -> Result<Canvas, CommandError> {
        let tok = &self.model()?.tokenizer;
        let ids = tok.encode(&tok.chat(&[(Role::Human, text)], true)?)?;
        self.prompt_ids(&ids)
    }

    /// Starts a fresh decode of `text` as it is (no template).
    pub fn prompt(&mut self, text: &str) -> Result<Canvas, CommandError> {
        let ids = self.model()?.tokenizer.encode(text)?;
        self.prompt_ids(&ids)
    }

    /// Starts a fresh decode of the token ids `ids`.
    pub fn prompt_ids(&mut self, ids: &[i64]) -> Result<Canvas, CommandError> {
        self.start_decode(ids.to_vec())?;
        self.canvas()
    }

    /// Up to `n` forward passes of the current branch (fewer when the decode ends): the steps as a table, with
    /// every [`StepReport`] (Gamma_t, Delta_t, and a LLaDA2.2 step's Levenshtein facts) in `reports`.
    ///
    /// ```
    /// let mut s = dllm_repl::Session::open("builtin:tiny-2.2", "cpu")?;
    /// s.chat("rle oooorxmm")?;
    /// let steps = s.step(4)?;
    /// for r in &steps.reports {
    ///     let written: Vec<String> = r.gamma.iter().map(|u| format!("{}:{}", u.pos, u.text)).collect();
    ///     let lev = r.lev.as_ref().map(|l| format!(", deleted {:?}, split {:?}", l.deleted, l.split)).unwrap_or_default();
    ///     println!("step {}: Gamma {written:?}, |Delta| {}{lev}", r.step, r.delta.len());
    /// }
    /// assert!(steps.reports.iter().all(|r| r.lev.is_some()), "a LLaDA2.2 model decodes with Levenshtein steps");
    /// # Ok::<(), dllm_repl::CommandError>(())
    /// ```
    pub fn step(&mut self, n: usize) -> Result<Steps, CommandError> {
        let (reports, _) = self.advance(n, false, &crate::parse::Args::default())?;
        let edit_ids = self.ready()?.model.edit_tokens();
        Ok(crate::commands::steps(&reports, edit_ids))
    }

    /// Steps the current branch to the end; returns the reports of the steps it ran.
    pub fn finish(&mut self) -> Result<Vec<StepReport>, CommandError> {
        Ok(self.advance(usize::MAX, false, &crate::parse::Args::default())?.0)
    }

    /// Every step of the current branch so far, with the tokens' texts filled in.
    pub fn reports(&mut self) -> Result<Vec<StepReport>, CommandError> {
        let mut reports: Vec<StepReport> = self.decoder()?.reports().cloned().collect();
        let tok = &self.model()?.tokenizer;
        reports.iter_mut().for_each(|r| r.annotate(tok));
        Ok(reports)
    }

    /// The current branch's decoded text (through the first EOS).
    pub fn output(&mut self) -> Result<String, CommandError> {
        let ids = self.decoder()?.output();
        Ok(self.model()?.tokenizer.decode(&ids))
    }

    /// The current branch's canvas: prompt, tokens, masks and the last step's writes (displays as the kernel's).
    pub fn canvas(&mut self) -> Result<Canvas, CommandError> {
        match self.canvas_value("canvas")? {
            Value::Canvas(c) => Ok(c),
            _ => unreachable!("canvas_value makes a canvas"),
        }
    }

    /// The settings of new decodes (the current branch has its own copy: `decoder()?.settings`).
    pub fn settings(&self) -> &DecodeSettings {
        &self.settings
    }

    /// Changes a decoding setting for the current branch (from its next step) and for later decodes, as `set`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), CommandError> {
        crate::commands::set_setting(self, name, value)
    }

    /// Applies a decoding preset, as `preset NAME`.
    pub fn preset(&mut self, name: &str) -> Result<(), CommandError> {
        crate::commands::apply_preset(self, name)
    }

    /// Goes back to the state before forward `step` on the current branch.
    pub fn rewind(&mut self, step: i64) -> Result<(), CommandError> {
        Ok(self.decoder_mut()?.rewind(step)?)
    }

    /// Copies the current branch to a new branch `name` and switches to it.
    pub fn fork(&mut self, name: &str) -> Result<(), CommandError> {
        if self.branches.contains_key(name) {
            return Err(CommandError::Failed(format!("branch `{name}` exists; `switch {name}` or pick another name")));
        }
        let copy = self.decoder()?.fork();
        self.branches.insert(name.to_string(), copy);
        self.current = name.to_string();
        Ok(())
    }

    /// Switches to branch `name`.
    pub fn switch(&mut self, name: &str) -> Result<(), CommandError> {
        if !self.branches.contains_key(name) {
            let known: Vec<&str> = self.branches.keys().map(String::as_str).collect();
            return Err(CommandError::Failed(format!("no branch `{name}`; branches: {}", known.join(", "))));
        }
        self.current = name.into();
        Ok(())
    }

    /// The current branch's name.
    pub fn current_branch(&self) -> &str {
        &self.current
    }

    /// An ELBO estimate of log p(`response` | `prompt`) as `likelihood ESTIMATOR -- PROMPT => RESPONSE` computes
    /// it: the prompt through the chat template, the response with an EOS, the session's block length.
    ///
    /// ```
    /// let mut s = dllm_repl::Session::open("builtin", "cpu")?;
    /// let right = s.likelihood("sort 3814", "1348", "gauss:4", 0)?;
    /// let wrong = s.likelihood("sort 3814", "8431", "gauss:4", 0)?;
    /// assert!(right.value > wrong.value + 3.0);
    /// assert!(s.likelihood("sort 3814", "1348", "simpson:4", 0).is_err(), "not an estimator of the registry");
    /// # Ok::<(), dllm_repl::CommandError>(())
    /// ```
    pub fn likelihood(&mut self, prompt: &str, response: &str, estimator: &str, seed: u64) -> Result<LikelihoodReport, CommandError> {
        let est = Estimator::parse(estimator)?;
        let block = self.settings.block_length;
        let l = self.model()?;
        let (p, r) = crate::likelihood_cmd::pair_ids(&l.tokenizer, prompt, response)?;
        Ok(dllm_engine::likelihood::likelihood(&l.model, &p, &r, l.tokenizer.mask_id, l.tokenizer.eos_id, block, &est, seed)?)
    }

    /// `n` EBPO updates of the resident model with the session's RL settings (`rl set`), as `rl update N`;
    /// the metrics of each. A failing first update changes nothing.
    ///
    /// ```
    /// let mut s = dllm_repl::Session::open("builtin", "cpu")?;
    /// s.rl_set("tasks", "order")?;
    /// s.rl_set("reward", "similarity")?;
    /// s.rl_set("batch", "2")?;
    /// s.rl_set("group", "2")?;
    /// let m = s.rl_update(1)?;
    /// assert!(m[0].reward_mean >= 0.0 && m[0].reward_mean <= 1.0);
    /// # Ok::<(), dllm_repl::CommandError>(())
    /// ```
    pub fn rl_update(&mut self, n: usize) -> Result<Vec<UpdateMetrics>, CommandError> {
        Ok(crate::rl_cmd::updates(self, n, &mut |_| ())?.0)
    }

    /// Changes an RL setting, as `rl set NAME VALUE`.
    pub fn rl_set(&mut self, name: &str, value: &str) -> Result<(), CommandError> {
        crate::rl_cmd::set(self, name, value)
    }
}
