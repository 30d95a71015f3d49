//! `kernel install` / `kernel uninstall`: the kernelspec folder `<data dir>/kernels/<name>/` with kernel.json
//! (absolute argv, `interrupt_mode: "message"`) and two logos, where jupyter_client looks for kernels:
//!
//! - `--user` (the default): `$JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter` or `~/.local/share/jupyter`
//!   (`~/Library/Jupyter` on macOS, `%APPDATA%\jupyter` on Windows), as jupyter_core computes it;
//! - `--sys-prefix`: the active Python environment (`$VIRTUAL_ENV`, else `$CONDA_PREFIX`) + `share/jupyter`;
//! - `--prefix P`: `P/share/jupyter`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Prefix {
    #[default]
    User,
    SysPrefix,
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub prefix: Prefix,
    /// The kernel's name (`jupyter console --kernel NAME`): letters, digits, `-`, `.`, `_`.
    pub name: String,
    pub display_name: String,
    /// The program kernel.json starts; `None`: this executable.
    pub exe: Option<PathBuf>,
    /// Arguments after `kernel` and before `--connection-file` (e.g. `--model DIR --device cuda`).
    pub kernel_args: Vec<String>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions { prefix: Prefix::User, name: "dllm".into(), display_name: "dllm (LLaDA2.x)".into(), exe: None, kernel_args: Vec::new() }
    }
}

/// The `share/jupyter` folder a prefix stands for.
pub fn data_dir(prefix: &Prefix) -> anyhow::Result<PathBuf> {
    Ok(match prefix {
        Prefix::Path(p) => p.join("share").join("jupyter"),
        Prefix::SysPrefix => {
            let env = std::env::var_os("VIRTUAL_ENV").or_else(|| std::env::var_os("CONDA_PREFIX"));
            match env {
                Some(p) if !p.is_empty() => PathBuf::from(p).join("share").join("jupyter"),
                _ => bail!("--sys-prefix needs an active Python environment ($VIRTUAL_ENV or $CONDA_PREFIX); use --prefix P instead"),
            }
        }
        Prefix::User => match std::env::var_os("JUPYTER_DATA_DIR") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ if cfg!(target_os = "macos") => dirs::home_dir().context("no home folder")?.join("Library").join("Jupyter"),
            // dirs::data_dir is $XDG_DATA_HOME or ~/.local/share on Linux, %APPDATA% on Windows.
            _ => dirs::data_dir().context("no user data folder")?.join("jupyter"),
        },
    })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        bail!("kernel name {name:?}: use letters, digits, '-', '.' and '_'");
    }
    Ok(())
}

/// The kernel.json text.
pub fn kernel_json(exe: &Path, opts: &InstallOptions) -> serde_json::Value {
    let mut argv = vec![exe.to_string_lossy().into_owned(), "kernel".to_string()];
    argv.extend(opts.kernel_args.iter().cloned());
    argv.extend(["--connection-file".to_string(), "{connection_file}".to_string()]);
    json!({
        "argv": argv,
        "display_name": opts.display_name,
        "language": "dllm",
        "interrupt_mode": "message",
        "metadata": {"debugger": false},
    })
}

/// Writes the kernelspec; returns its folder.
pub fn install(opts: &InstallOptions) -> anyhow::Result<PathBuf> {
    check_name(&opts.name)?;
    let exe = match &opts.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    // Jupyter starts the kernel from another folder: the path must be absolute.
    let exe = std::fs::canonicalize(&exe).with_context(|| format!("kernel program {}", exe.display()))?;
    let dir = data_dir(&opts.prefix)?.join("kernels").join(opts.name.to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&kernel_json(&exe, opts))?;
    std::fs::write(dir.join("kernel.json"), text + "\n").with_context(|| format!("writing {}/kernel.json", dir.display()))?;
    for size in [32, 64] {
        let path = dir.join(format!("logo-{size}x{size}.png"));
        std::fs::write(&path, logo_png(size)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// Removes the kernelspec; returns the folder removed.
pub fn uninstall(name: &str, prefix: &Prefix) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = data_dir(prefix)?.join("kernels").join(name.to_lowercase());
    if !dir.join("kernel.json").is_file() {
        bail!("no kernel {name:?} in {}", dir.parent().unwrap_or(&dir).display());
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------------------
// The logo: a block-diffusion canvas in miniature (a dark tile; rows of tokens, decoded ones coloured, masks
// grey, the block being decoded outlined), encoded as an RGBA PNG with stored (uncompressed) deflate blocks.

fn logo_pixels(size: u32) -> Vec<u8> {
    let mut px = vec![0u8; (size * size * 4) as usize];
    let cells = 4; // a 4 x 4 canvas of tokens
    let margin = size / 8;
    let pitch = (size - 2 * margin) / cells;
    let gap = (pitch / 6).max(1);
    let colours: [[u8; 3]; 4] = [[0x4c, 0x9a, 0xff], [0x2e, 0xc4, 0x8a], [0xff, 0xa9, 0x3a], [0xe0, 0x5a, 0x8c]];
    for y in 0..size {
        for x in 0..size {
            let i = ((y * size + x) * 4) as usize;
            // Rounded dark tile.
            let r = size / 6;
            let (cx, cy) = (x.clamp(r, size - 1 - r), y.clamp(r, size - 1 - r));
            let d2 = (x as i64 - cx as i64).pow(2) + (y as i64 - cy as i64).pow(2);
            if d2 > (r as i64).pow(2) {
                continue; // transparent corner
            }
            let mut rgb = [0x1e, 0x22, 0x2b];
            if (margin..size - margin).contains(&x) && (margin..size - margin).contains(&y) {
                let (gx, gy) = ((x - margin) / pitch, (y - margin) / pitch);
                let (ox, oy) = ((x - margin) % pitch, (y - margin) % pitch);
                if gx < cells && gy < cells && ox >= gap && oy >= gap {
                    // Decoded tokens fill the canvas left to right, top to bottom; the rest are masks.
                    let k = gy * cells + gx;
                    rgb = if k < 10 { colours[((k * 7 + gy) % 4) as usize] } else { [0x6b, 0x72, 0x80] };
                }
            }
            px[i..i + 4].copy_from_slice(&[rgb[0], rgb[1], rgb[2], 0xff]);
        }
    }
    px
}

/// A valid PNG of the logo at `size` x `size`.
pub fn logo_png(size: u32) -> Vec<u8> {
    let px = logo_pixels(size);
    // Each scanline: filter byte 0 (None), then RGBA.
    let mut raw = Vec::with_capacity(px.len() + size as usize);
    for row in px.chunks((size * 4) as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(size.to_be_bytes());
    ihdr.extend(size.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A zlib stream of stored deflate blocks (at most 65535 bytes each).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65_535).collect() };
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let n = b.len() as u16;
        out.extend(n.to_le_bytes());
        out.extend((!n).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65_521;
        s = (s + a) % 65_521;
    }
    out.extend(((s << 16) | a).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_png_structure() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let p = logo_png(32);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), 32);
        assert_eq!(&p[p.len() - 8..p.len() - 4], b"IEND");
    }

    #[test]
    fn install_and_uninstall_under_a_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let opts = InstallOptions {
            prefix: Prefix::Path(tmp.path().into()),
            name: "dllm-test".into(),
            exe: Some(exe.clone()),
            kernel_args: vec!["--device".into(), "cpu".into()],
            ..InstallOptions::default()
        };
        let dir = install(&opts).unwrap();
        assert_eq!(dir, tmp.path().join("share/jupyter/kernels/dllm-test"));
        let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("kernel.json")).unwrap()).unwrap();
        let argv: Vec<&str> = spec["argv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(Path::new(argv[0]).is_absolute());
        assert_eq!(&argv[1..], ["kernel", "--device", "cpu", "--connection-file", "{connection_file}"]);
        assert_eq!(spec["interrupt_mode"], "message");
        assert_eq!(spec["language"], "dllm");
        assert!(dir.join("logo-64x64.png").is_file());
        assert!(install(&InstallOptions { name: "bad name".into(), ..opts.clone() }).is_err());
        uninstall("dllm-test", &opts.prefix).unwrap();
        assert!(!dir.exists());
        assert!(uninstall("dllm-test", &opts.prefix).is_err());
    }
}
