//! [`UpstreamConfig`]: the server's TLS identity, base path, and how strict it is with
//! entries (required elements, a rejection rule, transaction semantics).

use std::sync::Arc;

use serde_json::Value;

use crate::pki::{ServerIdentity, TestPki};

/// Why the [`UpstreamConfig::reject_when`] rule refuses an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status for the entry (e.g. 422 or 400).
    pub status: u16,
    /// Text for the OperationOutcome's `diagnostics`.
    pub message: String,
}

/// What a `transaction` Bundle does when one entry is in error (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionFailureMode {
    /// FHIR semantics: nothing applied, whole-request error status + OperationOutcome.
    #[default]
    AllOrNothing,
    /// Non-conformant: per-entry statuses like a batch (answer type `transaction-response`).
    PerEntry,
}

type RejectFn = dyn Fn(&Value) -> Option<Rejection> + Send + Sync;

/// Configuration for [`Upstream::start`].
#[derive(Clone)]
pub struct UpstreamConfig {
    /// TLS server config (identity + client verification).
    pub(super) tls: Arc<rustls::ServerConfig>,
    /// Base path, no trailing slash (`/fhir`).
    pub(super) base_path: String,
    /// Optional per-entry rejection rule.
    pub(super) reject: Option<Arc<RejectFn>>,
    /// Transaction semantics on entry errors.
    pub(super) transaction_mode: TransactionFailureMode,
    /// Reject Observations missing `status` or `code`.
    pub(super) required_elements: bool,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_path", &self.base_path)
            .field("reject", &self.reject.is_some())
            .field("transaction_mode", &self.transaction_mode)
            .field("required_elements", &self.required_elements)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// Serves the trusted server certificate of `pki`, requires a client certificate from its
    /// CA, base path `/fhir`, all-or-nothing transactions, required elements checked, no
    /// rejection rule.
    pub fn new(pki: &TestPki) -> UpstreamConfig {
        UpstreamConfig {
            tls: pki.server_config(ServerIdentity::Trusted),
            base_path: "/fhir".to_string(),
            reject: None,
            transaction_mode: TransactionFailureMode::AllOrNothing,
            required_elements: true,
        }
    }

    /// Presents another server identity (rogue CA, wrong name) for negative TLS tests.
    pub fn identity(mut self, pki: &TestPki, identity: ServerIdentity) -> Self {
        self.tls = pki.server_config(identity);
        self
    }

    /// Uses an arbitrary rustls server config.
    pub fn tls_config(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Base path of the FHIR endpoint, e.g. `/fhir` (default) or `/r4`. Empty string = root.
    pub fn base_path(mut self, base: &str) -> Self {
        self.base_path = base.trim_end_matches('/').to_string();
        self
    }

    /// Rejects every entry whose resource makes `rule` return `Some`.
    pub fn reject_when(
        mut self,
        rule: impl Fn(&Value) -> Option<Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.reject = Some(Arc::new(rule));
        self
    }

    /// Rejects, with `status`, every entry whose resource JSON contains `marker` anywhere
    /// (e.g. a device id or a value the test planted).
    pub fn reject_marker(self, marker: &str, status: u16) -> Self {
        let marker = marker.to_string();
        self.reject_when(move |resource| {
            let text = serde_json::to_string(resource).unwrap_or_default();
            text.contains(&marker).then(|| Rejection {
                status,
                message: "resource rejected by test rule".to_string(),
            })
        })
    }

    /// Transaction semantics on entry errors (default all-or-nothing).
    pub fn transaction_failure(mut self, mode: TransactionFailureMode) -> Self {
        self.transaction_mode = mode;
        self
    }

    /// Whether Observations without `status` or `code` (both 1..1 in R4) are rejected with
    /// 422 (default true).
    pub fn required_elements(mut self, on: bool) -> Self {
        self.required_elements = on;
        self
    }
}
