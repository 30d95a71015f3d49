//! A standing, seeded fuzz of the command language: command lines mutated from valid ones (numbers swapped for
//! extremes, words dropped, doubled or moved to another command, bytes inserted, lines cut) run against one
//! session on the embedded model. None may abort the process or reach the internal-error guard, and a command
//! that fails must leave the session's observable state (settings, trace, branches, RL settings) as it was.
//! Bounded and reproducible: a fixed number of lines from a fixed seed. `DLLM_FUZZ_LINES` and
//! `DLLM_FUZZ_SEED` run longer or other campaigns by hand.
//!
//! Every line runs under a watchdog: after [`PATIENCE`] it sets the session's interrupt flag, as Ctrl-C would,
//! and the line must then end within [`GRACE`] of CPU time (long work stops between pieces; no line hangs). The process
//! runs under `DLLM_MEMORY_LIMIT=2GB` (unless set), so what would not fit is refused with an estimate the same
//! way on every machine. The end prints the lines, failures, interrupts, the longest wait after an interrupt
//! and the peak resident memory.
//!
//! Left out on purpose: commands that write or read files (`load`, `save`, `open`, `source`, `export`,
//! `rl save`).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dllm_repl::{ModelSource, Session};

/// How long a line runs before the watchdog interrupts it.
const PATIENCE: Duration = Duration::from_secs(2);
/// How much CPU time an interrupted line may use before it stops. CPU time, not wall time: a campaign's seeds
/// share the cores at low priority and may wait minutes for a core, which is not a hang.
const GRACE: Duration = Duration::from_secs(5);

/// CPU time of this process so far (user + system, from /proc/self/stat in clock ticks of 10 ms). The fuzz
/// runs libtorch on one thread (`OMP_NUM_THREADS=1` in scripts/fuzz.sh), so this is the command's work.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name in parentheses: state is field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    Duration::from_millis((f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10)
}

/// Valid lines the mutations start from.
const SEEDS: &[&str] = &[
    "help", "help step", "info", "prompt The capital of", "chat copy abc", "chat sort 3142", "chat order 3142",
    "prompt-ids 10,11,12", "settings", "set threshold 0.8", "set gen_length 16", "set block_length 4",
    "set edit_threshold 0.5", "set temperature 0.5", "set top_k 3", "set top_p 0.9", "set seed 7",
    "set max_post_steps 4", "set num_to_transfer 2", "set fallback_steps 2", "set mbe_window 1", "preset Q",
    "preset S", "step", "step 2", "run", "continue", "break step 3", "break token 5", "break low-confidence 0.5",
    "break edit", "breaks", "delete 1", "delete all", "watch 5 6", "rewind 1", "rewind 0", "fork b",
    "switch main", "switch b", "branches", "diff main b", "canvas", "gamma", "delta", "topk 5 3", "trace", "block",
    "stats", "chart", "poke 20 a", "remask 20 21", "sweep threshold 0.5 0.9", "likelihood",
    "likelihood stratified:4 -- copy ab => ab", "likelihood mc:3 seed=2 repeat=2", "rl show", "rl set batch 2",
    "rl set group 2", "rl set epochs 2", "rl set trainable lora:4", "rl set estimator stratified:2",
    "rl prompt copy ab => ab", "rl prompts", "rl snapshot s", "rl restore s", "rl stats", "redecode r",
    "rl update 1", "rl eval 2", "rl set gen_length 16", "rl set tasks copy,sort", "rl set estimator edit:2",
    "likelihood edit:2:0.2 repeat=2 -- copy ab => ab", "set gen_length 64", "run",
    "fidelity int8", "fidelity fp8", "redecode q quantize=int8", "load builtin quantize=fp8", "load builtin",
    "fidelity fp8 fp8_matmul=emulated", "redecode e quantize=fp8 fp8_matmul=emulated", "load builtin quantize=fp8 fp8_matmul=scaled",
    "drop b", "canvas all", "preset lowconf", "likelihood gauss:2:anti", "rl set reward similarity", "break text ab",
    "watch off", "rl set estimator gauss:2", "help likelihood",
];

/// Seeds that take a second or more (a whole RL update, held-out decodes): `DLLM_FUZZ_HEAVY=0` leaves them out
/// of a long campaign's light seeds, which then run about ten times as many lines per CPU-minute.
const HEAVY: &[&str] = &["rl update 1", "rl eval 2"];

/// Words that break parsers: extremes of every numeric type, non-numbers, quotes, separators, odd Unicode.
const EXTREMES: &[&str] = &[
    "0", "-1", "1", "-0", "1e300", "-1e300", "1e-300", "NaN", "nan", "inf", "-inf", "9223372036854775807",
    "-9223372036854775808", "18446744073709551616", "4294967296", "2147483648", "0.5", "1.0000001", "x", "\"",
    "\"a b", "\u{202e}", "ü", "\u{1F4A5}", "--", "=>", "all", "off", "auto", "lora:0", "stratified:0", "1,2,,3",
    "-5,7", "b", "main", "64", "100", "1000", "4096", "100000",
];

/// xorshift64*: the test's only randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn mutate(line: &str, rng: &mut Rng) -> String {
    let mut words: Vec<String> = line.split(' ').map(String::from).collect();
    let pick = |rng: &mut Rng, words: &[String]| if words.len() > 1 { 1 + rng.below(words.len() - 1) } else { 0 };
    match rng.below(8) {
        7 => {
            // The value inside a word: `repeat=2` -> `repeat=1e300`, `lora:4` -> `lora:9223372036854775807`.
            let i = rng.below(words.len());
            if let Some(at) = words[i].rfind(['=', ':']) {
                words[i] = format!("{}{}", &words[i][..=at], EXTREMES[rng.below(EXTREMES.len())]);
            } else {
                words[i] = EXTREMES[rng.below(EXTREMES.len())].to_string();
            }
        }
        0 => {
            let i = pick(rng, &words);
            words[i] = EXTREMES[rng.below(EXTREMES.len())].to_string();
        }
        1 => words.push(EXTREMES[rng.below(EXTREMES.len())].to_string()),
        2 if words.len() > 1 => {
            let i = pick(rng, &words);
            words.remove(i);
        }
        3 => {
            let i = rng.below(words.len());
            words.insert(i, words[i].clone());
        }
        4 => {
            // Another command's arguments.
            let other = SEEDS[rng.below(SEEDS.len())];
            words.truncate(1);
            words.extend(other.split(' ').skip(1).map(String::from));
        }
        5 => {
            let text = words.join(" ");
            let at = text.char_indices().map(|(i, _)| i).nth(rng.below(text.chars().count().max(1))).unwrap_or(0);
            let junk = ["\0", "\t", "\\", "\"", "\u{7f}", "\u{FEFF}", "é"][rng.below(7)];
            return format!("{}{junk}{}", &text[..at], &text[at..]);
        }
        _ => {
            let text = words.join(" ");
            let n = rng.below(text.chars().count().max(1) + 1);
            return text.chars().take(n).collect();
        }
    }
    words.join(" ")
}

/// What a failed command must leave as it was.
fn state(s: &mut Session) -> String {
    let show = |s: &mut Session, line: &str| s.execute(line).map(|v| format!("{v:?}")).unwrap_or_else(|e| format!("error: {e}"));
    ["settings", "trace", "branches", "breaks", "rl show", "rl prompts"].map(|c| show(s, c)).join("\n")
}

#[test]
fn mutated_command_lines_never_abort_and_failures_change_nothing() {
    let lines: usize = std::env::var("DLLM_FUZZ_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    if std::env::var_os("DLLM_MEMORY_LIMIT").is_none() {
        std::env::set_var("DLLM_MEMORY_LIMIT", "2GB"); // before the session's loading thread starts
    }
    let mut s = Session::new(ModelSource { dir: None, device: "cpu".into(), dtype: None, quantize: None, fp8_matmul: None });
    for setup in ["set gen_length 16", "set block_length 4", "chat sort 3142", "step"] {
        s.execute(setup).unwrap();
    }
    let seed: u64 = std::env::var("DLLM_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed.max(1));
    let (mut failed, mut internal, mut interrupted, mut slowest_stop) = (0, Vec::new(), 0, Duration::ZERO);
    let light = std::env::var("DLLM_FUZZ_HEAVY").is_ok_and(|v| v == "0");
    let seeds: Vec<&str> = SEEDS.iter().copied().filter(|l| !(light && HEAVY.contains(l))).collect();
    for n in 0..lines {
        let seed = seeds[rng.below(seeds.len())];
        // Half the lines run as written, so the session keeps moving through decodes, branches and RL state.
        let line = if rng.below(2) == 0 { seed.to_string() } else { mutate(seed, &mut rng) };
        if n > 0 && n % 25_000 == 0 {
            eprintln!("fuzz: {n} lines clean so far ({failed} failed as they should, {interrupted} interrupted)");
        }
        let before = state(&mut s);
        let (flag, (done, wait)) = (s.interrupt_flag(), mpsc::channel::<()>());
        let watchdog = std::thread::spawn(move || {
            let fired = wait.recv_timeout(PATIENCE).is_err();
            if fired {
                flag.store(true, Ordering::SeqCst);
            }
            fired.then(|| (Instant::now(), cpu_time()))
        });
        let result = s.execute(&line);
        let _ = done.send(());
        if let Some((at, cpu_at)) = watchdog.join().unwrap() {
            interrupted += 1;
            let (took, cpu) = (at.elapsed(), cpu_time().saturating_sub(cpu_at));
            slowest_stop = slowest_stop.max(took);
            assert!(cpu < GRACE, "line {n} `{line}` worked {cpu:?} of CPU time ({took:?} of wall time) past its interrupt: it hangs");
        }
        if let Err(e) = result {
            failed += 1;
            let e = e.to_string();
            if e.contains("internal error") {
                internal.push(format!("{n}: `{line}`: {e}"));
            }
            let after = state(&mut s);
            assert_eq!(before, after, "line {n} `{line}` failed ({e}) and changed the session");
        }
    }
    let peak = std::fs::read_to_string("/proc/self/status").ok().and_then(|t| t.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_string()));
    eprintln!(
        "fuzz: {lines} lines, {failed} failed, {} internal errors, {interrupted} interrupted by the watchdog (slowest stop {slowest_stop:.2?}), peak resident {}",
        internal.len(),
        peak.unwrap_or_else(|| "?".into())
    );
    assert!(internal.is_empty(), "internal errors:\n{}", internal.join("\n"));
    assert!(failed > lines / 10, "the mutations should make many lines fail ({failed} of {lines})");
}
