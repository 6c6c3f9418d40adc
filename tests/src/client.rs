//! A minimal HTTPS client for tests: hyper 1 (HTTP/1.1) over tokio-rustls, one connection
//! per request, so every request does a full (mutual) TLS handshake.
//!
//! ```no_run
//! # async fn demo(upstream: &vitalbridge_tests::upstream::Upstream,
//! #               pki: &vitalbridge_tests::pki::TestPki) -> Result<(), vitalbridge_tests::client::ClientError> {
//! use vitalbridge_tests::client::HttpsClient;
//! let client = HttpsClient::new(pki.client_config());
//! let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": []});
//! let resp = client.post_json(&upstream.url(), &bundle).await?;
//! assert_eq!(resp.status, 200);
//! let answer = resp.json().expect("a FHIR JSON body");
//! assert_eq!(answer["type"], "transaction-response");
//! # Ok(()) }
//! ```

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Default bound on one request (connect + handshake + response).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host[:port]/path`.
    #[error("bad url {0}")]
    Url(String),
    /// TCP connect failed (e.g. connection refused).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed on our side (e.g. the server's certificate was rejected).
    #[error("tls handshake: {0}")]
    Tls(io::Error),
    /// The HTTP exchange failed, e.g. the server closed the connection without answering
    /// or refused our certificate after the handshake (TLS 1.3 reports that on first read).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The whole request took longer than the client's timeout.
    #[error("timed out")]
    Timeout,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// A header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// HTTPS client with a fixed rustls config (see [`crate::pki::TestPki::client_config`]).
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpsClient {
    /// A client using `tls` for every connection, 30 s timeout per request.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HttpsClient {
        HttpsClient {
            connector: TlsConnector::from(tls),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Changes the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpsClient {
        self.timeout = timeout;
        self
    }

    /// `POST url` with `body` as `application/fhir+json`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<HttpResponse, ClientError> {
        let bytes = serde_json::to_vec(body).expect("a Value always serializes");
        self.request(Method::POST, url, Some(bytes)).await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<HttpResponse, ClientError> {
        self.request(Method::GET, url, None).await
    }

    /// Any request; a body is sent as `application/fhir+json`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ClientError> {
        tokio::time::timeout(self.timeout, self.request_inner(method, url, body))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn request_inner(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::Url(url.to_string()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| ClientError::Url(url.to_string()))?;

        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(ClientError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);

        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/fhir+json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/fhir+json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| ClientError::Url(url.to_string()))?;
        let resp = sender.send_request(req).await;
        let result = match resp {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok(HttpResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            }
            Err(e) => Err(ClientError::Http(e)),
        };
        driver.abort();
        result
    }
}
