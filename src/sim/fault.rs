//! Fault injection: what a sick RD Gateway looks like from outside, one switch per symptom.
//!
//! Faults are parsed from the strings a CLI or a control socket would take (`slow:250`,
//! `token-reject`, …) and kept in a [`Faults`] set. Each connection reads the set when it
//! needs it (TLS accept, HTTP answer, TUNNEL_CREATE), so a change applies to new work at once
//! and never tears down established tunnels by itself.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Largest `slow:<ms>` delay accepted (a minute): longer only hides a typo.
pub const MAX_SLOW_MS: u64 = 60_000;

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// `token-reject`: every TUNNEL_CREATE is answered with
    /// E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, whatever the token.
    TokenReject,
    /// `untrusted-issuer`: tokens are verified against an empty trust list (step 4 fails), as
    /// a gateway whose `TrustedIssuerCertificates` lost the thumbprint.
    UntrustedIssuer,
    /// `slow:<ms>`: every HTTP answer and every control packet answer is delayed.
    Slow(Duration),
    /// `hang`: TLS is accepted, HTTP is never answered.
    Hang,
    /// `reset-after-handshake`: the TCP connection is reset right after HANDSHAKE_RESPONSE.
    ResetAfterHandshake,
    /// `http-503`: every request gets `503 Service Unavailable` (TSGateway service stopped).
    Http503,
    /// `http-401`: every request gets `401` with `WWW-Authenticate: Negotiate` and `NTLM`
    /// (a gateway not in FedAuth mode).
    Http401,
    /// `expired-cert`: TLS presents `SimConfig::alt_tls_expired`.
    ExpiredCert,
    /// `wrong-san`: TLS presents `SimConfig::alt_tls_wrong_san`.
    WrongSan,
    /// `websocket-unsupported`: an upgrade request gets `200` + seed (legacy), as an old gateway.
    WebSocketUnsupported,
}

/// Why a fault string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?}: expected one of token-reject, untrusted-issuer, slow:<ms> (0..=60000), hang, reset-after-handshake, http-503, http-401, expired-cert, wrong-san, websocket-unsupported")]
pub struct FaultParseError(pub String);

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FaultParseError(s.to_owned());
        Ok(match s.trim() {
            "token-reject" => Fault::TokenReject,
            "untrusted-issuer" => Fault::UntrustedIssuer,
            "hang" => Fault::Hang,
            "reset-after-handshake" => Fault::ResetAfterHandshake,
            "http-503" => Fault::Http503,
            "http-401" => Fault::Http401,
            "expired-cert" => Fault::ExpiredCert,
            "wrong-san" => Fault::WrongSan,
            "websocket-unsupported" => Fault::WebSocketUnsupported,
            other => {
                let ms = other.strip_prefix("slow:").ok_or_else(err)?;
                if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                let ms: u64 = ms.parse().map_err(|_| err())?;
                if ms > MAX_SLOW_MS {
                    return Err(err());
                }
                Fault::Slow(Duration::from_millis(ms))
            }
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::TokenReject => f.write_str("token-reject"),
            Fault::UntrustedIssuer => f.write_str("untrusted-issuer"),
            Fault::Slow(d) => write!(f, "slow:{}", d.as_millis()),
            Fault::Hang => f.write_str("hang"),
            Fault::ResetAfterHandshake => f.write_str("reset-after-handshake"),
            Fault::Http503 => f.write_str("http-503"),
            Fault::Http401 => f.write_str("http-401"),
            Fault::ExpiredCert => f.write_str("expired-cert"),
            Fault::WrongSan => f.write_str("wrong-san"),
            Fault::WebSocketUnsupported => f.write_str("websocket-unsupported"),
        }
    }
}

/// The active faults: at most one of each kind (a second `slow:` replaces the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    active: Vec<Fault>,
}

impl Faults {
    /// No faults: a healthy gateway.
    pub fn none() -> Self {
        Self::default()
    }

    /// Turns `fault` on, replacing one of the same kind.
    pub fn set(&mut self, fault: Fault) {
        self.active
            .retain(|f| std::mem::discriminant(f) != std::mem::discriminant(&fault));
        self.active.push(fault);
    }

    /// Turns every fault of `fault`'s kind off (the `slow` delay value is ignored).
    pub fn unset(&mut self, fault: Fault) {
        self.active
            .retain(|f| std::mem::discriminant(f) != std::mem::discriminant(&fault));
    }

    /// Whether `fault` is on (for `Slow`, whether any delay is set).
    pub fn has(&self, fault: Fault) -> bool {
        self.active
            .iter()
            .any(|f| std::mem::discriminant(f) == std::mem::discriminant(&fault))
    }

    /// The `slow:` delay, if any.
    pub fn slow(&self) -> Option<Duration> {
        self.active.iter().find_map(|f| match f {
            Fault::Slow(d) => Some(*d),
            _ => None,
        })
    }

    /// The active faults in the order they were set.
    pub fn list(&self) -> &[Fault] {
        &self.active
    }
}

impl FromIterator<Fault> for Faults {
    fn from_iter<I: IntoIterator<Item = Fault>>(iter: I) -> Self {
        let mut faults = Faults::none();
        for f in iter {
            faults.set(f);
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_fault() {
        for s in [
            "token-reject",
            "untrusted-issuer",
            "slow:250",
            "hang",
            "reset-after-handshake",
            "http-503",
            "http-401",
            "expired-cert",
            "wrong-san",
            "websocket-unsupported",
        ] {
            let f: Fault = s.parse().expect(s);
            assert_eq!(f.to_string(), s);
        }
        for bad in [
            "",
            "slow",
            "slow:",
            "slow:-1",
            "slow:1e3",
            "slow:60001",
            "Hang",
            "503",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn set_replaces_same_kind() {
        let mut f = Faults::none();
        f.set(Fault::Slow(Duration::from_millis(5)));
        f.set(Fault::Hang);
        f.set(Fault::Slow(Duration::from_millis(7)));
        assert_eq!(f.slow(), Some(Duration::from_millis(7)));
        assert_eq!(f.list().len(), 2);
        assert!(f.has(Fault::Slow(Duration::ZERO)));
        f.unset(Fault::Slow(Duration::ZERO));
        assert_eq!(f.slow(), None);
        assert!(f.has(Fault::Hang));
    }
}
