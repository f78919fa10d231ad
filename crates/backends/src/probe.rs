//! The two questions Gatehouse asks a backend itself: "are you up?" (`GET /global/health`)
//! and "is an agent working?" (`GET /session/status`). A tiny HTTP/1.1 client over loopback
//! with short timeouts, because OpenCode accepts connections before it can answer them
//! (issue 5: "connections accepted before that line hang forever").

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a backend answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    /// The raw body (may still be chunk-framed; callers only look for words in it).
    pub body: Vec<u8>,
}

/// Bodies larger than this are cut (status answers are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// `GET path` on `127.0.0.1:port` with `authorization`, all within `timeout`.
pub(crate) async fn get(
    port: u16,
    path: &str,
    authorization: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    match tokio::time::timeout(timeout, get_inner(port, path, authorization)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn get_inner(port: u16, path: &str, authorization: &str) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || raw.len() > MAX_BODY {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        // OpenCode (Bun) may keep the connection open despite `Connection: close`, so the
        // answer ends where its framing says, not at EOF.
        if complete(&raw) {
            break;
        }
    }
    parse(&raw)
}

/// Whether `raw` holds a whole answer: headers plus `Content-Length` bytes, or a chunked
/// body up to its last chunk.
fn complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = raw.len() - head_end - 4;
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return raw.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

fn parse(raw: &[u8]) -> Result<Answer, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("answer has no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok(Answer {
        status,
        body: raw[head_end + 4..].to_vec(),
    })
}

/// Whether a `/session/status` body says some session is working. OpenCode answers `{}`
/// when idle and `{"ses_…":{"type":"busy"}}` (or `"retry"`) when not. Anything else that is
/// not plainly idle counts as busy: wrongly keeping a backend costs memory, wrongly
/// stopping one kills someone's agent mid-task.
pub(crate) fn says_busy(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("\"busy\"") || text.contains("\"retry\"") || !text.contains('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_body_are_read_from_a_plain_answer() {
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}").unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"{}");
    }

    #[test]
    fn an_answer_is_complete_by_its_framing_not_by_eof() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        ));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn an_answer_without_headers_end_is_an_error() {
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn idle_busy_and_unreadable_status_bodies() {
        assert!(!says_busy(b"{}"));
        assert!(!says_busy(b"2\r\n{}\r\n0\r\n\r\n"));
        assert!(says_busy(br#"{"ses_1":{"type":"busy"}}"#));
        assert!(says_busy(br#"{"ses_1":{"type":"retry","attempt":2}}"#));
        assert!(says_busy(b""));
    }
}
