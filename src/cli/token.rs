//! `portico token mint | rdp | verify | keygen`: console-connect tokens as VMM mints them, the
//! .rdp file a portal hands a tenant, and the gateway plug-in's verdict on a token.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Outcome;
use crate::token::{
    self, HashAlg, MintRequest, Padding, PaddingPolicy, SigningIdentity, Thumbprint, TrustedCert,
    Verifier,
};

/// What `mint` and `rdp` share: who signs and what the token names.
#[derive(Debug, Clone)]
pub struct MintArgs {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub host: String,
    pub port: u16,
    pub ttl_minutes: u64,
    pub pss: bool,
    pub sha512: bool,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mint_token(a: &MintArgs) -> Result<String, String> {
    let id = SigningIdentity::load(&a.cert, &a.key).map_err(|e| e.to_string())?;
    let req = MintRequest {
        host: &a.host,
        port: a.port,
        ttl_secs: a.ttl_minutes.saturating_mul(60),
        padding: if a.pss {
            Padding::Pss
        } else {
            Padding::Pkcs1v15
        },
        hash: if a.sha512 {
            HashAlg::Sha512
        } else {
            HashAlg::Sha256
        },
    };
    token::mint(&id, &req, now_unix()).map_err(|e| e.to_string())
}

/// `portico token mint`: prints the token.
pub fn mint(a: &MintArgs) -> Outcome {
    match mint_token(a) {
        Ok(t) => Outcome::ok(format!("{t}\n")),
        Err(e) => Outcome::fail(format!("portico token mint: {e}\n")),
    }
}

/// `portico token rdp`: the .rdp file, on stdout or written with mode 0600 (it holds a bearer
/// token).
pub fn rdp(a: &MintArgs, vm_id: &str, gateway: &str, out: Option<&std::path::Path>) -> Outcome {
    let t = match mint_token(a) {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("portico token rdp: {e}\n")),
    };
    let text = match token::rdp_file(gateway, &a.host, a.port, vm_id, &t) {
        Ok(x) => x,
        Err(e) => return Outcome::fail(format!("portico token rdp: {e}\n")),
    };
    match out {
        None => Outcome::ok(text),
        Some(path) => match token::write_secret_file(path, text.as_bytes()) {
            Ok(()) => Outcome::ok(format!(
                "wrote {} (token {})\n",
                path.display(),
                token::redact(&t)
            )),
            Err(e) => Outcome::fail(format!(
                "portico token rdp: writing {}: {e}\n",
                path.display()
            )),
        },
    }
}

/// Options of `portico token verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// The gateway's TrustedIssuerCertificates list.
    pub trusted_thumbprints: Vec<String>,
    /// Certificates installed on the gateway (their public keys check signatures).
    pub trusted_certs: Vec<PathBuf>,
    pub skew_secs: Option<u64>,
    pub allow_sha512: bool,
    /// Step 8: the resource the client would ask for at CHANNEL_CREATE.
    pub resource: Option<String>,
    pub resource_port: u16,
}

/// `portico token verify`: exit 0 and say valid, or exit 1 and say which step failed.
pub fn verify(a: &VerifyArgs, token_text: &str) -> Outcome {
    let mut thumbs = Vec::new();
    for (i, t) in a.trusted_thumbprints.iter().enumerate() {
        match t.parse::<Thumbprint>() {
            Ok(t) => thumbs.push(t),
            Err(e) => {
                return Outcome::fail(format!(
                    "portico token verify: --trusted-thumbprint #{}: {e}\n",
                    i + 1
                ))
            }
        }
    }
    let mut certs = Vec::new();
    for p in &a.trusted_certs {
        match TrustedCert::load(p) {
            Ok(c) => certs.extend(c),
            Err(e) => return Outcome::fail(format!("portico token verify: {e}\n")),
        }
    }
    // With no explicit thumbprint list, every given certificate is trusted (a lab shortcut);
    // with one, it is the gateway's list and certificates only supply public keys.
    let mut v = if thumbs.is_empty() {
        Verifier::new(certs)
    } else {
        Verifier::from_trust_list(&thumbs, &certs)
    };
    v = v.with_padding(PaddingPolicy::Either);
    if let Some(s) = a.skew_secs {
        v = v.with_skew_secs(s);
    }
    if a.allow_sha512 {
        v = v.with_allowed_algs(&[HashAlg::Sha256, HashAlg::Sha512]);
    }
    let t = token_text.trim();
    let now = now_unix();
    let parsed = match v.verify(t, now) {
        Ok(p) => p,
        Err(e) => return Outcome::fail(format!("invalid: {e}\n")),
    };
    if let Some(r) = &a.resource {
        if let Err(e) = v.authorize_resource(&parsed, &[r.as_str()], a.resource_port) {
            return Outcome::fail(format!("invalid: {e}\n"));
        }
    }
    let left = parsed.expires_on as i64 - now as i64;
    Outcome::ok(format!(
        "valid: Host={} Port={} ExpiresOn={} ({}) signed by {}\n",
        parsed.host,
        parsed.port,
        parsed.expires_on,
        if left >= 0 {
            format!("expires in {left} s")
        } else {
            format!("expired {} s ago, within the skew", -left)
        },
        parsed.thumbprint
    ))
}

/// `portico token keygen`: a fresh RSA-2048 signing identity for the probe (its thumbprint
/// goes into the gateways' trusted issuers beside VMM's), key written with mode 0600.
pub fn keygen(cn: &str, days: u32, cert: &std::path::Path, key: &std::path::Path) -> Outcome {
    let (id, pem) = match SigningIdentity::generate(cn, days, now_unix()) {
        Ok(x) => x,
        Err(e) => return Outcome::fail(format!("portico token keygen: {e}\n")),
    };
    if let Err(e) = pem.write(cert, key) {
        return Outcome::fail(format!("portico token keygen: {e}\n"));
    }
    Outcome::ok(format!(
        "wrote {} and {}\nthumbprint {} (add it to the gateways' FedAuth TrustedIssuerCertificates)\n",
        cert.display(),
        key.display(),
        id.thumbprint()
    ))
}
