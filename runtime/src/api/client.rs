//! The `ferry pause|resume|restart|status` end of the admin API: one HTTP
//! request to the ferry that runs on a data folder. The address comes from
//! `<data-dir>/api.addr` (written by `ferry run` once it listens), else the
//! default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `ferry run` listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8083";

/// The file in the data folder that says where the API of the ferry running
/// there listens.
pub fn addr_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("api.addr")
}

/// The API address of the ferry running on `data_dir`.
pub fn addr_for(data_dir: &Path) -> String {
    std::fs::read_to_string(addr_file(data_dir))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| DEFAULT_ADDR.to_string())
}

/// A running ferry's API: where, and the token it wants.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
}

/// Sends `method path` to `target` and returns the status code and body.
pub async fn request(target: &Target, method: &str, path: &str) -> Result<(u16, String), String> {
    let addr = target.addr.as_str();
    let authorization = target
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let target: SocketAddr = addr
        .parse()
        .map_err(|e| format!("the API address {addr:?}: {e}"))?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| format!("no answer from ferry's API at {addr} within 60s"))?
        .map_err(|e| {
            format!("ferry's API at {addr}: {e} (is a ferry running on this data folder?)")
        })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("ferry's API at {addr} answered something that is not HTTP"))?;
    Ok((status, body.to_string()))
}

/// `ferry status`'s table of `GET /pipelines`.
pub fn status_table(pipelines: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:>12} {:>12} {:>10} {:>18} {:>8}  error\n",
        "pipeline", "state", "in", "out", "records/s", "lag", "retries"
    );
    for p in pipelines {
        let error = p["state"]["error"]
            .as_str()
            .or(p["pending_config_error"].as_str())
            .unwrap_or("");
        out.push_str(&format!(
            "{:<24} {:<10} {:>12} {:>12} {:>10.0} {:>18} {:>8}  {}\n",
            p["name"].as_str().unwrap_or("?"),
            p["state"]["name"].as_str().unwrap_or("?"),
            p["records_in"].as_u64().unwrap_or(0),
            p["records_out"].as_u64().unwrap_or(0),
            p["rate"]["records_per_second"].as_f64().unwrap_or(0.0),
            lag_text(&p["lag"]),
            p["retries"].as_u64().unwrap_or(0),
            error.lines().next().unwrap_or("")
        ));
    }
    out
}

/// `12345 messages`, `~3 rows`, or `-` when not measured.
fn lag_text(lag: &serde_json::Value) -> String {
    match lag["amount"].as_f64() {
        Some(amount) => format!(
            "{}{amount:.0} {}",
            if lag["estimate"] == true { "~" } else { "" },
            lag["unit"].as_str().unwrap_or("")
        ),
        None => "-".to_string(),
    }
}
