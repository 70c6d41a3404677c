//! The checks, as async functions with one deadline per probe (the pool's `timeout`):
//! `tcp` (connect), `tls` (handshake against the configured roots, certificate facts and
//! warnings) and `rdg-token` (a freshly minted console token through HANDSHAKE, TUNNEL_CREATE
//! and TUNNEL_AUTH over MS-TSGU, stopping there, PROTOCOLS.md §4.3). Checks run in the
//! configured order and a failing cheaper check stops the dearer ones.
//!
//! [`Prober`] is built once per pool ([`Prober::from_health`]): the CA file is read and the
//! probe's signing identity loaded then, so a bad file fails the start rather than every probe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::date::parse_http_date;
use super::verdict::{
    classify_channel, classify_error, classify_io, classify_tunnel, Stage, Verdict,
};
use crate::config::{CheckKind, Health};
use crate::rdg::hresult;
use crate::rdg::packet::{CloseChannel, Packet};
use crate::sim::client::{
    unexpected, ClientConfig, ClientError, RdgClient, TunnelStatus, TunnelStep,
};
use crate::sim::Transport;
use crate::token::{mint, MintRequest, SigningIdentity};

/// Client name sent in TUNNEL_AUTH.
pub const PROBE_CLIENT_NAME: &str = "portico-probe";
/// Used when `tls.ca_file` is not set (Debian's bundle).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a [`Prober`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The CA bundle could not be read or holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// A check needs the `tls` table (server name, roots).
    #[error("check {0:?} needs the tls settings (server_name, ca_file)")]
    NeedsTls(&'static str),
    /// The probe's signing certificate or key could not be loaded.
    #[error("rdg-token signing identity: {0}")]
    Signing(#[from] crate::token::TokenError),
    /// rustls refused the configuration.
    #[error("tls client config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The metric label of a check.
pub fn check_label(c: CheckKind) -> &'static str {
    match c {
        CheckKind::Tcp => "tcp",
        CheckKind::Tls => "tls",
        CheckKind::RdgToken => "rdg-token",
    }
}

/// Facts read from the gateway's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub issuer: String,
    /// SHA-1 thumbprint of the issuing certificate (as Windows' certificate store shows it),
    /// when the issuer is in the presented chain or among the configured roots.
    pub issuer_thumbprint: Option<String>,
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub check: CheckKind,
    pub verdict: Verdict,
    /// Where the verdict was reached.
    pub stage: Stage,
    pub elapsed: Duration,
}

/// What one probe found.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// `Healthy` only if every check passed; else the first failing check's verdict.
    pub verdict: Verdict,
    /// Where the verdict was reached.
    pub stage: Stage,
    /// The check that decided (the last one run).
    pub check: Option<CheckKind>,
    /// Every check run, in order.
    pub checks: Vec<CheckReport>,
    /// Status of the RDG_OUT_DATA response (or the failing HTTP status).
    pub http_status: Option<u16>,
    /// The HRESULT that decided a tunnel verdict.
    pub hresult: Option<u32>,
    pub transport: Option<Transport>,
    pub cert: Option<CertFacts>,
    /// Healthy, but worth a look (certificate expiring soon, node name missing from the SANs).
    pub warnings: Vec<String>,
    /// Gateway clock minus ours, seconds (from its `Date:` header).
    pub clock_skew: Option<i64>,
    /// Free text for the log (error message).
    pub detail: Option<String>,
    /// The probe failed for a local reason (out of descriptors or buffers on this host): it
    /// says nothing about the backend and is not counted.
    pub inconclusive: bool,
}

impl ProbeReport {
    fn new() -> Self {
        ProbeReport {
            verdict: Verdict::Healthy,
            stage: Stage::Tcp,
            check: None,
            checks: Vec::new(),
            http_status: None,
            hresult: None,
            transport: None,
            cert: None,
            warnings: Vec::new(),
            clock_skew: None,
            detail: None,
            inconclusive: false,
        }
    }
}

/// What a passing check hands on to the next one of the same probe.
enum Carry {
    None,
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

struct TlsProbe {
    server_name: String,
    client: Arc<rustls::ClientConfig>,
    min_days_left: u32,
    /// The trusted roots (DER), to name the issuer of a leaf presented without its chain.
    roots: Vec<CertificateDer<'static>>,
}

struct RdgProbe {
    identity: Arc<SigningIdentity>,
    host: String,
    port: u16,
    /// The last minted token and when (unix seconds), shared by every backend of the pool.
    token: std::sync::Mutex<Option<(u64, Arc<str>)>>,
    /// Go on to CHANNEL_CREATE for this host and port (the token names it) and close.
    channel: Option<(String, u16)>,
}

/// How long one minted probe token is reused across a pool's backends.
///
/// Signing is an RSA private-key operation (about a millisecond here); one per probe is most
/// of a hundred-backend pool's probing cost. A token names only the canary host, not the
/// gateway, and the FedAuth plug-in keeps no replay list (a VMM token is reusable for its
/// whole TTL anyway), so one token serves every backend probed within this window. It is
/// minted at most this long before use, far inside its [`crate::token::DEFAULT_TTL_SECS`]
/// lifetime, so a gateway clock skew the token would survive at mint time it still survives.
pub const TOKEN_REUSE_SECS: u64 = 2;

/// The checks of one pool, ready to run against any of its backends.
pub struct Prober {
    checks: Vec<CheckKind>,
    timeout: Duration,
    tls: Option<TlsProbe>,
    rdg: Option<RdgProbe>,
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A rustls client config trusting the certificates of `ca_file`.
pub fn client_config_from_ca(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    Ok(client_config_and_roots(ca_file)?.0)
}

/// [`client_config_from_ca`] and the root certificates it trusts.
///
/// Session resumption is off: a resumed session presents no certificate, and the `tls`
/// check is there to look at the certificate every time (a renewal can change it).
fn client_config_and_roots(
    ca_file: &Path,
) -> Result<(Arc<rustls::ClientConfig>, Vec<CertificateDer<'static>>), SetupError> {
    let err = |reason: String| SetupError::CaFile {
        path: ca_file.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut ders = Vec::new();
    let iter = CertificateDer::pem_file_iter(ca_file).map_err(|e| err(e.to_string()))?;
    for c in iter {
        let c = c.map_err(|e| err(e.to_string()))?;
        roots.add(c.clone()).map_err(|e| err(e.to_string()))?;
        ders.push(c);
    }
    if roots.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    // AES-128-GCM/SHA-256 first: a probe carries nothing secret, and SHA-384's key schedule
    // costs more per handshake (no SHA-512 instructions here). A server with its own order
    // still picks by it.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(cfg), ders))
}

impl Prober {
    /// Builds the checks of `health`: reads the CA file and loads the signing identity once.
    pub fn from_health(health: &Health) -> Result<Prober, SetupError> {
        let tls = match &health.tls {
            Some(t) => {
                let ca = t
                    .ca_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
                let (client, roots) = client_config_and_roots(&ca)?;
                Some(TlsProbe {
                    server_name: t.server_name.clone(),
                    client,
                    min_days_left: t.min_days_left,
                    roots,
                })
            }
            None => None,
        };
        let rdg = match &health.rdg_token {
            Some(r) if health.checks.contains(&CheckKind::RdgToken) => Some(RdgProbe {
                identity: Arc::new(SigningIdentity::load(&r.signing_cert, &r.signing_key)?),
                host: r.host.clone(),
                port: r.port,
                token: std::sync::Mutex::new(None),
                channel: r.channel_target.clone(),
            }),
            _ => None,
        };
        let mut p = Prober::new(health.checks.clone(), health.timeout);
        p.tls = tls;
        p.rdg = rdg;
        p.validate()?;
        Ok(p)
    }

    /// Only the `tcp` check needs nothing more; add the others with [`Prober::with_tls`] and
    /// [`Prober::with_rdg_token`].
    pub fn new(checks: Vec<CheckKind>, timeout: Duration) -> Prober {
        Prober {
            checks,
            timeout,
            tls: None,
            rdg: None,
        }
    }

    /// TLS settings (also used by `rdg-token`).
    pub fn with_tls(
        mut self,
        server_name: &str,
        client: Arc<rustls::ClientConfig>,
        min_days_left: u32,
    ) -> Prober {
        self.tls = Some(TlsProbe {
            server_name: server_name.to_owned(),
            client,
            min_days_left,
            roots: Vec::new(),
        });
        self
    }

    /// The probe token's signer and the host/port it names.
    pub fn with_rdg_token(
        mut self,
        identity: Arc<SigningIdentity>,
        host: &str,
        port: u16,
    ) -> Prober {
        self.rdg = Some(RdgProbe {
            identity,
            host: host.to_owned(),
            port,
            token: std::sync::Mutex::new(None),
            channel: None,
        });
        self
    }

    fn validate(&self) -> Result<(), SetupError> {
        for c in &self.checks {
            match c {
                CheckKind::Tls | CheckKind::RdgToken if self.tls.is_none() => {
                    return Err(SetupError::NeedsTls(check_label(*c)))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn checks(&self) -> &[CheckKind] {
        &self.checks
    }

    /// Runs every check against `addr` within one probe deadline. `node` is the backend's
    /// own name, looked for among the certificate's SANs (a warning when missing).
    pub async fn probe(&self, addr: SocketAddr, node: Option<&str>) -> ProbeReport {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut report = ProbeReport::new();
        let mut carry = Carry::None;
        for &check in &self.checks {
            self.run_check(check, addr, node, deadline, &mut report, &mut carry)
                .await;
            if !report.verdict.is_healthy() {
                break;
            }
        }
        report
    }

    /// Runs one check (one tier of the scheduler) against `addr` within its own deadline.
    pub async fn probe_check(
        &self,
        check: CheckKind,
        addr: SocketAddr,
        node: Option<&str>,
    ) -> ProbeReport {
        let mut reports = self.probe_tiers(&[check], addr, node).await;
        reports.pop().unwrap_or_else(ProbeReport::new)
    }

    /// Runs `checks` (tiers due together, cheapest first) in order, each within its own
    /// deadline and with its own report, stopping after the first that fails. A passing check
    /// hands its connection on to the next (the TCP connection to `tls`, the TLS session to
    /// `rdg-token`), as a real client would: a full probe costs one connect and one handshake.
    pub async fn probe_tiers(
        &self,
        checks: &[CheckKind],
        addr: SocketAddr,
        node: Option<&str>,
    ) -> Vec<ProbeReport> {
        let mut out = Vec::with_capacity(checks.len());
        let mut carry = Carry::None;
        for &check in checks {
            let deadline = tokio::time::Instant::now() + self.timeout;
            let mut report = ProbeReport::new();
            self.run_check(check, addr, node, deadline, &mut report, &mut carry)
                .await;
            let healthy = report.verdict.is_healthy();
            out.push(report);
            if !healthy {
                break;
            }
        }
        out
    }

    async fn run_check(
        &self,
        check: CheckKind,
        addr: SocketAddr,
        node: Option<&str>,
        deadline: tokio::time::Instant,
        report: &mut ProbeReport,
        carry: &mut Carry,
    ) {
        let t0 = Instant::now();
        let taken = std::mem::replace(carry, Carry::None);
        let (verdict, stage) = match check {
            CheckKind::Tcp => self.tcp(addr, deadline, report, carry).await,
            CheckKind::Tls => self.tls(addr, node, deadline, report, taken, carry).await,
            CheckKind::RdgToken => self.rdg_token(addr, deadline, report, taken).await,
        };
        report.checks.push(CheckReport {
            check,
            verdict,
            stage,
            elapsed: t0.elapsed(),
        });
        report.verdict = verdict;
        report.stage = stage;
        report.check = Some(check);
    }

    /// A probe token minted at most [`TOKEN_REUSE_SECS`] ago (minting one when needed).
    fn token(r: &RdgProbe, now: u64) -> Result<Arc<str>, crate::token::TokenError> {
        let mut cached = r.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, t)) = cached.as_ref() {
            if now >= *at && now - *at <= TOKEN_REUSE_SECS {
                return Ok(t.clone());
            }
        }
        // With a channel target the token names it: the gateway checks at CHANNEL_CREATE
        // that the resource asked for is the token's (PROTOCOLS.md §5.3 step 8).
        let (host, port) = match &r.channel {
            Some((h, p)) => (h.as_str(), *p),
            None => (r.host.as_str(), r.port),
        };
        let req = MintRequest {
            port,
            ..MintRequest::new(host)
        };
        let t: Arc<str> = Arc::from(mint(&r.identity, &req, now)?);
        *cached = Some((now, t.clone()));
        Ok(t)
    }

    async fn tcp(
        &self,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
        report: &mut ProbeReport,
        carry: &mut Carry,
    ) -> (Verdict, Stage) {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                *carry = Carry::Tcp(s);
                (Verdict::Healthy, Stage::Tcp)
            }
            Ok(Err(e)) => {
                report.inconclusive |= is_local_exhaustion(&e);
                report.detail = Some(e.to_string());
                (classify_io(Stage::Tcp, &e), Stage::Tcp)
            }
            Err(_) => (Verdict::Timeout, Stage::Tcp),
        }
    }

    async fn tls(
        &self,
        addr: SocketAddr,
        node: Option<&str>,
        deadline: tokio::time::Instant,
        report: &mut ProbeReport,
        taken: Carry,
        carry: &mut Carry,
    ) -> (Verdict, Stage) {
        let Some(t) = &self.tls else {
            return (Verdict::TlsError, Stage::Tls);
        };
        let connected = match taken {
            Carry::Tcp(s) => Ok(Ok(s)),
            _ => timeout_at(deadline, TcpStream::connect(addr)).await,
        };
        let tcp = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                report.inconclusive |= is_local_exhaustion(&e);
                report.detail = Some(e.to_string());
                return (classify_io(Stage::Tcp, &e), Stage::Tcp);
            }
            Err(_) => return (Verdict::Timeout, Stage::Tcp),
        };
        let Ok(name) = ServerName::try_from(t.server_name.clone()) else {
            report.detail = Some(format!("bad server name {:?}", t.server_name));
            return (Verdict::TlsError, Stage::Tls);
        };
        let tls = match timeout_at(
            deadline,
            TlsConnector::from(t.client.clone()).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                report.detail = Some(e.to_string());
                return (classify_io(Stage::Tls, &e), Stage::Tls);
            }
            Err(_) => return (Verdict::Timeout, Stage::Tls),
        };
        let (_, conn) = tls.get_ref();
        let Some(der) = conn.peer_certificates().and_then(|c| c.first()) else {
            report.detail = Some("no peer certificate".into());
            return (Verdict::TlsError, Stage::Tls);
        };
        let chain = conn.peer_certificates().unwrap_or_default();
        let facts = match cert_facts_with_issuer(der, chain.get(1..).unwrap_or_default(), &t.roots)
        {
            Ok(f) => f,
            Err(e) => {
                report.detail = Some(e);
                return (Verdict::TlsError, Stage::Tls);
            }
        };
        report.warnings.extend(cert_warnings(
            &facts,
            &t.server_name,
            node,
            t.min_days_left,
            now_unix(),
        ));
        let names_alias = facts
            .sans
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&t.server_name));
        report.cert = Some(facts);
        if !names_alias {
            report.detail = Some(format!("certificate SANs do not name {}", t.server_name));
            return (Verdict::TlsError, Stage::Tls);
        }
        *carry = Carry::Tls(Box::new(tls));
        (Verdict::Healthy, Stage::Tls)
    }

    async fn rdg_token(
        &self,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
        report: &mut ProbeReport,
        taken: Carry,
    ) -> (Verdict, Stage) {
        let (Some(t), Some(r)) = (&self.tls, &self.rdg) else {
            report.detail = Some("rdg-token check without tls/rdg_token settings".into());
            return (Verdict::ProtocolError, Stage::Http);
        };
        // A fresh token (see TOKEN_REUSE_SECS): the gateway checks ExpiresOn against its clock.
        let now = now_unix().max(0) as u64;
        let token = match Self::token(r, now) {
            Ok(t) => t,
            Err(e) => {
                // The signing side is wrong: every gateway would refuse it, so it is reported
                // as the farm-wide `token-rejected` (and trips fail-static).
                report.detail = Some(format!("cannot mint the probe token: {e}"));
                return (Verdict::TokenRejected, Stage::TunnelCreate);
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let cfg = ClientConfig {
            addr,
            server_name: t.server_name.clone(),
            tls: t.client.clone(),
            transport: Transport::WebSocket,
            timeout: remaining,
        };
        let mut stage = Stage::Http;
        let session = match taken {
            Carry::Tls(s) => Some(*s),
            _ => None,
        };
        let channel = r.channel.as_ref().map(|(h, p)| (h.as_str(), *p));
        let res = timeout_at(
            deadline,
            run_tunnel(&cfg, session, &token, channel, &mut stage, report),
        )
        .await;
        match res {
            Err(_) => (Verdict::Timeout, stage),
            Ok(Err(e)) => {
                let stage = match (&e, stage) {
                    (ClientError::Timeout("tcp connect"), Stage::Http) => Stage::Tcp,
                    (ClientError::Timeout("tls handshake"), Stage::Http) => Stage::Tls,
                    _ => stage,
                };
                if let ClientError::Io(io) = &e {
                    report.inconclusive |= is_local_exhaustion(io);
                }
                if let ClientError::HttpStatus(s) = e {
                    report.http_status = Some(s);
                }
                report.detail = Some(e.to_string());
                (classify_error(stage, &e), stage)
            }
            Ok(Ok((status, channel))) => {
                let (v, s, code) = classify_tunnel(&status);
                report.hresult = code;
                match channel {
                    Some(c) if v.is_healthy() && c != 0 => {
                        report.hresult = Some(c);
                        (classify_channel(c), Stage::ChannelCreate)
                    }
                    Some(_) if v.is_healthy() => (v, Stage::ChannelCreate),
                    _ => (v, s),
                }
            }
        }
    }
}

/// Connect, HANDSHAKE, TUNNEL_CREATE, TUNNEL_AUTH, keeping `stage` current for the verdict.
/// With `channel`, then CHANNEL_CREATE for it and, once open, CLOSE_CHANNEL answered by
/// CLOSE_CHANNEL_RESPONSE; its CHANNEL_RESPONSE code comes back beside the tunnel statuses.
async fn run_tunnel(
    cfg: &ClientConfig,
    session: Option<TlsStream<TcpStream>>,
    token: &str,
    channel: Option<(&str, u16)>,
    stage: &mut Stage,
    report: &mut ProbeReport,
) -> Result<(TunnelStatus, Option<u32>), ClientError> {
    let (mut client, connected) = match session {
        Some(s) => RdgClient::connect_over(cfg, s).await?,
        None => RdgClient::connect(cfg).await?,
    };
    report.http_status = Some(connected.status);
    report.transport = Some(connected.transport);
    if let Some(gw) = connected.date.as_deref().and_then(parse_http_date) {
        report.clock_skew = Some(gw - now_unix());
    }
    let status = client
        .open_tunnel_observed(token, PROBE_CLIENT_NAME, |step| {
            *stage = match step {
                TunnelStep::Handshake => Stage::Handshake,
                TunnelStep::TunnelCreate => Stage::TunnelCreate,
                TunnelStep::TunnelAuth => Stage::TunnelAuth,
            }
        })
        .await?;
    let Some((host, port)) = channel.filter(|_| {
        matches!(
            status.tunnel_auth,
            Some(hresult::S_OK) | Some(hresult::E_PROXY_QUARANTINE_ACCESSDENIED)
        )
    }) else {
        // Stop here (PROTOCOLS.md §4.3): no channel exists, dropping the client closes TLS.
        return Ok((status, None));
    };
    *stage = Stage::ChannelCreate;
    let code = client.create_channel(host, port).await?;
    if code == 0 {
        client
            .send(&Packet::CloseChannel(CloseChannel { status: 0 }))
            .await?;
        loop {
            // DATA the target sent first may come before the answer.
            match client.recv().await? {
                Packet::CloseChannelResponse(_) => break,
                Packet::Data(_) | Packet::Keepalive => {}
                other => return Err(unexpected("CLOSE_CHANNEL_RESPONSE", &other)),
            }
        }
    }
    Ok((status, Some(code)))
}

/// Out of descriptors (EMFILE/ENFILE) or buffers (ENOBUFS/ENOMEM) on this host.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Subject, DNS SANs, not-after and issuer of a DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    cert_facts_with_issuer(der, &[], &[])
}

/// [`cert_facts`], with the issuer's thumbprint looked up in the presented `chain` (after
/// the leaf) and then among `roots`, by subject.
pub fn cert_facts_with_issuer(
    der: &[u8],
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<CertFacts, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    let issuer_raw = cert.issuer().as_raw();
    let issuer_thumbprint = chain
        .iter()
        .chain(roots)
        .find(|c| {
            x509_parser::parse_x509_certificate(c)
                .is_ok_and(|(_, ca)| ca.subject().as_raw() == issuer_raw)
        })
        .map(|c| crate::token::Thumbprint::of_der(c).to_string());
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                sans.push((*d).to_owned());
            }
        }
    }
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        sans,
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        issuer_thumbprint,
    })
}

/// Warnings for a certificate that passed: expiry within `min_days_left`, node name missing.
pub fn cert_warnings(
    facts: &CertFacts,
    _alias: &str,
    node: Option<&str>,
    min_days_left: u32,
    now: i64,
) -> Vec<String> {
    let mut w = Vec::new();
    let left = facts.not_after - now;
    if left < i64::from(min_days_left) * 86_400 {
        w.push(format!(
            "certificate expires in {} days (< {min_days_left})",
            left.div_euclid(86_400)
        ));
    }
    if let Some(node) = node {
        let named = facts.sans.iter().any(|s| {
            s.eq_ignore_ascii_case(node)
                || s.split('.')
                    .next()
                    .is_some_and(|l| l.eq_ignore_ascii_case(node))
        });
        if !named {
            w.push(format!("certificate SANs do not name the node {node}"));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sans: &[&str], not_after: i64) -> CertFacts {
        CertFacts {
            subject: "CN=rdgw".into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            not_after,
            issuer: "CN=ca".into(),
            issuer_thumbprint: None,
        }
    }

    #[test]
    fn expiring_soon_is_a_warning() {
        let now = 1_000_000_000;
        let f = facts(&["rdgw.x", "web01.x"], now + 3 * 86_400);
        let w = cert_warnings(&f, "rdgw.x", Some("web01"), 14, now);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("expires in 3 days"), "{w:?}");
        assert!(cert_warnings(&f, "rdgw.x", Some("web01.x"), 2, now).is_empty());
    }

    #[test]
    fn missing_node_san_is_a_warning() {
        let f = facts(&["rdgw.x", "web01.x"], i64::MAX / 2);
        let w = cert_warnings(&f, "rdgw.x", Some("web02"), 14, 0);
        assert_eq!(
            w,
            vec!["certificate SANs do not name the node web02".to_string()]
        );
    }

    #[test]
    fn reads_sim_certificate_facts() {
        let pki = crate::sim::certs::SimPki::generate("rdgw.t", &["web01.t"]).unwrap();
        let der = CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
        let f = cert_facts(&der).unwrap();
        assert!(f.subject.contains("Portico sim CA"), "{f:?}");
        assert!(f.not_after > 0);
    }
}
