//! Safetensors checkpoints in the official layout: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, with the official tensor names.
//!
//! Reading: every file is memory-mapped; a tensor is copied once from the mapping into its placed tensor
//! (converted to the run dtype, moved to the run device), then its pages are released with
//! `madvise(MADV_DONTNEED)`, so host memory never holds a second copy of the weights (measured in
//! docs/performance.md). Routed experts are accepted per expert (`experts.{e}.gate_proj.weight`, released
//! checkpoints) or fused (`experts.gate_proj` as `[E, I, H]`, dFactory training checkpoints).
//!
//! Writing: [`save`] writes the per-expert (or fused) layout, atomically (temp file + rename), optionally sharded.
//!
//! Quantized routed experts ([`crate::quant`]) are stored as values and scales: per expert
//! `experts.{e}.{proj}.weight` (I8 / F8_E4M3) with `experts.{e}.{proj}.weight_scale` (F32), fused
//! `experts.{proj}` with `experts.{proj}_scale`; config.json's `quantization_config` names the format. A
//! full-precision checkpoint loaded with a quantization is quantized one expert at a time while it is read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use crate::device::DType;
use crate::error::{Error, Result};
use crate::quant::{QTensor, Quantization};
use crate::weights::{Role, WeightSource};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    data: Data,
}

/// A shard's bytes: a file mapping, or bytes compiled into the binary (the embedded model).
enum Data {
    Mapped(Mmap),
    Static(&'static [u8]),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m,
            Data::Static(b) => b,
        }
    }
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    /// Byte range in the file (absolute).
    start: usize,
    end: usize,
}

/// An opened checkpoint: headers parsed, data mapped, nothing copied yet.
pub struct Checkpoint {
    /// The file named in errors about missing tensors: the single file or the index.
    origin: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    used: HashSet<String>,
    device: Device,
    dtype: DType,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` if present, else `dir/model.safetensors`.
    pub fn open(dir: &Path, device: Device, dtype: DType) -> Result<Checkpoint> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (origin, files, weight_map) = if index.exists() {
            let (files, map) = read_index(&index)?;
            (index, files, Some(map))
        } else if single.exists() {
            (single.clone(), vec![single], None)
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder")),
            ));
        };
        let mut ckpt = Checkpoint { origin, shards: Vec::new(), entries: HashMap::new(), used: HashSet::new(), device, dtype };
        for file in files {
            ckpt.add_shard(&file)?;
        }
        if let Some(map) = weight_map {
            let mut unlisted: Vec<&String> = ckpt.entries.keys().filter(|n| !map.contains_key(*n)).collect();
            unlisted.sort();
            if let Some(name) = unlisted.first() {
                return Err(Error::Index {
                    file: ckpt.origin.clone(),
                    message: format!("{} holds `{name}`, which weight_map does not list", ckpt.file_of(name).display()),
                });
            }
            for (name, file) in &map {
                match ckpt.entries.get(name) {
                    None => {
                        return Err(Error::Index {
                            file: ckpt.origin.clone(),
                            message: format!("weight_map lists `{name}` in {file}, but that file has no such tensor"),
                        })
                    }
                    Some(e) if ckpt.shards[e.shard].path.file_name().and_then(|f| f.to_str()) != Some(file) => {
                        return Err(Error::Index {
                            file: ckpt.origin.clone(),
                            message: format!("weight_map puts `{name}` in {file}, but it is in {}", ckpt.shards[e.shard].path.display()),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(ckpt)
    }

    /// A single-file checkpoint held in memory for the whole run (`bytes` must be 8-byte aligned, as a mapped
    /// file is; safetensors keeps every tensor's offset a multiple of 8); `name` stands for it in errors.
    pub fn from_static(name: &Path, bytes: &'static [u8], device: Device, dtype: DType) -> Result<Checkpoint> {
        if bytes.as_ptr() as usize % 8 != 0 {
            return Err(Error::CorruptFile { file: name.to_path_buf(), message: "in-memory checkpoint is not 8-byte aligned".into() });
        }
        let mut ckpt =
            Checkpoint { origin: name.to_path_buf(), shards: Vec::new(), entries: HashMap::new(), used: HashSet::new(), device, dtype };
        ckpt.add_data(name, Data::Static(bytes))?;
        Ok(ckpt)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and private; a checkpoint modified on disk while loading is the
        // user's race, as with every mmap-based loader (safetensors, candle, PyTorch).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        self.add_data(path, Data::Mapped(mmap))
    }

    fn add_data(&mut self, path: &Path, data: Data) -> Result<()> {
        let bytes = data.bytes();
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::CorruptFile { file: path.to_path_buf(), message: describe(&e, bytes.len()) })?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in meta.tensors() {
            if let Some(prev) = self.entries.get(&name) {
                return Err(Error::Index {
                    file: path.to_path_buf(),
                    message: format!("tensor `{name}` also appears in {}", self.shards[prev.shard].path.display()),
                });
            }
            let entry = Entry {
                shard,
                dtype: info.dtype,
                shape: info.shape.iter().map(|&d| d as i64).collect(),
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            };
            self.entries.insert(name, entry);
        }
        self.shards.push(Shard { path: path.to_path_buf(), data });
        Ok(())
    }

    /// Names of all tensors in the checkpoint, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Total bytes of tensor data on disk.
    pub fn data_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.entries.get(name) {
            Some(e) => self.shards[e.shard].path.clone(),
            None => self.origin.clone(),
        }
    }

    /// Whether the routed experts' `proj` is stored fused (`{prefix}.{proj}`) rather than per expert
    /// (`{prefix}.{e}.{proj}.weight`); an error when neither or both are there.
    fn fused_layout(&self, prefix: &str, proj: &str, shape: [i64; 3]) -> Result<bool> {
        let fused = format!("{prefix}.{proj}");
        let first = format!("{prefix}.0.{proj}.weight");
        match (self.entries.contains_key(&fused), self.entries.contains_key(&first)) {
            (true, true) => Err(Error::Index {
                file: self.file_of(&first),
                message: format!("both the fused `{fused}` and the per-expert `{first}` are present; keep one layout"),
            }),
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            (false, false) => Err(Error::MissingTensor {
                file: self.origin.clone(),
                tensor: format!("{first} (per expert, shape {:?}) or the fused `{fused}` (shape {shape:?})", &shape[1..]),
                shape: None,
            }),
        }
    }

    /// Copies tensor `name` out of the mapping into a new placed tensor of `kind`.
    fn load(&mut self, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let out = Tensor::f_empty(shape, (kind, self.device))?;
        self.load_into(name, &out)?;
        Ok(out)
    }

    /// Checks tensor `name` against `dst`'s shape and copies it into `dst`, converting dtype and device on the
    /// way. The source is a view of the mapped bytes, so no host temporary is allocated (temporaries
    /// fragment the heap: per-expert loading kept 1.8x the checkpoint resident before this).
    fn load_into(&mut self, name: &str, dst: &Tensor) -> Result<()> {
        self.load_slice_into(name, None, dst)
    }

    /// [`Checkpoint::load_into`], or with `Some(i)` entry `i` of the tensor's leading dimension (one expert of
    /// a fused tensor). Quantized values (I8, F8_E4M3) are copied only into a tensor of their own type, and a
    /// quantized destination takes only those: a float weight is never silently rounded to int8, or the reverse.
    fn load_slice_into(&mut self, name: &str, index: Option<i64>, dst: &Tensor) -> Result<()> {
        let shape = dst.size();
        let Some(e) = self.entries.get(name) else {
            return Err(Error::MissingTensor { file: self.origin.clone(), tensor: name.into(), shape: Some(shape) });
        };
        let file = &self.shards[e.shard].path;
        let (start, end) = match index {
            None if e.shape == shape => (e.start, e.end),
            Some(i) if e.shape.len() == shape.len() + 1 && e.shape[1..] == shape[..] && (0..e.shape[0]).contains(&i) => {
                let per = (e.end - e.start) / e.shape[0] as usize;
                (e.start + i as usize * per, e.start + (i as usize + 1) * per)
            }
            _ => {
                let expected = match index {
                    Some(_) => [&[e.shape.first().copied().unwrap_or(0)][..], &shape].concat(),
                    None => shape,
                };
                return Err(Error::ShapeMismatch { file: file.clone(), tensor: name.into(), expected, found: e.shape.clone() });
            }
        };
        let disk_kind = match e.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::I8 => Kind::Int8,
            Dtype::F8_E4M3 => Kind::Float8e4m3fn,
            other => return Err(Error::UnsupportedDtype { file: file.clone(), tensor: name.into(), dtype: format!("{other:?}") }),
        };
        let quantized = |k: Kind| matches!(k, Kind::Int8 | Kind::Float8e4m3fn);
        if (quantized(disk_kind) || quantized(dst.kind())) && disk_kind != dst.kind() {
            return Err(Error::Index {
                file: file.clone(),
                message: format!(
                    "tensor `{name}` is {:?} where the model holds {:?}: does config.json's quantization_config match the weights?",
                    e.dtype,
                    dst.kind()
                ),
            });
        }
        let data = &self.shards[e.shard].data;
        let bytes = &data.bytes()[start..end];
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        {
            // SAFETY: `bytes` holds exactly numel * element-size bytes (safetensors checked the offsets against
            // the dtype and shape), the view is read-only and dropped before the mapping can go away.
            let view = unsafe { Tensor::from_blob(bytes.as_ptr(), &shape, &strides, disk_kind, Device::Cpu) };
            let mut dst = dst.shallow_clone();
            tch::no_grad(|| dst.f_copy_(&view))?;
        }
        // SAFETY: the mapping is private and read-only, and nothing borrows these pages any more: DONTNEED
        // only drops them from this process (a later read would fault them back in from the file).
        if let Data::Mapped(mmap) = data {
            let _ = unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
        }
        self.used.insert(name.to_string());
        Ok(())
    }
}

impl WeightSource for Checkpoint {
    fn tensor(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor> {
        let kind = role.kind(self.dtype);
        self.load(name, shape, kind)
    }

    fn experts(&mut self, prefix: &str, proj: &str, shape: [i64; 3]) -> Result<Tensor> {
        let kind = self.dtype.kind();
        if self.fused_layout(prefix, proj, shape)? {
            return self.load(&format!("{prefix}.{proj}"), &shape, kind);
        }
        let out = Tensor::f_empty(shape, (kind, self.device))?;
        for e in 0..shape[0] {
            self.load_into(&format!("{prefix}.{e}.{proj}.weight"), &out.get(e))?;
        }
        Ok(out)
    }

    /// Stored quantized (values and `weight_scale`s, [`crate::quant`]): read as they are. Stored in full:
    /// read and quantized one expert at a time, so the peak holds one expert in full beside the quantized
    /// tensors.
    fn experts_quantized(&mut self, prefix: &str, proj: &str, shape: [i64; 3], format: Quantization) -> Result<QTensor> {
        let fused = self.fused_layout(prefix, proj, shape)?;
        let [n, rows, cols] = shape;
        let [sr, sc] = format.scale_shape(rows, cols);
        let data = Tensor::f_empty(shape, (format.kind(), self.device))?;
        let scale = Tensor::f_empty([n, sr, sc], (Kind::Float, self.device))?;
        let (values, scales) = (format!("{prefix}.{proj}"), format!("{prefix}.{proj}_scale"));
        let stored = if fused { self.entries.contains_key(&scales) } else { self.entries.contains_key(&format!("{prefix}.0.{proj}.weight_scale")) };
        match (stored, fused) {
            (true, true) => {
                self.load_into(&values, &data)?;
                self.load_into(&scales, &scale)?;
            }
            (true, false) => {
                for e in 0..n {
                    self.load_into(&format!("{prefix}.{e}.{proj}.weight"), &data.get(e))?;
                    self.load_into(&format!("{prefix}.{e}.{proj}.weight_scale"), &scale.get(e))?;
                }
            }
            (false, _) => {
                let full = Tensor::f_empty([rows, cols], (Kind::Float, self.device))?;
                for e in 0..n {
                    match fused {
                        true => self.load_slice_into(&values, Some(e), &full)?,
                        false => self.load_into(&format!("{prefix}.{e}.{proj}.weight"), &full)?,
                    }
                    let q = QTensor::quantize(&full, format);
                    tch::no_grad(|| {
                        data.get(e).copy_(&q.data);
                        scale.get(e).copy_(&q.scale);
                    });
                }
            }
        }
        QTensor::from_parts(format, data, scale, &values)
    }

    fn finish(&mut self) -> Result<()> {
        let mut extra: Vec<&String> = self.entries.keys().filter(|n| !self.used.contains(*n)).collect();
        extra.sort();
        match extra.first() {
            Some(name) => Err(Error::ExtraTensor { file: self.file_of(name), tensor: (*name).clone() }),
            None => Ok(()),
        }
    }
}

fn read_index(index: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, String>)> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::Index { file: index.to_path_buf(), message: format!("not a valid index: {e}") })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = parsed.weight_map.values().cloned().collect();
    files.sort();
    files.dedup();
    let mut paths = Vec::new();
    for f in files {
        if f.contains('/') || f.contains("..") {
            return Err(Error::Index { file: index.to_path_buf(), message: format!("shard name {f:?} must be a file name in the same folder") });
        }
        let p = dir.join(&f);
        if !p.exists() {
            return Err(Error::Index { file: index.to_path_buf(), message: format!("shard {f} is listed but does not exist") });
        }
        paths.push(p);
    }
    if paths.is_empty() {
        return Err(Error::Index { file: index.to_path_buf(), message: "weight_map is empty".into() });
    }
    Ok((paths, parsed.weight_map))
}

fn describe(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("only {file_len} bytes, shorter than the 8-byte header length"),
        E::InvalidHeaderLength => format!("the header length exceeds the file size ({file_len} bytes): truncated?"),
        // Raised for a file shorter *or longer* than the data its header describes.
        E::MetadataIncompleteBuffer => {
            format!("its size ({file_len} bytes) does not match the tensor data its header describes: truncated, or bytes appended?")
        }
        other => other.to_string(),
    }
}

/// How [`save`] lays tensors out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaveOptions {
    /// On-disk dtype of floating tensors (the expert bias stays f32).
    pub dtype: DType,
    /// Keep routed experts fused (`experts.gate_proj` `[E, I, H]`) instead of one tensor per expert.
    pub fused_experts: bool,
    /// Split into shards of at most this many bytes, with an index; `None` writes one file.
    pub shard_bytes: Option<usize>,
}

/// Writes named tensors (as held by a model's VarStore: fused experts) into `dir` in the official layout.
/// Each file is written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
pub fn save(tensors: &[(String, Tensor)], dir: &Path, opts: SaveOptions) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in tensors {
        // Quantized experts arrive as values (`...experts.gate_proj`, int8 / fp8) and `..._scale` (f32).
        let (base, leaf) = match name.strip_suffix("_scale") {
            Some(b) => (b, "weight_scale"),
            None => (name.as_str(), "weight"),
        };
        let is_experts = [".experts.gate_proj", ".experts.up_proj", ".experts.down_proj"].iter().any(|s| base.ends_with(s));
        let t = match t.kind() {
            Kind::Int8 | Kind::Float8e4m3fn => t.shallow_clone(),
            _ if name.ends_with("expert_bias") || leaf == "weight_scale" => t.to_kind(Kind::Float),
            _ => t.to_kind(opts.dtype.kind()),
        };
        let t = t.to_device(Device::Cpu).contiguous();
        if is_experts && !opts.fused_experts {
            let (prefix, proj) = base.rsplit_once('.').expect("dotted name");
            for e in 0..t.size()[0] {
                out.push((format!("{prefix}.{e}.{proj}.{leaf}"), t.get(e).contiguous()));
            }
        } else {
            out.push((name.clone(), t));
        }
    }
    out.sort_by(|a, b| natural_key(&a.0).cmp(&natural_key(&b.0)));
    let shards: Vec<Vec<(String, Tensor)>> = match opts.shard_bytes {
        None => vec![out],
        Some(limit) => {
            let mut shards = vec![Vec::new()];
            let mut size = 0;
            for (name, t) in out {
                let b = crate::model::tensor_bytes(&t);
                if size > 0 && size + b > limit {
                    shards.push(Vec::new());
                    size = 0;
                }
                size += b;
                shards.last_mut().expect("non-empty").push((name, t));
            }
            shards
        }
    };
    if opts.shard_bytes.is_none() {
        write_file(&shards[0], &dir.join(SINGLE_FILE))?;
        let _ = std::fs::remove_file(dir.join(INDEX_FILE));
        return Ok(());
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_file(shard, &dir.join(&file))?;
        for (name, t) in shard {
            weight_map.insert(name.clone(), file.clone());
            total += crate::model::tensor_bytes(t);
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    write_atomic(&dir.join(INDEX_FILE), serde_json::to_string_pretty(&index).expect("json").as_bytes())?;
    let _ = std::fs::remove_file(dir.join(SINGLE_FILE));
    Ok(())
}

fn write_file(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let mut bytes = vec![0u8; crate::model::tensor_bytes(t)];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int8 => Dtype::I8,
            Kind::Float8e4m3fn => Dtype::F8_E4M3,
            k => return Err(Error::invalid("tensor dtype", format!("{k:?}"), format!("cannot save `{name}`"))),
        };
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("consistent view")))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::CorruptFile { file: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|f| f.to_str()).unwrap_or("file"), std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A fresh temporary folder path beside `dir` (`.NAME.tmpPID`, in the same filesystem, so
/// [`install_dir`] can put it in place), after removing the `.NAME.tmpPID[.old]` folders that killed writers
/// of other processes left there (a process that is still running keeps its own).
pub fn temp_sibling(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::invalid("folder", dir.display().to_string(), "not a folder name"))?;
    let prefix = format!(".{name}.tmp");
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).map(|r| r.trim_end_matches(".old")) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        if pid.chars().all(|c| c.is_ascii_digit()) && !pid.is_empty() && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    Ok(tmp)
}

/// Puts the complete folder `tmp` at `dir`: a rename when `dir` does not exist; otherwise the two are swapped
/// in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`) and the old version, now at `tmp`, is removed. At
/// every instant `dir` is the old version or the new one, whatever kills the process. Where the exchange is
/// not supported (another OS, some filesystems) two renames do it, with a short window between them.
pub fn install_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    if exchange(tmp, dir).is_err() {
        let old = PathBuf::from(format!("{}.old", tmp.display()));
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 reads them and touches no Rust memory.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Sort key that orders `layers.10` after `layers.9`.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.').map(|p| p.parse::<u64>().map(|n| (n, String::new())).unwrap_or((u64::MAX, p.to_string()))).collect()
}
