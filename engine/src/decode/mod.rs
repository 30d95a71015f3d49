//! Block-diffusion decoding with token editing, as a stepper (see `stepper.rs`), its settings and presets,
//! the sampler with the decoder's own generator, and breakpoint events.

mod batch;
mod events;
mod levenshtein;
mod sampler;
mod settings;
mod stepper;

pub use batch::BatchDecoder;
pub use events::Event;
pub use sampler::Rng;
pub use levenshtein::{apply_edits, Applied, EditTokens, LevStep, LoopMemory, Redraw};
pub use settings::{find_preset, preset_names, Preset, PRESET_BASE, AntiLoop, CapAction, DecodeSettings, EditOps, EditTiming, Editing, FinalForbid, FinalTrigger, PostCounter, MAX_LENGTH, PRESETS, SETTINGS};
pub use stepper::{Cursor, Decoder, DecoderState, Denoiser, Edit, Entry, EntryKind, Stats, StepReport, Unmask, WriteKind};
