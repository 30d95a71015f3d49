//! Typed command results. Commands return these; `render` turns each into a MIME bundle (text with ANSI,
//! HTML, JSON, SVG) in one place, so the terminal and the Jupyter kernel show the same things.

use serde::Serialize;

/// One command's result: a list of values shown in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    /// A line of information ("prompt set: 12 tokens").
    Message { text: String },
    /// A titled table.
    Table(Table),
    /// Decoder steps: shown as their table, serialised as that table (type `table`) plus the complete
    /// reports (`reports`, Levenshtein facts under `lev`), so JSON readers get what the compact cells abbreviate.
    #[serde(rename = "table")]
    Steps(Steps),
    /// The decoder's canvas with each token's status.
    Canvas(Canvas),
    /// A line chart over steps or positions.
    Chart(Chart),
    /// Structured data without a special view (rendered as pretty JSON in text form).
    Data { title: String, data: serde_json::Value },
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Steps {
    #[serde(flatten)]
    pub table: Table,
    pub reports: Vec<dllm_engine::decode::StepReport>,
}

/// A table cell; numbers keep their type in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Empty,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(v)
    }
}
impl From<usize> for Cell {
    fn from(v: usize) -> Cell {
        Cell::Int(v as i64)
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Cell {
        Cell::Float(v)
    }
}
impl From<f32> for Cell {
    fn from(v: f32) -> Cell {
        Cell::Float(v as f64)
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Cell {
        Cell::Bool(v)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map(Into::into).unwrap_or(Cell::Empty)
    }
}

/// What a canvas position holds, for colouring.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CellKind {
    Prompt,
    Mask,
    /// A decoded token that did not change in the last step.
    Token,
    /// Unmasked by the last step (Gamma).
    Unmasked,
    /// Edited by the last step (Delta), with the replaced token's text.
    Edited { old: String },
    /// A mask the last step's SPLIT opened (LLaDA2.2 Levenshtein step).
    Inserted,
    /// A mask the last Levenshtein step appended at the block's tail (after deletions shortened it).
    Padded,
}

impl CellKind {
    /// Whether the position holds a mask (plain, inserted or padded).
    pub fn is_mask(&self) -> bool {
        matches!(self, CellKind::Mask | CellKind::Inserted | CellKind::Padded)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CanvasCell {
    pub pos: i64,
    pub id: i64,
    pub text: String,
    #[serde(flatten)]
    pub kind: CellKind,
    /// Probability of this token under the last forward, when it covered the position.
    pub p: Option<f32>,
    /// Top candidates under the last forward (text, p), for hover text.
    pub top: Vec<(String, f32)>,
    /// The position this token held at the start of the last step, when a Levenshtein edit moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<i64>,
}

/// Why a token left the canvas in the last (Levenshtein) step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovedWhy {
    /// DELETE removed the slot; the tokens after it shifted left.
    Deleted,
    /// SPLIT pushed it past the block's end.
    Truncated,
}

/// A token the last step removed, shown struck out where it stood.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Removed {
    /// Its position at the start of the step.
    pub pos: i64,
    pub id: i64,
    pub text: String,
    /// The slot held a mask (DELETE may remove a mask too).
    pub mask: bool,
    pub why: RemovedWhy,
    /// The position (after the step) it is drawn before; for truncated tokens the block's end.
    pub before: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Canvas {
    pub title: String,
    pub block_length: i64,
    pub current_block: i64,
    pub cells: Vec<CanvasCell>,
    /// Positions with p below this are shown as low-confidence.
    pub low_confidence: f32,
    /// Tokens the last Levenshtein step deleted or cut off the block's tail (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed>,
    /// Fold a long canvas: only the current block, its neighbours and blocks the last step changed are shown
    /// (the rest collapsed; HTML keeps them a click away). The JSON always has every cell.
    #[serde(default)]
    pub fold: bool,
}

/// A canvas of more blocks than this is folded (when its `fold` is set).
pub const FOLD_OVER: i64 = 8;

impl Canvas {
    /// Whether block `b` is shown unfolded.
    pub fn block_shown(&self, b: i64) -> bool {
        let bl = self.block_length.max(1);
        let blocks = self.cells.iter().map(|c| c.pos.div_euclid(bl)).max().unwrap_or(0) + 1;
        if !self.fold || blocks <= FOLD_OVER || (b - self.current_block).abs() <= 1 {
            return true;
        }
        let changed = |c: &CanvasCell| !matches!(c.kind, CellKind::Prompt | CellKind::Token | CellKind::Mask) || c.moved_from.is_some();
        self.cells.iter().any(|c| c.pos.div_euclid(bl) == b && changed(c)) || self.removed.iter().any(|r| r.pos.div_euclid(bl) == b)
    }

    /// From the block at cell `i` (sorted cells), the index past the run of folded blocks and the run's last block.
    pub(crate) fn folded_run(&self, cells: &[&CanvasCell], mut i: usize) -> (usize, i64) {
        let bl = self.block_length.max(1);
        let mut last = cells[i].pos.div_euclid(bl);
        while i < cells.len() && !self.block_shown(cells[i].pos.div_euclid(bl)) {
            last = cells[i].pos.div_euclid(bl);
            i += 1;
        }
        (i, last)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}
