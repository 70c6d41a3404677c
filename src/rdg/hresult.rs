//! HRESULT values seen in MS-TSGU responses ([MS-TSGU] 2.2.6; values per FreeRDP `tsg.h` /
//! `rpc_fault.c` and rdpgw `errors.go`, see PROTOCOLS.md §4.1).
//!
//! [`is_failure`] implements the Portico rule: a code is a failure if bit 31 is set **or** it is a
//! known non-zero `0x0000xxxx` code below. FreeRDP's `FAILED()` alone would take
//! `0x000059E6` (MAXCONNECTIONSREACHED in HRESULT_CODE form) for success.

/// Success (`S_OK` / `ERROR_SUCCESS`).
pub const S_OK: u32 = 0x0000_0000;
/// Win32 `ERROR_ACCESS_DENIED`; rdpgw refuses a client name at TUNNEL_AUTH with it.
pub const ERROR_ACCESS_DENIED: u32 = 0x0000_0005;
/// Unexpected server error, or a packet in the wrong state ([MS-TSGU] 2.2.6).
pub const E_PROXY_INTERNALERROR: u32 = 0x8007_59D8;
/// CHANNEL_CREATE: resource (host/port) not allowed by the resource authorization policy.
pub const E_PROXY_RAP_ACCESSDENIED: u32 = 0x8007_59DA;
/// TUNNEL_CREATE / TUNNEL_AUTH: connection authorization (CAP/NAP) denied.
pub const E_PROXY_NAP_ACCESSDENIED: u32 = 0x8007_59DB;
/// CHANNEL_CREATE: the gateway could not connect to the target.
pub const E_PROXY_TS_CONNECTFAILED: u32 = 0x8007_59DD;
/// The same, in the HRESULT_CODE form rdpgw lists (PROTOCOLS.md §4.1, where the sources disagree).
pub const E_PROXY_TS_CONNECTFAILED_CODE: u32 = 0x0000_59DD;
/// The tunnel is already gone.
pub const E_PROXY_ALREADYDISCONNECTED: u32 = 0x8007_59DF;
/// HANDSHAKE: no common extended-auth method.
pub const E_PROXY_CAPABILITYMISMATCH: u32 = 0x8007_59E9;
/// TUNNEL_AUTH: statement of health failed (FreeRDP 3 continues anyway).
pub const E_PROXY_QUARANTINE_ACCESSDENIED: u32 = 0x8007_59ED;
/// TUNNEL_CREATE: the gateway has no TLS certificate registered.
pub const E_PROXY_NOCERTAVAILABLE: u32 = 0x8007_59EE;
/// TUNNEL_CREATE: PAA cookie missing, empty or malformed ([MS-TSGU] 3.2.6.1.1).
pub const E_PROXY_COOKIE_BADPACKET: u32 = 0x8007_59F7;
/// TUNNEL_CREATE: the authentication plug-in rejected the PAA cookie.
pub const E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED: u32 = 0x8007_59F8;
/// TUNNEL_CREATE: pluggable authentication configured but the request is not PAA.
pub const E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD: u32 = 0x8007_59F9;
/// SSPI logon failure.
pub const SEC_E_LOGON_DENIED: u32 = 0x8009_030C;
/// Close status: graceful disconnect.
pub const ERROR_GRACEFUL_DISCONNECT: u32 = 0x0000_04CA;
/// Close status: connection aborted.
pub const E_PROXY_CONNECTIONABORTED: u32 = 0x0000_04D4;
/// HRESULT_CODE form (no bit 31): the gateway reached its connection limit.
pub const E_PROXY_MAXCONNECTIONSREACHED: u32 = 0x0000_59E6;
/// HRESULT_CODE form: request not supported.
pub const E_PROXY_NOTSUPPORTED: u32 = 0x0000_59E8;
/// HRESULT_CODE form: session timeout (disconnect reason).
pub const E_PROXY_SESSIONTIMEOUT: u32 = 0x0000_59F6;
/// HRESULT_CODE form: re-authentication failed (authentication).
pub const E_PROXY_REAUTH_AUTHN_FAILED: u32 = 0x0000_59FA;
/// HRESULT_CODE form: re-authentication failed (connection authorization policy).
pub const E_PROXY_REAUTH_CAP_FAILED: u32 = 0x0000_59FB;
/// HRESULT_CODE form: re-authentication failed (resource authorization policy).
pub const E_PROXY_REAUTH_RAP_FAILED: u32 = 0x0000_59FC;
/// HRESULT_CODE form: the target server does not support the silent disconnect/reconnect.
pub const E_PROXY_SDR_NOT_SUPPORTED_BY_TS: u32 = 0x0000_59FD;
/// HRESULT_CODE form: re-authentication failed (network access protection).
pub const E_PROXY_REAUTH_NAP_FAILED: u32 = 0x0000_5A00;

/// Every known code with its name, in table order of PROTOCOLS.md §4.1.
const NAMES: &[(u32, &str)] = &[
    (S_OK, "S_OK"),
    (ERROR_ACCESS_DENIED, "ERROR_ACCESS_DENIED"),
    (E_PROXY_INTERNALERROR, "E_PROXY_INTERNALERROR"),
    (E_PROXY_RAP_ACCESSDENIED, "E_PROXY_RAP_ACCESSDENIED"),
    (E_PROXY_NAP_ACCESSDENIED, "E_PROXY_NAP_ACCESSDENIED"),
    (E_PROXY_TS_CONNECTFAILED, "E_PROXY_TS_CONNECTFAILED"),
    (E_PROXY_TS_CONNECTFAILED_CODE, "E_PROXY_TS_CONNECTFAILED"),
    (E_PROXY_ALREADYDISCONNECTED, "E_PROXY_ALREADYDISCONNECTED"),
    (E_PROXY_CAPABILITYMISMATCH, "E_PROXY_CAPABILITYMISMATCH"),
    (
        E_PROXY_QUARANTINE_ACCESSDENIED,
        "E_PROXY_QUARANTINE_ACCESSDENIED",
    ),
    (E_PROXY_NOCERTAVAILABLE, "E_PROXY_NOCERTAVAILABLE"),
    (E_PROXY_COOKIE_BADPACKET, "E_PROXY_COOKIE_BADPACKET"),
    (
        E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
        "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED",
    ),
    (
        E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD,
        "E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD",
    ),
    (SEC_E_LOGON_DENIED, "SEC_E_LOGON_DENIED"),
    (ERROR_GRACEFUL_DISCONNECT, "ERROR_GRACEFUL_DISCONNECT"),
    (E_PROXY_CONNECTIONABORTED, "E_PROXY_CONNECTIONABORTED"),
    (
        E_PROXY_MAXCONNECTIONSREACHED,
        "E_PROXY_MAXCONNECTIONSREACHED",
    ),
    (E_PROXY_NOTSUPPORTED, "E_PROXY_NOTSUPPORTED"),
    (E_PROXY_SESSIONTIMEOUT, "E_PROXY_SESSIONTIMEOUT"),
    (E_PROXY_REAUTH_AUTHN_FAILED, "E_PROXY_REAUTH_AUTHN_FAILED"),
    (E_PROXY_REAUTH_CAP_FAILED, "E_PROXY_REAUTH_CAP_FAILED"),
    (E_PROXY_REAUTH_RAP_FAILED, "E_PROXY_REAUTH_RAP_FAILED"),
    (
        E_PROXY_SDR_NOT_SUPPORTED_BY_TS,
        "E_PROXY_SDR_NOT_SUPPORTED_BY_TS",
    ),
    (E_PROXY_REAUTH_NAP_FAILED, "E_PROXY_REAUTH_NAP_FAILED"),
];

/// The symbolic name of a known code (`None` for codes not in PROTOCOLS.md §4.1).
pub fn name(code: u32) -> Option<&'static str> {
    NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// Whether `code` reports a failure: bit 31 set, or a known non-zero `0x0000xxxx` code
/// (PROTOCOLS.md §4.1). An unknown non-zero code without bit 31 is *not* a failure here; the
/// probe classifies it as `protocol-error` separately.
pub fn is_failure(code: u32) -> bool {
    code & 0x8000_0000 != 0 || (code != S_OK && code <= 0xFFFF && name(code).is_some())
}

/// `0x800759F8 (E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED)`-style text for logs.
pub fn display(code: u32) -> String {
    match name(code) {
        Some(n) => format!("{code:#010x} ({n})"),
        None => format!("{code:#010x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rule() {
        assert!(!is_failure(S_OK));
        assert!(is_failure(E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED));
        assert!(is_failure(E_PROXY_MAXCONNECTIONSREACHED));
        assert!(is_failure(ERROR_ACCESS_DENIED));
        assert!(is_failure(E_PROXY_TS_CONNECTFAILED_CODE));
        assert!(is_failure(0x8000_0001)); // unknown, but bit 31
        assert!(!is_failure(0x0000_1234)); // unknown, no bit 31
        assert_eq!(name(0x800759F7), Some("E_PROXY_COOKIE_BADPACKET"));
        assert_eq!(name(0x1234), None);
        assert_eq!(display(0x5A00), "0x00005a00 (E_PROXY_REAUTH_NAP_FAILED)");
    }
}
