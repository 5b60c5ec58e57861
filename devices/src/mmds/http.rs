//! The guest's side of MMDS in HTTP: one request framed out of the bytes a TCP connection delivered, and
//! the response bytes. Requests are bounded ([`MAX_REQUEST_LEN`] for head and body together) and parsed by
//! `httparse`; anything it refuses, or that exceeds the bounds, is a 400 with the reason as plain text.
//!
//! Never trusts: any byte of the request. Header values reach the service only as the few fields below,
//! each bounded.

/// Head and body of one guest request together.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Headers parsed; a request with more is refused.
const MAX_HEADERS: usize = 32;
/// Longest path kept (and echoed in a 404).
pub const MAX_PATH_LEN: usize = 1024;

/// The parts of a guest request the service looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRequest {
    pub method: String,
    /// The path without a query string.
    pub path: String,
    pub accept_json: bool,
    /// `X-metadata-token` or `X-aws-ec2-metadata-token`.
    pub token: Option<String>,
    /// `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds`.
    pub token_ttl: Option<String>,
    pub forwarded_for: bool,
}

/// The outcome of framing what a connection has received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// More bytes are needed.
    Partial,
    /// A whole request.
    Request(GuestRequest),
    /// Not a request MMDS will serve; the reason goes back in a 400.
    Invalid(String),
}

/// Frames one request from `buf`.
pub fn frame_request(buf: &[u8]) -> Framed {
    if buf.len() > MAX_REQUEST_LEN {
        return Framed::Invalid(format!("Request longer than {MAX_REQUEST_LEN} bytes."));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Framed::Partial,
        Err(e) => return Framed::Invalid(format!("Invalid request: {e}.")),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Framed::Invalid("Invalid request line.".into());
    };
    let mut out = GuestRequest {
        method: method.to_string(),
        ..Default::default()
    };
    // An absolute URI names the host first; only its path matters.
    let target = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') || path.len() > MAX_PATH_LEN {
        return Framed::Invalid("Invalid URI.".into());
    }
    out.path = path.to_string();
    let mut body_len: usize = 0;
    for h in req.headers.iter() {
        let value = || {
            String::from_utf8_lossy(h.value)
                .trim()
                .chars()
                .take(256)
                .collect::<String>()
        };
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "accept" => out.accept_json = value().to_ascii_lowercase().contains("application/json"),
            "x-metadata-token" | "x-aws-ec2-metadata-token" => out.token = Some(value()),
            "x-metadata-token-ttl-seconds" | "x-aws-ec2-metadata-token-ttl-seconds" => out.token_ttl = Some(value()),
            "x-forwarded-for" => out.forwarded_for = true,
            "content-length" => match value().parse::<usize>() {
                Ok(n) => body_len = n,
                Err(_) => return Framed::Invalid("Invalid Content-Length.".into()),
            },
            "transfer-encoding" => return Framed::Invalid("Transfer-Encoding is not supported.".into()),
            _ => {}
        }
    }
    // A body is read (so the framing stays right) and ignored: MMDS takes none.
    match head_len.checked_add(body_len) {
        Some(total) if total <= MAX_REQUEST_LEN => {
            if buf.len() < total {
                Framed::Partial
            } else {
                Framed::Request(out)
            }
        }
        _ => Framed::Invalid(format!("Request longer than {MAX_REQUEST_LEN} bytes.")),
    }
}

/// One answer to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResponse {
    pub status: u16,
    pub json: bool,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl GuestResponse {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        GuestResponse {
            status,
            json: false,
            body: body.into(),
            allow: None,
        }
    }

    /// The bytes on the wire; the connection closes after them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            501 => "Not Implemented",
            _ => "Error",
        };
        let content_type = if self.json { "application/json" } else { "text/plain" };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: hull-mmds\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.status,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head += &format!("Allow: {allow}\r\n");
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_a_get_with_its_headers() {
        let raw = b"GET /latest/meta-data?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: Application/JSON\r\nX-metadata-token: abc\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(frame_request(&raw[..cut]), Framed::Partial, "cut at {cut}");
        }
        let Framed::Request(r) = frame_request(raw) else {
            panic!()
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/latest/meta-data"));
        assert!(r.accept_json && !r.forwarded_for);
        assert_eq!(r.token.as_deref(), Some("abc"));
    }

    #[test]
    fn frames_a_token_put_and_absolute_uris() {
        let raw = b"PUT http://169.254.169.254/latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 3\r\n\r\nabc";
        let Framed::Request(r) = frame_request(raw) else {
            panic!()
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/latest/api/token"));
        assert_eq!(r.token_ttl.as_deref(), Some("60"));
        assert!(r.forwarded_for);
        assert_eq!(frame_request(&raw[..raw.len() - 1]), Framed::Partial);
    }

    #[test]
    fn hostile_requests_are_refused_not_panicked_on() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LEN));
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40));
        let cases: Vec<Vec<u8>> = vec![
            b"\x00\x01\x02\r\n\r\n".to_vec(),
            b"GET relative HTTP/1.1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            long.into_bytes(),
            many_headers.into_bytes(),
        ];
        for c in cases {
            assert!(
                matches!(frame_request(&c), Framed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(&c)
            );
        }
    }

    #[test]
    fn responses_carry_length_type_and_allow() {
        let mut r = GuestResponse::text(405, "Not allowed HTTP method.");
        r.allow = Some("GET, PUT");
        let s = String::from_utf8(r.to_bytes()).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{s}");
        assert!(
            s.contains("Content-Length: 24\r\n") && s.contains("Allow: GET, PUT\r\n"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\nNot allowed HTTP method."));
    }
}
