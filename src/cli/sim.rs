//! `portico sim-gateway`: one simulated RD Gateway (TLS + MS-TSGU + the console-token check +
//! faults), for labs and drills that run gateways as separate processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::sim::{Fault, Faults, SimConfig, SimGateway};
use crate::token::{Thumbprint, TrustedCert, Verifier};

/// Options of `portico sim-gateway`.
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub listen: SocketAddr,
    /// The gateway's TLS certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub name: String,
    /// FedAuthSettings' TrustedIssuerCertificates.
    pub trusted_thumbprints: Vec<String>,
    /// Signing certificates installed on the gateway (their keys check token signatures).
    pub trusted_certs: Vec<PathBuf>,
    /// Faults active from the start (`token-reject`, `slow:250`, ...).
    pub faults: Vec<String>,
    /// UDP side: answers each datagram with the gateway's name.
    pub udp: Option<SocketAddr>,
    /// Line-based control socket (loopback TCP address).
    pub control: Option<SocketAddr>,
    /// Open every channel here instead of resolving the requested host.
    pub target_override: Option<SocketAddr>,
}

/// Builds the simulator from `args`; every mistake is reported before anything listens.
pub fn build_config(a: &SimArgs) -> anyhow::Result<SimConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&a.cert)
        .with_context(|| format!("reading {}", a.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", a.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        a.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&a.key)
        .with_context(|| format!("reading the key {}", a.key.display()))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the certificate and key do not go together")?;
    let mut thumbs = Vec::new();
    for (i, t) in a.trusted_thumbprints.iter().enumerate() {
        thumbs.push(
            t.parse::<Thumbprint>()
                .with_context(|| format!("--trusted-thumbprint #{}", i + 1))?,
        );
    }
    let mut trusted = Vec::new();
    for p in &a.trusted_certs {
        trusted.extend(TrustedCert::load(p)?);
    }
    anyhow::ensure!(
        !thumbs.is_empty() || !trusted.is_empty(),
        "give --trusted-thumbprint and/or --trusted-cert: a gateway with no trusted issuer rejects every token"
    );
    let verifier = if thumbs.is_empty() {
        Verifier::new(trusted)
    } else {
        Verifier::from_trust_list(&thumbs, &trusted)
    };
    let mut faults = Faults::none();
    for f in &a.faults {
        faults.set(f.parse::<Fault>().with_context(|| format!("--fault {f}"))?);
    }
    let mut cfg = SimConfig::new(&a.name, Arc::new(tls), verifier);
    cfg.faults = faults;
    cfg.target_override = a.target_override;
    Ok(cfg)
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(a: SimArgs) -> anyhow::Result<()> {
    let cfg = build_config(&a)?;
    let gw = SimGateway::spawn(a.listen, cfg)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(u) = a.udp {
        let udp = tokio::net::UdpSocket::bind(u)
            .await
            .with_context(|| format!("cannot listen on udp {u}"))?;
        tokio::spawn(crate::lab::gateway::udp_name_responder(
            Arc::from(a.name.as_str()),
            udp,
            stop.clone(),
        ));
    }
    if let Some(c) = a.control {
        let l = tokio::net::TcpListener::bind(c)
            .await
            .with_context(|| format!("control: cannot listen on {c}"))?;
        gw.serve_control(l);
    }
    tracing::info!(name = %a.name, addr = %gw.addr(), "simulated gateway listening");
    crate::daemon::wait_for_signal().await?;
    stop.cancel();
    gw.kill();
    Ok(())
}
