//! MMDS, the microVM metadata service (Firecracker's, with its guest-visible behaviour): a JSON data store
//! the host fills through the API, which the guest reads over HTTP at a link-local IPv4 address
//! (169.254.169.254 by default) through one of its network interfaces.
//!
//! Parts: `data_store` (the document, its size limit, merge patches, lookups), `token` (V2 session
//! tokens), `http` (framing the guest's requests and writing answers), `stack` (the frames: ARP replies
//! for the MMDS address and a minimal TCP responder, Firecracker's "dumbo"). [`Mmds`] ties the first three
//! together and is shared (`Arc<Mutex>`) between the API thread and every net device that serves it; each
//! such device owns one [`stack::MmdsStack`], which consumes the guest's MMDS frames in the TX path, so
//! they never reach the TAP, and hands its answers to the RX path.
//!
//! Never trusts: anything the guest sends (see `http` and `stack`).

pub mod data_store;
pub mod http;
pub mod stack;
pub mod token;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

pub use data_store::{DataStore, DataStoreError, OutputFormat, DEFAULT_SIZE_LIMIT};
pub use http::{GuestRequest, GuestResponse};
pub use stack::MmdsStack;
use token::TokenAuthority;

/// Firecracker's default MMDS address.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The path of `PUT` for a session token.
pub const TOKEN_PATH: &str = "/latest/api/token";

/// Which guest protocol MMDS speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MmdsVersion {
    /// `GET` alone works; sessions are optional.
    #[default]
    V1,
    /// Every `GET` needs a live session token.
    V2,
}

/// The service state shared by the API and the net devices.
#[derive(Debug, Default)]
pub struct Mmds {
    data: DataStore,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: TokenAuthority,
    metrics: Arc<MmdsMetrics>,
}

crate::device_metrics! {
    /// What MMDS saw and answered, over every interface that serves it (Firecracker's `mmds` names).
    pub struct MmdsMetrics {
        /// Frames for MMDS (ARP about its address, IPv4 to it, anything to its MAC), consumed.
        rx_accepted,
        /// Frames from the guest MMDS looked at.
        rx_count,
        /// Frames too short to hold an Ethernet header.
        rx_bad_eth,
        /// V2 requests without a session token.
        rx_no_token,
        /// V2 requests with a token that is unknown or expired.
        rx_invalid_token,
        /// HTTP answers sent.
        tx_count,
        /// Frames queued for the guest.
        tx_frames,
        /// Bytes in those frames.
        tx_bytes,
        /// Answer frames dropped because the guest did not take the queued ones.
        tx_errors,
        /// TCP connections opened by the guest.
        connections_created,
        /// TCP connections closed, reset or evicted.
        connections_destroyed,
    }
}

/// The handle the API and the devices hold.
pub type SharedMmds = Arc<Mutex<Mmds>>;

impl Mmds {
    /// An empty service whose data store holds at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Mmds {
            data: DataStore::new(limit),
            ..Default::default()
        }
    }

    /// The counters (shared with every interface's [`MmdsStack`]).
    pub fn metrics(&self) -> Arc<MmdsMetrics> {
        self.metrics.clone()
    }

    pub fn shared(self) -> SharedMmds {
        Arc::new(Mutex::new(self))
    }

    pub fn data_store(&self) -> &DataStore {
        &self.data
    }

    pub fn data_store_mut(&mut self) -> &mut DataStore {
        &mut self.data
    }

    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// `PUT /mmds/config`'s guest-facing parts.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// Answers one guest request.
    pub fn answer(&mut self, req: &GuestRequest) -> GuestResponse {
        match req.method.as_str() {
            "PUT" => self.answer_put(req),
            "GET" => self.answer_get(req),
            _ => GuestResponse {
                allow: Some("GET, PUT"),
                ..GuestResponse::text(405, "Not allowed HTTP method.")
            },
        }
    }

    fn answer_put(&mut self, req: &GuestRequest) -> GuestResponse {
        if req.path.trim_end_matches('/') != TOKEN_PATH {
            return not_found(&req.path);
        }
        if req.forwarded_for {
            return GuestResponse::text(
                400,
                "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
            );
        }
        let Some(ttl) = &req.token_ttl else {
            return GuestResponse::text(
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.",
            );
        };
        match self.tokens.generate(ttl) {
            Ok(token) => GuestResponse::text(200, token),
            Err(e) => GuestResponse::text(400, e.to_string()),
        }
    }

    fn answer_get(&mut self, req: &GuestRequest) -> GuestResponse {
        if self.version == MmdsVersion::V2 {
            match &req.token {
                None => {
                    self.metrics.rx_no_token.inc();
                    return GuestResponse::text(
                        401,
                        "No MMDS token provided. Use `X-metadata-token` header to specify the session token.",
                    );
                }
                Some(token) if !self.tokens.is_valid(token) => {
                    self.metrics.rx_invalid_token.inc();
                    return GuestResponse::text(401, "MMDS token not valid.");
                }
                Some(_) => {}
            }
        }
        // Before the host put any data, every resource is missing (Firecracker answers 404 too).
        if !self.data.is_initialized() {
            return not_found(&req.path);
        }
        let format = if req.accept_json && !self.imds_compat {
            OutputFormat::Json
        } else {
            OutputFormat::Imds
        };
        match self.data.lookup(&req.path, format) {
            Ok(body) => GuestResponse {
                json: format == OutputFormat::Json,
                ..GuestResponse::text(200, body)
            },
            Err(data_store::LookupError::NotFound) => not_found(&req.path),
            Err(data_store::LookupError::UnsupportedType) => {
                GuestResponse::text(501, "Cannot retrieve value. The value has an unsupported type.")
            }
        }
    }
}

fn not_found(path: &str) -> GuestResponse {
    GuestResponse::text(404, format!("Resource not found: {path}."))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mmds(version: MmdsVersion) -> Mmds {
        let mut m = Mmds::new(DEFAULT_SIZE_LIMIT);
        m.data_store_mut()
            .put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "count": 2}}}))
            .unwrap();
        m.configure(version, false);
        m
    }

    fn get(path: &str) -> GuestRequest {
        GuestRequest {
            method: "GET".into(),
            path: path.into(),
            ..Default::default()
        }
    }

    fn put_token(ttl: Option<&str>) -> GuestRequest {
        GuestRequest {
            method: "PUT".into(),
            path: TOKEN_PATH.into(),
            token_ttl: ttl.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn v1_answers_gets_without_a_token_in_both_formats() {
        let mut m = mmds(MmdsVersion::V1);
        assert_eq!(m.answer(&get("/latest/meta-data")).body, "ami-id\ncount");
        assert_eq!(m.answer(&get("/latest/meta-data/ami-id")).body, "ami-1");
        let mut req = get("/latest/meta-data/count");
        assert_eq!(m.answer(&req).status, 501);
        req.accept_json = true;
        let r = m.answer(&req);
        assert_eq!((r.status, r.json, r.body.as_str()), (200, true, "2"));
        // IMDS-compatible mode answers in IMDS text whatever the Accept header says.
        m.configure(MmdsVersion::V1, true);
        assert_eq!(m.answer(&req).status, 501);
        // A token is not needed, and a bad one does not hurt.
        let mut req = get("/latest/meta-data/ami-id");
        req.token = Some("bogus".into());
        assert_eq!(m.answer(&req).status, 200);
    }

    #[test]
    fn v2_needs_a_live_token() {
        let mut m = mmds(MmdsVersion::V2);
        let r = m.answer(&get("/latest/meta-data/ami-id"));
        assert_eq!(r.status, 401);
        assert!(r.body.starts_with("No MMDS token provided"));
        let mut req = get("/latest/meta-data/ami-id");
        req.token = Some("bogus".into());
        assert_eq!(m.answer(&req).body, "MMDS token not valid.");
        let token = m.answer(&put_token(Some("60")));
        assert_eq!(token.status, 200);
        req.token = Some(token.body);
        assert_eq!(m.answer(&req).body, "ami-1");
    }

    #[test]
    fn token_requests_are_checked() {
        let mut m = mmds(MmdsVersion::V2);
        assert_eq!(m.answer(&put_token(None)).status, 400);
        let r = m.answer(&put_token(Some("21601")));
        assert_eq!(r.status, 400);
        assert!(r.body.contains("between 1 and 21600"), "{}", r.body);
        let mut req = put_token(Some("5"));
        req.forwarded_for = true;
        assert_eq!(m.answer(&req).status, 400);
        req.path = "/latest/other".into();
        assert_eq!(m.answer(&req).status, 404);
    }

    #[test]
    fn missing_resources_and_other_methods() {
        let mut m = mmds(MmdsVersion::V1);
        let r = m.answer(&get("/latest/nope"));
        assert_eq!((r.status, r.body.as_str()), (404, "Resource not found: /latest/nope."));
        let mut req = get("/");
        req.method = "POST".into();
        let r = m.answer(&req);
        assert_eq!((r.status, r.allow), (405, Some("GET, PUT")));
        let mut empty = Mmds::new(100);
        assert_eq!(
            empty.answer(&get("/")).status,
            404,
            "nothing is served before the first PUT"
        );
    }
}
