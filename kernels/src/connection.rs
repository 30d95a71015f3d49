//! The connection file a Jupyter client writes before starting the kernel (`{connection_file}` in kernel.json):
//! where to bind the five sockets and the key that signs every message.
//!
//! The kernel binds exactly these endpoints and nothing else (loopback unless the client asked otherwise).

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionInfo {
    #[serde(default = "default_transport")]
    pub transport: String,
    #[serde(default = "default_ip")]
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    /// Empty: messages are neither signed nor checked (jupyter_client's own convention).
    #[serde(default)]
    pub key: String,
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    #[serde(default)]
    pub kernel_name: String,
}

fn default_transport() -> String {
    "tcp".into()
}
fn default_ip() -> String {
    "127.0.0.1".into()
}
fn default_scheme() -> String {
    "hmac-sha256".into()
}

impl ConnectionInfo {
    /// Reads and checks a connection file.
    pub fn load(path: &Path) -> anyhow::Result<ConnectionInfo> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the connection file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the connection file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<ConnectionInfo> {
        let c: ConnectionInfo = serde_json::from_str(text).context("not a valid connection file")?;
        // Only HMAC-SHA256 is implemented; accepting another scheme would mean sending signatures the client
        // rejects (or, worse, accepting messages we cannot check).
        if !c.key.is_empty() && c.signature_scheme != "hmac-sha256" {
            bail!("signature_scheme {:?} is not supported (only hmac-sha256)", c.signature_scheme);
        }
        if c.transport != "tcp" && c.transport != "ipc" {
            bail!("transport {:?} is not supported (tcp or ipc)", c.transport);
        }
        Ok(c)
    }

    /// The ZeroMQ endpoint of one port: `tcp://IP:PORT`, or `ipc://IP-PORT` as jupyter_client names them.
    pub fn endpoint(&self, port: u16) -> String {
        match self.transport.as_str() {
            "ipc" => format!("ipc://{}-{}", self.ip, port),
            _ if self.ip.contains(':') => format!("tcp://[{}]:{}", self.ip, port),
            _ => format!("tcp://{}:{}", self.ip, port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jupyter_client_files() {
        let c = ConnectionInfo::parse(
            r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
                "ip": "127.0.0.1", "key": "abc", "transport": "tcp", "signature_scheme": "hmac-sha256",
                "kernel_name": "dllm"}"#,
        )
        .unwrap();
        assert_eq!(c.endpoint(c.shell_port), "tcp://127.0.0.1:1");
        assert_eq!(c.key, "abc");
    }

    #[test]
    fn refuses_other_schemes_and_missing_ports() {
        let bad = r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
                      "key": "k", "signature_scheme": "hmac-md5"}"#;
        assert!(ConnectionInfo::parse(bad).is_err());
        assert!(ConnectionInfo::parse(r#"{"shell_port": 1}"#).is_err());
        assert!(ConnectionInfo::parse("not json").is_err());
    }
}
