//! `io.linkerd.proxy.identity.Identity`: hands out a pre-issued certificate.
//!
//! The real identity controller validates the proxy's token and signs its CSR.
//! In tests the proxy's key pair and a certificate for it already exist on
//! disk (upstream ships them for its own integration tests), so certification
//! just returns that certificate with a fresh expiry.

use crate::log;
use linkerd2_proxy_api::identity as pb;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::{
    path::Path,
    time::{Duration, SystemTime},
};

/// File in `--identity-dir` holding the leaf certificate followed by any
/// intermediates (upstream's naming: the leaf was issued by `ca1`).
pub const CERT_CHAIN_FILE: &str = "ca1-cert.pem";

/// How long each certificate is declared valid, counted from the request.
/// The proxy schedules a refresh at 70% of this (bounded by its
/// `LINKERD2_PROXY_IDENTITY_{MIN,MAX}_REFRESH`), so it re-certifies every
/// ~42 minutes, well within a test's lifetime.
pub const VALIDITY: Duration = Duration::from_secs(60 * 60);

pub struct Identity {
    leaf: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(CERT_CHAIN_FILE);
        let mut certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("failed to read {}: {e}", path.display()))?
            .map(|c| c.map(|c| c.as_ref().to_vec()));
        let leaf = certs
            .next()
            .ok_or_else(|| format!("{}: no PEM CERTIFICATE found", path.display()))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let intermediates = certs
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            leaf,
            intermediates,
        })
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn certify(
        &self,
        req: tonic::Request<pb::CertifyRequest>,
    ) -> Result<tonic::Response<pb::CertifyResponse>, tonic::Status> {
        let remote = req.remote_addr();
        let pb::CertifyRequest {
            identity,
            token,
            certificate_signing_request,
        } = req.into_inner();
        log!(
            "Identity/Certify from {} identity={identity:?} token={}B csr={}B -> leaf + {} intermediate(s), valid {}s",
            fmt_remote(remote),
            token.len(),
            certificate_signing_request.len(),
            self.intermediates.len(),
            VALIDITY.as_secs(),
        );
        if identity.is_empty() {
            return Err(tonic::Status::invalid_argument("identity is required"));
        }
        Ok(tonic::Response::new(pb::CertifyResponse {
            leaf_certificate: self.leaf.clone(),
            intermediate_certificates: self.intermediates.clone(),
            valid_until: Some((SystemTime::now() + VALIDITY).into()),
        }))
    }
}

pub(crate) fn fmt_remote(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_string(), |a| a.to_string())
}
