//! One HTTPS request on its own connection (hyper over tokio-rustls): token requests,
//! discovery and `uplink test`'s CapabilityStatement read. These are rare (a token lasts
//! minutes), so no connection is kept.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error_chain::Chain;

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// `WWW-Authenticate`, escaped and clipped.
    pub www_authenticate: Option<String>,
    /// The body (at most the caller's limit).
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be used.
    #[error("{0}")]
    Url(String),
    /// TCP connection, TLS handshake, request or response failed or timed out.
    #[error("{why}")]
    Failed {
        /// What happened.
        why: String,
        /// The TLS handshake's failure label ([`crate::tls::cause_label`]), if it was that.
        tls: Option<&'static str>,
    },
}

fn failed(why: String) -> HttpError {
    HttpError::Failed { why, tls: None }
}

/// Sends `method` to `url` with `headers` and `body` (a form, when given) and reads at most
/// `max_body` bytes of the answer, all within `timeout`.
pub async fn request(
    tls: &Arc<ClientConfig>,
    method: Method,
    url: &url::Url,
    headers: &[(header::HeaderName, HeaderValue)],
    form: Option<String>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    if url.scheme() != "https" {
        return Err(HttpError::Url(format!("{url} is not https")));
    }
    let host = url
        .host_str()
        .ok_or_else(|| HttpError::Url(format!("{url} has no host")))?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let name =
        ServerName::try_from(bare.clone()).map_err(|e| HttpError::Url(format!("{url}: {e}")))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let exchange = async {
        let tcp = TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| failed(format!("cannot connect to {bare}:{port}: {}", Chain(&e))))?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Failed {
                why: crate::tls::explain(&e),
                tls: Some(crate::tls::io_cause_label(&e)),
            })?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(format!("HTTP handshake failed: {}", Chain(&e))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(target.as_str())
            .header(header::HOST, authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("vitalbridge/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let body = match form {
            Some(form) => {
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| failed(format!("cannot build request: {}", Chain(&e))))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(format!("request failed: {}", Chain(&e))))?;
        let status = response.status().as_u16();
        let www_authenticate = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| super::wire::printable(&String::from_utf8_lossy(v.as_bytes())));
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer failed: {}", Chain(&*e))))?
            .to_bytes();
        Ok(Response {
            status,
            www_authenticate,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        failed(format!(
            "no answer from {authority} within {}s",
            timeout.as_secs()
        ))
    })?
}
