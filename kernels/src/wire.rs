//! The wire format of a Jupyter message (messaging spec 5.3, "The Wire Protocol"):
//!
//! ```text
//! [identity, ...] b"<IDS|MSG>" signature header parent_header metadata content [buffer, ...]
//! ```
//!
//! The signature is the hex HMAC-SHA256 of the four JSON frames, keyed with the connection file's `key`.
//! Incoming signatures are checked over the frames exactly as received (never re-serialised) and compared in
//! constant time (`Mac::verify_slice`). An empty key turns signing off, as jupyter_client does.
//!
//! Invariant: nothing here panics on input. Any malformed frame list, bad signature or bad JSON is a
//! `WireError` that the caller logs and drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

pub const DELIMITER: &[u8] = b"<IDS|MSG>";
pub const PROTOCOL_VERSION: &str = "5.3";

#[derive(Debug)]
pub enum WireError {
    NoDelimiter,
    TooFewFrames(usize),
    MissingSignature,
    BadSignature,
    BadJson(&'static str, String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::NoDelimiter => write!(f, "no <IDS|MSG> delimiter"),
            WireError::TooFewFrames(n) => write!(f, "{n} frames after the delimiter (at least 5 needed)"),
            WireError::MissingSignature => write!(f, "unsigned message (the kernel has a key)"),
            WireError::BadSignature => write!(f, "bad signature"),
            WireError::BadJson(frame, e) => write!(f, "bad {frame} frame: {e}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Signs and checks messages with the connection key.
#[derive(Clone)]
pub struct Signer {
    mac: Option<Hmac<Sha256>>,
}

impl Signer {
    pub fn new(key: &str) -> Signer {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail; `ok()` keeps this panic-free.
        let mac = if key.is_empty() { None } else { Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok() };
        Signer { mac }
    }

    pub fn enabled(&self) -> bool {
        self.mac.is_some()
    }

    /// The hex signature of the four JSON frames ("" when signing is off).
    pub fn sign(&self, parts: [&[u8]; 4]) -> String {
        let Some(mac) = &self.mac else { return String::new() };
        let mut mac = mac.clone();
        for p in parts {
            mac.update(p);
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Checks a received signature in constant time. With signing off every message passes.
    pub fn verify(&self, signature: &[u8], parts: [&[u8]; 4]) -> Result<(), WireError> {
        let Some(mac) = &self.mac else { return Ok(()) };
        if signature.is_empty() {
            return Err(WireError::MissingSignature);
        }
        let sig = unhex(signature).ok_or(WireError::BadSignature)?;
        let mut mac = mac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(&sig).map_err(|_| WireError::BadSignature)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// A message header. Unknown fields (e.g. `subshell_id`) are kept so a parent header echoes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Header {
    /// A fresh header from this kernel's session.
    pub fn new(msg_type: &str, session: &str) -> Header {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Header {
            msg_id: format!("{session}_{n}"),
            msg_type: msg_type.into(),
            session: session.into(),
            username: "dllm".into(),
            date: now_iso8601(),
            version: PROTOCOL_VERSION.into(),
            extra: Map::new(),
        }
    }
}

/// One message, decoded. `parent_header` stays raw JSON: it is `{}` or a header we only ever echo.
#[derive(Debug, Clone)]
pub struct Message {
    /// ROUTER identities on shell/control; the topic on IOPub.
    pub identities: Vec<Vec<u8>>,
    pub header: Header,
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
}

impl Message {
    /// Decodes and verifies a multipart message. Never panics.
    pub fn from_frames(mut frames: Vec<Vec<u8>>, signer: &Signer) -> Result<Message, WireError> {
        let d = frames.iter().position(|f| f == DELIMITER).ok_or(WireError::NoDelimiter)?;
        let rest = frames.split_off(d + 1);
        frames.pop(); // the delimiter
        if rest.len() < 5 {
            return Err(WireError::TooFewFrames(rest.len()));
        }
        let mut it = rest.into_iter();
        let (sig, h, p, m, c) = (it.next(), it.next(), it.next(), it.next(), it.next());
        let (Some(sig), Some(h), Some(p), Some(m), Some(c)) = (sig, h, p, m, c) else {
            return Err(WireError::TooFewFrames(0));
        };
        // Check the signature before parsing anything an attacker controls.
        signer.verify(&sig, [&h, &p, &m, &c])?;
        let header: Header = serde_json::from_slice(&h).map_err(|e| WireError::BadJson("header", e.to_string()))?;
        // From here on the message is authentic and has a type, so its sender waits for a reply: frames that do
        // not parse do not drop it. A parent header or metadata that is not a JSON object reads as `{}` (we
        // only echo them); content that is not a JSON object becomes a string saying so (an array would
        // otherwise deserialise into a request's fields by position), so parsing the request fails with a
        // reason the error reply carries.
        let object = |b: &[u8]| serde_json::from_slice::<Value>(b).ok().filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new()));
        let (parent_header, metadata) = (object(&p), object(&m));
        let content = match serde_json::from_slice::<Value>(&c) {
            Ok(v) if v.is_object() => v,
            Ok(_) => Value::String("content that is not a JSON object".into()),
            Err(e) => Value::String(format!("content that is not JSON ({e})")),
        };
        Ok(Message { identities: frames, header, parent_header, metadata, content, buffers: it.collect() })
    }

    /// Encodes and signs a message.
    pub fn to_frames(&self, signer: &Signer) -> Vec<Vec<u8>> {
        // Serialising a Header or a serde_json::Value cannot fail.
        let h = serde_json::to_vec(&self.header).unwrap_or_else(|_| b"{}".to_vec());
        let p = serde_json::to_vec(&self.parent_header).unwrap_or_else(|_| b"{}".to_vec());
        let m = serde_json::to_vec(&self.metadata).unwrap_or_else(|_| b"{}".to_vec());
        let c = serde_json::to_vec(&self.content).unwrap_or_else(|_| b"{}".to_vec());
        let sig = signer.sign([&h, &p, &m, &c]);
        let mut frames = self.identities.clone();
        frames.push(DELIMITER.to_vec());
        frames.push(sig.into_bytes());
        frames.extend([h, p, m, c]);
        frames.extend(self.buffers.iter().cloned());
        frames
    }

    /// A message answering (or caused by) `self`: same identities, `self.header` as parent.
    pub fn child(&self, msg_type: &str, session: &str, content: Value) -> Message {
        Message {
            identities: self.identities.clone(),
            header: Header::new(msg_type, session),
            parent_header: serde_json::to_value(&self.header).unwrap_or_else(|_| Value::Object(Map::new())),
            metadata: Value::Object(Map::new()),
            content,
            buffers: Vec::new(),
        }
    }

    /// A message with no parent (e.g. the `starting` status).
    pub fn orphan(msg_type: &str, session: &str, content: Value) -> Message {
        Message {
            identities: Vec::new(),
            header: Header::new(msg_type, session),
            parent_header: Value::Object(Map::new()),
            metadata: Value::Object(Map::new()),
            content,
            buffers: Vec::new(),
        }
    }
}

/// A random session id (uuid4-shaped hex) for this kernel process.
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok();
    if !filled {
        // No /dev/urandom: mix the time and the pid; a session id needs uniqueness, not secrecy.
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let x = t ^ ((std::process::id() as u128) << 64);
        b = x.to_le_bytes();
    }
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Now as ISO 8601 in UTC with microseconds, as jupyter_client writes dates.
pub fn now_iso8601() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_micros())
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(signer: &Signer) -> Vec<Vec<u8>> {
        let m = Message {
            identities: vec![b"client-1".to_vec()],
            header: Header::new("kernel_info_request", "s"),
            parent_header: json!({}),
            metadata: json!({}),
            content: json!({}),
            buffers: vec![b"raw".to_vec()],
        };
        m.to_frames(signer)
    }

    #[test]
    fn round_trip_with_identities_and_buffers() {
        let s = Signer::new("secret");
        let m = Message::from_frames(sample(&s), &s).unwrap();
        assert_eq!(m.identities, vec![b"client-1".to_vec()]);
        assert_eq!(m.header.msg_type, "kernel_info_request");
        assert_eq!(m.buffers, vec![b"raw".to_vec()]);
    }

    #[test]
    fn known_hmac_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" (split over the four frames).
        let s = Signer::new("Jefe");
        let sig = s.sign([b"what do ya", b" want ", b"for ", b"nothing?"]);
        assert_eq!(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn bad_missing_and_foreign_signatures_are_rejected() {
        let s = Signer::new("secret");
        let mut f = sample(&s);
        f[2][0] ^= 1; // flip a hex digit of the signature
        assert!(matches!(Message::from_frames(f, &s), Err(WireError::BadSignature)));
        let mut f = sample(&s);
        f[2].clear();
        assert!(matches!(Message::from_frames(f, &s), Err(WireError::MissingSignature)));
        let f = sample(&Signer::new("other key"));
        assert!(matches!(Message::from_frames(f, &s), Err(WireError::BadSignature)));
        let mut f = sample(&s);
        f[2] = b"zz".to_vec();
        assert!(matches!(Message::from_frames(f, &s), Err(WireError::BadSignature)));
        // A tampered content frame with the original signature.
        let mut f = sample(&s);
        f[6] = br#"{"x":1}"#.to_vec();
        assert!(matches!(Message::from_frames(f, &s), Err(WireError::BadSignature)));
    }

    #[test]
    fn empty_key_accepts_unsigned() {
        let s = Signer::new("");
        assert!(!s.enabled());
        assert!(Message::from_frames(sample(&s), &s).is_ok());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let s = Signer::new("");
        assert!(Message::from_frames(vec![], &s).is_err());
        assert!(Message::from_frames(vec![b"x".to_vec()], &s).is_err());
        assert!(Message::from_frames(vec![DELIMITER.to_vec(), b"".to_vec()], &s).is_err());
        let frames = |h: &[u8], c: &[u8]| vec![DELIMITER.to_vec(), vec![], h.to_vec(), b"{}".to_vec(), b"{}".to_vec(), c.to_vec()];
        assert!(Message::from_frames(frames(b"{not json", b"{}"), &s).is_err());
        assert!(Message::from_frames(frames(b"{}", b"{}"), &s).is_err()); // header without msg_type
        // An authentic message with a type is kept whatever its content, so that its sender gets an error reply.
        let m = Message::from_frames(frames(br#"{"msg_id":"1","msg_type":"x"}"#, b"[1]"), &s).unwrap();
        assert_eq!(m.content, serde_json::json!("content that is not a JSON object"));
        let m = Message::from_frames(frames(br#"{"msg_id":"1","msg_type":"x"}"#, b"\xff\xfe"), &s).unwrap();
        assert!(m.content.as_str().unwrap().starts_with("content that is not JSON"), "{:?}", m.content);
        assert!(Message::from_frames(frames(br#"{"msg_id":"1","msg_type":"x"}"#, b"{}"), &s).is_ok());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(now_iso8601().len(), "2024-01-01T00:00:00.000000Z".len());
    }
}
