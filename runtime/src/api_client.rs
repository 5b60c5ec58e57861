//! A small HTTP/1.1 client for hull's Firecracker-compatible API on a unix socket. The kvm backend
//! configures its VMM through it, and the end-to-end tests and benchmarks drive hull with it.
//!
//! It owns the request/response plumbing only: connect, send a request with an optional JSON body, read
//! the status line, the headers and a `Content-Length` body. What the server answers is not trusted: the
//! head is bounded by [`MAX_HEAD_SIZE`], the body by [`MAX_BODY_SIZE`], the whole response must arrive
//! within the client's timeout, and malformed answers are typed errors, never panics.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a request may take to be sent, and its response to arrive, unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest response head (status line and headers) read.
pub const MAX_HEAD_SIZE: usize = 16 * 1024;
/// Largest response body read.
pub const MAX_BODY_SIZE: usize = 1024 * 1024;
/// Most headers in one response.
const MAX_HEADERS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("sending the request: {0}")]
    Send(io::Error),
    #[error("reading the response: {0}")]
    Receive(io::Error),
    #[error("the connection closed before the response was complete")]
    Truncated,
    #[error("the response head is larger than {MAX_HEAD_SIZE} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    BadHead(String),
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    #[error("the response body ({0} bytes) is larger than {MAX_BODY_SIZE} bytes")]
    BodyTooLarge(usize),
}

/// Status, headers and body of one response. The body is kept as (lossy) UTF-8 text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ApiResponse {
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `fault_message` of an error answer (Firecracker's error body), if there is one.
    pub fn fault_message(&self) -> Option<String> {
        self.json()["fault_message"].as_str().map(str::to_string)
    }
}

/// Where hull's API listens. Each [`ApiClient::request`] uses a connection of its own
/// (`Connection: close`); [`ApiClient::connect`] gives a kept-alive connection for several requests.
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another time limit per request.
    pub fn with_timeout(self, timeout: Duration) -> ApiClient {
        ApiClient { timeout, ..self }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a connection for several requests in a row.
    pub fn connect(&self) -> Result<ApiConnection, ApiClientError> {
        let stream = UnixStream::connect(&self.socket).map_err(|source| ApiClientError::Connect {
            path: self.socket.clone(),
            source,
        })?;
        Ok(ApiConnection {
            reader: BufReader::new(stream),
            timeout: self.timeout,
        })
    }

    /// Sends one request on a connection of its own and reads the response.
    pub fn request(&self, method: &str, uri: &str, body: Option<&str>) -> Result<ApiResponse, ApiClientError> {
        let mut conn = self.connect()?;
        conn.send(method, uri, body, false)?;
        conn.read_response()
    }

    pub fn get(&self, uri: &str) -> Result<ApiResponse, ApiClientError> {
        self.request("GET", uri, None)
    }

    pub fn put(&self, uri: &str, body: &serde_json::Value) -> Result<ApiResponse, ApiClientError> {
        self.request("PUT", uri, Some(&body.to_string()))
    }

    pub fn patch(&self, uri: &str, body: &serde_json::Value) -> Result<ApiResponse, ApiClientError> {
        self.request("PATCH", uri, Some(&body.to_string()))
    }
}

/// One open connection to the API socket.
pub struct ApiConnection {
    reader: BufReader<UnixStream>,
    timeout: Duration,
}

impl ApiConnection {
    /// Sends a request; `body` (JSON) goes with `Content-Type` and `Content-Length`. With `keep_alive` the
    /// connection stays open for the next request, else the request says `Connection: close`.
    pub fn send(
        &mut self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        keep_alive: bool,
    ) -> Result<(), ApiClientError> {
        self.send_raw(encode_request(method, uri, body, keep_alive).as_bytes())
    }

    /// Sends bytes as they are (for tests that send what no well-behaved client would).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ApiClientError> {
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(ApiClientError::Send)?;
        stream.write_all(bytes).map_err(ApiClientError::Send)
    }

    /// Reads the next response; all of it must arrive within the timeout.
    pub fn read_response(&mut self) -> Result<ApiResponse, ApiClientError> {
        let deadline = Instant::now() + self.timeout;
        read_response(&mut WithDeadline {
            reader: &mut self.reader,
            deadline,
        })
    }

    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }
}

/// A buffered connection whose reads fail with `TimedOut` once `deadline` has passed.
struct WithDeadline<'a> {
    reader: &'a mut BufReader<UnixStream>,
    deadline: Instant,
}

impl WithDeadline<'_> {
    fn arm(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no complete response in time"));
        }
        self.reader.get_ref().set_read_timeout(Some(left))
    }
}

impl Read for WithDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reader.buffer().is_empty() {
            self.arm()?;
        }
        self.reader.read(buf)
    }
}

impl BufRead for WithDeadline<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.reader.buffer().is_empty() {
            self.arm()?;
        }
        self.reader.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.reader.consume(amt)
    }
}

fn encode_request(method: &str, uri: &str, body: Option<&str>, keep_alive: bool) -> String {
    let mut request = format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    request
}

/// Reads one response: the head up to its empty line, then a `Content-Length` body (or, without one, the
/// rest of the stream; nothing for 1xx, 204 and 304).
fn read_response(reader: &mut impl BufRead) -> Result<ApiResponse, ApiClientError> {
    let head = read_head(reader)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ApiClientError::BadHead("incomplete head".into())),
        Err(e) => return Err(ApiClientError::BadHead(e.to_string())),
    }
    let status = parsed
        .code
        .ok_or_else(|| ApiClientError::BadHead("no status code".into()))?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let content_length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| {
            v.parse::<usize>()
                .map_err(|_| ApiClientError::BadContentLength(v.clone()))
        })
        .transpose()?;
    let mut body = Vec::new();
    match content_length {
        Some(n) if n > MAX_BODY_SIZE => return Err(ApiClientError::BodyTooLarge(n)),
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ApiClientError::Truncated,
                _ => ApiClientError::Receive(e),
            })?;
        }
        None if status == 204 || status == 304 || (100..200).contains(&status) => {}
        None => {
            reader
                .take(MAX_BODY_SIZE as u64 + 1)
                .read_to_end(&mut body)
                .map_err(ApiClientError::Receive)?;
            if body.len() > MAX_BODY_SIZE {
                return Err(ApiClientError::BodyTooLarge(body.len()));
            }
        }
    }
    Ok(ApiResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The response head, through the empty line that ends it, at most [`MAX_HEAD_SIZE`] bytes.
fn read_head(reader: &mut impl BufRead) -> Result<Vec<u8>, ApiClientError> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let limit = (MAX_HEAD_SIZE + 1 - start) as u64;
        let n = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut head)
            .map_err(ApiClientError::Receive)?;
        if head.len() > MAX_HEAD_SIZE {
            return Err(ApiClientError::HeadTooLarge);
        }
        if n == 0 || !head.ends_with(b"\n") {
            return Err(ApiClientError::Truncated);
        }
        let line = &head[start..];
        if start > 0 && (line == b"\r\n" || line == b"\n") {
            return Ok(head);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn read(raw: &[u8]) -> Result<ApiResponse, ApiClientError> {
        read_response(&mut BufReader::new(raw))
    }

    #[test]
    fn responses_are_read_by_content_length() {
        let raw = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n\
                    {\"fault_message\":\"x\"}trailing";
        let resp = read(raw).unwrap();
        assert_eq!(resp.status, 400);
        assert!(!resp.is_success());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["fault_message"], "x");
        assert_eq!(resp.fault_message().as_deref(), Some("x"));
        let resp = read(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (204, ""));
        assert!(resp.is_success());
        let resp = read(b"HTTP/1.1 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(resp.body, "to the end");
    }

    #[test]
    fn malformed_or_oversized_responses_are_errors() {
        assert!(matches!(read(b"garbage\r\n\r\n"), Err(ApiClientError::BadHead(_))));
        assert!(matches!(read(b""), Err(ApiClientError::Truncated)));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"),
            Err(ApiClientError::Truncated)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
            Err(ApiClientError::Truncated)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(ApiClientError::BadContentLength(_))
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY_SIZE + 1);
        assert!(matches!(read(huge.as_bytes()), Err(ApiClientError::BodyTooLarge(_))));
        let long_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_SIZE));
        assert!(matches!(read(long_head.as_bytes()), Err(ApiClientError::HeadTooLarge)));
        let endless = vec![b'a'; MAX_BODY_SIZE + 10];
        let raw = [&b"HTTP/1.1 200 OK\r\n\r\n"[..], &endless].concat();
        assert!(matches!(read(&raw), Err(ApiClientError::BodyTooLarge(_))));
    }

    #[test]
    fn requests_carry_a_json_body_and_say_whether_to_close() {
        let req = encode_request("PUT", "/vsock", Some("{}"), false);
        assert_eq!(
            req,
            "PUT /vsock HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        let req = encode_request("GET", "/", None, true);
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
        );
    }

    /// A server on a fresh socket that answers each connection with `answer` after reading a request head.
    fn serve(answer: &'static [u8], dir: &Path) -> (PathBuf, thread::JoinHandle<Vec<u8>>) {
        let path = dir.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                if reader.read_until(b'\n', &mut request).unwrap() == 0 {
                    break;
                }
            }
            reader.get_mut().write_all(answer).unwrap();
            request
        });
        (path, server)
    }

    #[test]
    fn a_request_goes_over_the_socket_and_the_answer_comes_back() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-api-client-").unwrap();
        let (path, server) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}",
            dir.as_path(),
        );
        let resp = ApiClient::new(&path).get("/").unwrap();
        assert_eq!(resp.json()["state"], "Paused");
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-api-client-").unwrap();
        let path = dir.as_path().join("api.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = ApiClient::new(&path).with_timeout(Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(matches!(client.get("/"), Err(ApiClientError::Receive(_))));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            ApiClient::new(dir.as_path().join("none")).get("/"),
            Err(ApiClientError::Connect { .. })
        ));
    }
}
