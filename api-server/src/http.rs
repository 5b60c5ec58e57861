//! HTTP/1.1 framing for the API: turning bytes read from a connection into a [`Request`] and a [`Response`]
//! into bytes. Everything here comes from an untrusted client: head and body sizes are bounded before
//! anything is buffered, only `Content-Length` bodies are accepted, and no input can make it panic.

use std::fmt;

/// Largest request body accepted (Firecracker's limit, 50 KiB).
pub const MAX_BODY_SIZE: usize = 50 * 1024;
/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_SIZE: usize = 8 * 1024;
/// Most headers a request may carry.
const MAX_HEADERS: usize = 32;
/// Most bytes a connection ever buffers: one request of the largest size.
pub const MAX_REQUEST_SIZE: usize = MAX_HEAD_SIZE + MAX_BODY_SIZE;

/// Why a request could not be framed. After any of these the connection is answered with 400 and closed,
/// since the position of the next request in the stream is unknown. The `Display` text is the
/// `fault_message`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("Invalid HTTP request: {0}.")]
    Malformed(String),
    #[error("Request headers are larger than the limit of {MAX_HEAD_SIZE} bytes allowed by server.")]
    HeadTooLarge,
    #[error("Request has more than {MAX_HEADERS} headers.")]
    TooManyHeaders,
    #[error("Request payload with size {0} is larger than the limit of {MAX_BODY_SIZE} allowed by server.")]
    PayloadTooLarge(u64),
    #[error("Invalid Content-Length header: {0:?}.")]
    InvalidContentLength(String),
    #[error("Transfer-Encoding is not supported; send the body with a Content-Length header.")]
    TransferEncodingUnsupported,
    #[error("Unsupported HTTP version 1.{0}.")]
    UnsupportedVersion(u8),
}

/// Request methods the API knows; anything else is kept by name so it can be reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Get => f.write_str("GET"),
            Method::Put => f.write_str("PUT"),
            Method::Patch => f.write_str("PATCH"),
            Method::Other(name) => f.write_str(name),
        }
    }
}

/// One complete request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target without its query string.
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
}

/// What the bytes buffered so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request is not complete yet. `expects_continue` is set once its head is complete and the client
    /// asked (`Expect: 100-continue`) to be told to send the body.
    Incomplete { expects_continue: bool },
    /// A request, and how many bytes of the buffer it took.
    Complete(Request, usize),
}

/// Frames the first request in `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_SIZE => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_SIZE => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => {
            return Ok(Parsed::Incomplete {
                expects_continue: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };

    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    if version > 1 {
        return Err(HttpError::UnsupportedVersion(version));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!(
            "the request target {target:?} is not an absolute path"
        )));
    }

    let mut content_length: Option<u64> = None;
    let mut expects_continue = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for header in req.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HttpError::Malformed(format!("the value of header {} is not UTF-8", header.name)))?;
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(HttpError::InvalidContentLength(value.to_string()));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncodingUnsupported);
        } else if header.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                connection_close |= option.eq_ignore_ascii_case("close");
                connection_keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        }
    }

    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_SIZE as u64 {
        return Err(HttpError::PayloadTooLarge(body_len));
    }
    // Bounded by MAX_BODY_SIZE just above, so it fits in usize.
    let total = head_len + body_len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete { expects_continue });
    }

    let path = target.split(['?', '#']).next().unwrap_or(target).to_string();
    let keep_alive = if version == 1 {
        !connection_close
    } else {
        connection_keep_alive
    };
    let request = Request {
        method: Method::from_token(method),
        path,
        body: buf[head_len..total].to_vec(),
        keep_alive,
    };
    Ok(Parsed::Complete(request, total))
}

fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::InvalidContentLength(value.to_string()));
    }
    // All digits: the only failure left is overflow, which is too large by any measure.
    Ok(value.parse::<u64>().unwrap_or(u64::MAX))
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response; bodies are always JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    /// Methods to list in an `Allow` header (for 405).
    pub allow: Option<String>,
}

impl Response {
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
            allow: None,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            body: Some(value.to_string()),
            allow: None,
        }
    }

    /// An error response in Firecracker's shape: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "fault_message": message }))
    }

    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: hull API\r\n",
            self.status,
            reason_phrase(self.status)
        );
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        });
        if let Some(allow) = &self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None if self.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> (Request, usize) {
        match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete(req, used)) => (req, used),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn a_request_with_a_body_is_framed() {
        let raw = "PUT /boot-source?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GET";
        let (req, used) = complete(raw);
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.path, "/boot-source");
        assert_eq!(req.body, b"{}");
        assert!(req.keep_alive);
        assert_eq!(used, raw.len() - 3);
    }

    #[test]
    fn partial_input_asks_for_more() {
        assert_eq!(
            parse_request(b"GET / HT"),
            Ok(Parsed::Incomplete {
                expects_continue: false
            })
        );
        assert_eq!(
            parse_request(b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}"),
            Ok(Parsed::Incomplete {
                expects_continue: false
            })
        );
        assert_eq!(
            parse_request(b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
            Ok(Parsed::Incomplete { expects_continue: true })
        );
    }

    #[test]
    fn connection_options_decide_keep_alive() {
        assert!(!complete("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.keep_alive);
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_they_arrive() {
        let raw = format!("PUT /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_SIZE + 1);
        assert_eq!(
            parse_request(raw.as_bytes()),
            Err(HttpError::PayloadTooLarge(MAX_BODY_SIZE as u64 + 1))
        );
        let raw = "PUT /a HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert!(matches!(
            parse_request(raw.as_bytes()),
            Err(HttpError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn oversized_heads_are_refused() {
        let raw = format!("GET / HTTP/1.1\r\nX-Filler: {}", "a".repeat(MAX_HEAD_SIZE));
        assert_eq!(parse_request(raw.as_bytes()), Err(HttpError::HeadTooLarge));
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(raw.as_bytes()), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for raw in [
            &b"\x00\x01\x02 garbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET foo HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(parse_request(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn mutated_requests_never_panic() {
        // A fixed-seed xorshift walk over byte mutations and truncations of a valid request.
        let valid =
            b"PATCH /machine-config HTTP/1.1\r\nContent-Length: 16\r\nExpect: 100-continue\r\n\r\n{\"vcpu_count\":2}";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bytes = valid.to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let _ = parse_request(&bytes[..cut]);
        }
    }

    #[test]
    fn responses_are_serialized_with_their_length() {
        let bytes = Response::fault(400, "bad").to_bytes(true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Content-Length: 23\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"bad\"}"), "{text}");
        let text = String::from_utf8(Response::no_content().to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n") && text.contains("Connection: close"));
        assert!(!text.contains("Content-Length"));
    }
}
