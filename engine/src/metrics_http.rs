//! The metrics endpoint's HTTP listener: `GET /metrics`, nothing else.
//!
//! A scrape is one small request from a trusted monitoring system, so a
//! minimal HTTP/1.1 responder is enough and keeps a web framework out of
//! the daemon: it reads the request head (at most [`MAX_HEAD`] bytes,
//! within [`READ_LIMIT`]), answers `GET` or `HEAD /metrics` with the page,
//! anything else with 404, 405 or 400, and closes the connection
//! (`Connection: close`), which every Prometheus scraper accepts.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Time a client gets to send its request head.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// Most scrapes answered at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// Makes the page (called off the runtime's thread, since it waits for the
/// scheduling core).
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers scrapes on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, scrape: Scrape) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, scrape).await {
                tracing::debug!(peer = %peer, error = %e, "metrics request ended early");
            }
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// The page; `body` false for HEAD.
    Metrics { body: bool },
    /// Another path.
    NotFound,
    /// Another method.
    NotAllowed,
    /// Not an HTTP request line.
    Bad,
}

/// Reads the request line of `head` (the bytes up to the blank line).
fn parse(head: &[u8]) -> Request {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics { body: true },
        ("HEAD", "/metrics") => Request::Metrics { body: false },
        (_, "/metrics") => Request::NotAllowed,
        _ => Request::NotFound,
    }
}

/// Reads the request head, up to and including its blank line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(head))
}

async fn answer(mut stream: TcpStream, scrape: Scrape) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_LIMIT, read_head(&mut stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no request head in time")
        })??;
    let request = head.as_deref().map_or(Request::Bad, parse);
    let (status, content_type, body, send_body) = match request {
        Request::Metrics { body } => {
            let page = tokio::task::spawn_blocking(move || scrape())
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", crate::metrics::CONTENT_TYPE, page, body)
        }
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
            true,
        ),
        Request::NotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
            true,
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            true,
        ),
    };
    let allow = if request_is_not_allowed(status) {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if send_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn request_is_not_allowed(status: &str) -> bool {
    status.starts_with("405")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { body: true }
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { body: true }
        );
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { body: false }
        );
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::NotAllowed
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"hello\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET /metrics SMTP\r\n\r\n"), Request::Bad);
    }

    #[test]
    fn a_scrape_gets_the_page_and_the_connection_closes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, Arc::new(|| "flotilla_up 1\n".to_owned())));
            let mut client = TcpStream::connect(addr).await.unwrap();
            client
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            assert!(reply.contains("Content-Length: 14\r\n"), "{reply}");
            assert!(reply.ends_with("\r\n\r\nflotilla_up 1\n"), "{reply}");
        });
    }
}
