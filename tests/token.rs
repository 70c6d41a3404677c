//! Console-connect token: mint → verify round trips, golden vectors made with OpenSSL
//! (tests/data/token/README.md), every verification step's failure and HRESULT, key file
//! permissions, and property tests. RSA keys are generated at most twice per run (OnceLock).

use std::path::PathBuf;
use std::sync::OnceLock;

use portico::token::{
    self, HashAlg, MessageFault, MintRequest, Padding, PaddingPolicy, SignatureFault,
    SigningIdentity, TokenError, TrustedCert, Verifier, VerifyError,
    E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED as ACCESS_DENIED,
    E_PROXY_COOKIE_BADPACKET as BADPACKET, E_PROXY_RAP_ACCESSDENIED as RAP_DENIED,
};
use proptest::prelude::*;

/// The tests' clock: 2027-01-15. Generated certificates are valid T0 ..= T0 + 30 days.
const T0: u64 = 1_800_000_000;
const HOST: &str = "hv01.lab.test";

struct Keys {
    main: SigningIdentity,
    main_pem: token::GeneratedPem,
    other: SigningIdentity,
    other_pem: token::GeneratedPem,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (main, main_pem) =
            SigningIdentity::generate("portico test signer", 30, T0).expect("generate main");
        let (other, other_pem) =
            SigningIdentity::generate("someone else", 30, T0).expect("generate other");
        Keys {
            main,
            main_pem,
            other,
            other_pem,
        }
    })
}

fn req(padding: Padding, hash: HashAlg) -> MintRequest<'static> {
    MintRequest {
        host: HOST,
        port: 2179,
        ttl_secs: 60,
        padding,
        hash,
    }
}

fn mint_main(now: u64) -> String {
    token::mint(
        &keys().main,
        &MintRequest {
            ttl_secs: 60,
            ..MintRequest::new(HOST)
        },
        now,
    )
    .expect("mint")
}

fn verifier() -> Verifier {
    Verifier::new([keys().main.trusted_cert()])
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn data(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/data/token", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn round_trip_every_padding_and_hash() {
    let both = Verifier::new([keys().main.trusted_cert()])
        .with_allowed_algs(&[HashAlg::Sha256, HashAlg::Sha512]);
    for padding in [Padding::Pkcs1v15, Padding::Pss] {
        for hash in [HashAlg::Sha256, HashAlg::Sha512] {
            let t = token::mint(&keys().main, &req(padding, hash), T0).expect("mint");
            let parsed = both.verify(&t, T0).expect("verify");
            assert_eq!(parsed.host, HOST);
            assert_eq!(parsed.port, 2179);
            assert_eq!(parsed.expires_on, T0 + 60);
            assert_eq!(parsed.padding, Some(padding));
            assert_eq!(parsed.alg, token::AlgName::Known(hash));
            assert_eq!(parsed.thumbprint, *keys().main.thumbprint());

            // Strict policies accept only their own padding.
            let other = match padding {
                Padding::Pkcs1v15 => PaddingPolicy::Pss,
                Padding::Pss => PaddingPolicy::Pkcs1v15,
            };
            assert_eq!(
                both.clone().with_padding(other).verify(&t, T0).unwrap_err(),
                VerifyError::BadSignature
            );

            // The wire form: UTF-16LE with the trailing NUL of TUNNEL_CREATE.
            let mut cookie = utf16(&t);
            cookie.extend([0, 0]);
            assert!(both.verify_cookie_utf16(&cookie, T0).is_ok());
        }
    }
}

#[test]
fn token_shape_is_byte_exact_except_the_signature() {
    let k = keys();
    let t = token::mint(&k.main, &req(Padding::Pkcs1v15, HashAlg::Sha256), T0).expect("mint");
    let head = format!(
        "Host=hv01.lab.test&Port=2179&ExpiresOn={}&Signature=1|SHA256|{}|",
        T0 + 60,
        k.main.thumbprint()
    );
    assert!(t.starts_with(&head), "{t}");
    let esc = &t[head.len()..];
    let thumb = k.main.thumbprint().to_string();
    assert_eq!(thumb.len(), 40);
    assert!(thumb
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));

    // Only unreserved characters and %XX with upper-case hex.
    let bytes = esc.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = &esc[i + 1..i + 3];
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                "{hex}"
            );
            i += 3;
        } else {
            assert!(
                bytes[i].is_ascii_alphanumeric() || b"-._~".contains(&bytes[i]),
                "{esc}"
            );
            i += 1;
        }
    }
    // Each base64 '+', '/', '=' appears percent-encoded, and re-encoding is the identity.
    let parsed = token::parse(&t).expect("parse");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&parsed.signature);
    assert_eq!(token::percent_encode(&b64), esc);
    assert_eq!(esc.matches("%2B").count(), b64.matches('+').count());
    assert_eq!(esc.matches("%2F").count(), b64.matches('/').count());
    assert_eq!(esc.matches("%3D").count(), b64.matches('=').count());
    assert!(
        esc.ends_with("%3D"),
        "2048-bit signature base64 ends in '=' padding: {esc}"
    );
    assert_eq!(parsed.signature.len(), 256);
    assert_eq!(
        parsed.message(),
        &head[..head.len() - "&Signature=1|SHA256|".len() - 41]
    );
}

#[test]
fn golden_vectors_from_openssl() {
    let cert = data("probe-cert.pem");
    let id = SigningIdentity::from_pem(&cert, &data("probe-key.pkcs8.pem")).expect("pkcs8");
    let id1 = SigningIdentity::from_pem(&cert, &data("probe-key.pkcs1.pem")).expect("pkcs1");
    assert_eq!(id.thumbprint(), id1.thumbprint());
    let now = 1_900_000_000;
    let expected = String::from_utf8(data("token-pkcs1-sha256.txt")).expect("ascii");
    let r = req(Padding::Pkcs1v15, HashAlg::Sha256);
    assert_eq!(token::mint(&id, &r, now).expect("mint"), expected);
    assert_eq!(token::mint(&id1, &r, now).expect("mint"), expected);

    let trusted = TrustedCert::from_pem(&cert).expect("cert");
    let v = Verifier::new([trusted.clone()]);
    assert_eq!(
        v.verify(&expected, now).expect("pkcs1").padding,
        Some(Padding::Pkcs1v15)
    );

    let pss = String::from_utf8(data("token-pss-sha512.txt")).expect("ascii");
    let strict = Verifier::new([trusted])
        .with_allowed_algs(&[HashAlg::Sha512])
        .with_padding(PaddingPolicy::Pss);
    assert_eq!(
        strict.verify(&pss, now).expect("pss").padding,
        Some(Padding::Pss)
    );
    // SHA512 is not allowed by default.
    assert!(matches!(
        v.verify(&pss, now),
        Err(VerifyError::AlgNotAllowed { .. })
    ));
}

/// Replaces the signature part's field `index` (0 = version … 3 = esc).
fn with_sig_field(t: &str, index: usize, value: &str) -> String {
    let (msg, sig) = t.rsplit_once("&Signature=").expect("signature");
    let mut fields: Vec<&str> = sig.split('|').collect();
    fields[index] = value;
    format!("{msg}&Signature={}", fields.join("|"))
}

fn expect_err(
    result: Result<impl std::fmt::Debug, VerifyError>,
    step: u8,
    hresult: u32,
) -> VerifyError {
    let err = result.expect_err("should fail");
    assert_eq!(err.step(), step, "{err}");
    assert_eq!(err.hresult(), hresult, "{err}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("step {step} (")), "{text}");
    assert!(text.contains(err.hresult_name()), "{text}");
    assert!(text.contains(&format!("0x{hresult:08X}")), "{text}");
    err
}

#[test]
fn step_1_cookie() {
    let v = verifier();
    let t = mint_main(T0);
    assert_eq!(
        expect_err(v.verify_cookie_utf16(&[], T0), 1, BADPACKET),
        VerifyError::EmptyCookie
    );
    assert_eq!(
        expect_err(v.verify_cookie_utf16(&[0, 0], T0), 1, BADPACKET),
        VerifyError::EmptyCookie
    );
    assert_eq!(
        expect_err(v.verify("", T0), 1, BADPACKET),
        VerifyError::EmptyCookie
    );
    let mut odd = utf16(&t);
    odd.push(0);
    assert!(matches!(
        expect_err(v.verify_cookie_utf16(&odd, T0), 1, BADPACKET),
        VerifyError::OddLengthUtf16 { .. }
    ));
    let mut lone = utf16("Host=");
    lone.extend(0xDC00u16.to_le_bytes());
    lone.extend(utf16(&t[5..]));
    assert_eq!(
        expect_err(v.verify_cookie_utf16(&lone, T0), 1, BADPACKET),
        VerifyError::InvalidUtf16 { unit: 6 }
    );
    let accented = t.replacen("hv01", "hv\u{e9}1", 1);
    let err = expect_err(v.verify_cookie_utf16(&utf16(&accented), T0), 1, BADPACKET);
    assert_eq!(
        err,
        VerifyError::NotPrintableAscii {
            ch: '\u{e9}',
            position: 8
        }
    );
    assert!(err.to_string().contains("U+00E9"), "{err}");
    let huge = format!("{t}{}", "A".repeat(4096));
    assert!(matches!(
        expect_err(v.verify_cookie_utf16(&utf16(&huge), T0), 1, BADPACKET),
        VerifyError::TooLong { .. }
    ));
    assert!(matches!(
        expect_err(v.verify(&huge, T0), 1, BADPACKET),
        VerifyError::TooLong { .. }
    ));
    // 4096 ASCII characters (8 KiB of UTF-16) plus the NUL still pass step 1.
    let max = "A".repeat(4096);
    let mut cookie = utf16(&max);
    cookie.extend([0, 0]);
    assert!(matches!(
        v.verify_cookie_utf16(&cookie, T0),
        Err(VerifyError::BadMessage(_))
    ));
}

#[test]
fn step_2_message() {
    let v = verifier();
    let t = mint_main(T0);
    let (msg, sig) = t.rsplit_once("&Signature=").expect("sig");
    let reordered = format!(
        "Port=2179&Host={HOST}&ExpiresOn={}&Signature={sig}",
        T0 + 60
    );
    assert_eq!(
        expect_err(v.verify(&reordered, T0), 2, BADPACKET),
        VerifyError::BadMessage(MessageFault::FieldOrder)
    );
    let extra = format!("{msg}&VMID=1234&Signature={sig}");
    assert!(matches!(
        expect_err(v.verify(&extra, T0), 2, BADPACKET),
        VerifyError::BadMessage(_)
    ));
    let no_sig = msg.to_owned();
    assert_eq!(
        expect_err(v.verify(&no_sig, T0), 2, BADPACKET),
        VerifyError::BadMessage(MessageFault::NoSignature)
    );
    let big_port = t.replacen("Port=2179", "Port=99999", 1);
    assert_eq!(
        expect_err(v.verify(&big_port, T0), 2, BADPACKET),
        VerifyError::BadMessage(MessageFault::Port)
    );
}

#[test]
fn step_3_signature_field() {
    let v = verifier();
    let t = mint_main(T0);
    assert_eq!(
        expect_err(v.verify(&with_sig_field(&t, 0, "2"), T0), 3, BADPACKET),
        VerifyError::UnsupportedVersion { version: 2 }
    );
    let md5 = expect_err(
        v.verify(&with_sig_field(&t, 1, "MD5"), T0),
        3,
        ACCESS_DENIED,
    );
    assert_eq!(md5, VerifyError::AlgNotAllowed { alg: "MD5".into() });
    let sha512 =
        token::mint(&keys().main, &req(Padding::Pkcs1v15, HashAlg::Sha512), T0).expect("mint");
    assert_eq!(
        expect_err(v.verify(&sha512, T0), 3, ACCESS_DENIED),
        VerifyError::AlgNotAllowed {
            alg: "SHA512".into()
        }
    );
    assert_eq!(
        expect_err(v.verify(&with_sig_field(&t, 2, "ABCD"), T0), 3, BADPACKET),
        VerifyError::BadSignatureField(SignatureFault::Thumbprint)
    );
    assert_eq!(
        expect_err(v.verify(&format!("{t}|extra"), T0), 3, BADPACKET),
        VerifyError::BadSignatureField(SignatureFault::FieldCount)
    );
    // Thumbprint case does not matter (FedAuth compares case-insensitively).
    let lower = keys().main.thumbprint().to_string().to_ascii_lowercase();
    assert!(v.verify(&with_sig_field(&t, 2, &lower), T0).is_ok());
}

#[test]
fn step_4_trusted_issuer() {
    let k = keys();
    let v = verifier();
    let foreign =
        token::mint(&k.other, &req(Padding::Pkcs1v15, HashAlg::Sha256), T0).expect("mint");
    let err = expect_err(v.verify(&foreign, T0), 4, ACCESS_DENIED);
    assert_eq!(
        err,
        VerifyError::UntrustedIssuer {
            thumbprint: *k.other.thumbprint()
        }
    );
    assert!(err.to_string().contains(&k.other.thumbprint().to_string()));
    // Listed in TrustedIssuerCertificates, but the certificate is not installed.
    let listed_only = Verifier::from_trust_list(&[*k.other.thumbprint()], &[k.main.trusted_cert()]);
    assert!(matches!(
        expect_err(listed_only.verify(&foreign, T0), 4, ACCESS_DENIED),
        VerifyError::IssuerCertMissing { .. }
    ));
    // Installed but not listed: not trusted.
    assert!(matches!(
        expect_err(listed_only.verify(&mint_main(T0), T0), 4, ACCESS_DENIED),
        VerifyError::UntrustedIssuer { .. }
    ));
}

#[test]
fn step_5_signature() {
    let k = keys();
    let v = verifier();
    let t = mint_main(T0);
    let tampered = t.replacen("Host=hv01", "Host=hv02", 1);
    assert_eq!(
        expect_err(v.verify(&tampered, T0), 5, ACCESS_DENIED),
        VerifyError::BadSignature
    );
    // Signed by another key, claiming the trusted thumbprint.
    let forged = token::mint(&k.other, &req(Padding::Pkcs1v15, HashAlg::Sha256), T0).expect("mint");
    let forged = with_sig_field(&forged, 2, &k.main.thumbprint().to_string());
    assert_eq!(
        expect_err(v.verify(&forged, T0), 5, ACCESS_DENIED),
        VerifyError::BadSignature
    );
    assert_eq!(
        expect_err(
            v.verify(&with_sig_field(&t, 3, "abc%2"), T0),
            5,
            ACCESS_DENIED
        ),
        VerifyError::SignatureEncoding(SignatureFault::PercentEncoding)
    );
    assert_eq!(
        expect_err(v.verify(&with_sig_field(&t, 3, "a"), T0), 5, ACCESS_DENIED),
        VerifyError::SignatureEncoding(SignatureFault::Base64)
    );
}

#[test]
fn step_6_certificate_validity() {
    let v = verifier();
    // Main cert is valid T0 ..= T0 + 30 days; skew is 300 s.
    let not_yet = expect_err(v.verify(&mint_main(T0), T0 - 1000), 6, ACCESS_DENIED);
    assert!(matches!(not_yet, VerifyError::CertNotValid { now, .. } if now == T0 - 1000));
    let late = T0 + 31 * 86_400;
    let t = mint_main(T0 + 30 * 86_400 - 60);
    assert!(matches!(
        expect_err(v.verify(&t, late), 6, ACCESS_DENIED),
        VerifyError::CertNotValid { .. }
    ));
    // The signing side refuses to mint with a certificate that is not valid.
    assert!(matches!(
        token::mint(&keys().main, &MintRequest::new(HOST), late),
        Err(TokenError::CertNotValidAt { .. })
    ));
}

#[test]
fn step_7_expiry_with_skew() {
    let v = verifier();
    let t = mint_main(T0 + 1000); // ExpiresOn = T0 + 1060
    assert!(v.verify(&t, T0 + 1060).is_ok());
    // In the past but within the 300 s skew.
    assert!(v.verify(&t, T0 + 1060 + 300).is_ok());
    assert_eq!(
        expect_err(v.verify(&t, T0 + 1060 + 301), 7, ACCESS_DENIED),
        VerifyError::Expired {
            expires_on: T0 + 1060,
            now: T0 + 1361
        }
    );
    assert!(v.clone().with_skew_secs(0).verify(&t, T0 + 1061).is_err());
    // A 1-hour token minted now passes; verifying 301 s before minting it is too far out.
    let hour = token::mint(
        &keys().main,
        &MintRequest {
            ttl_secs: 3600,
            ..MintRequest::new(HOST)
        },
        T0 + 1000,
    )
    .expect("mint");
    assert!(v.verify(&hour, T0 + 1000).is_ok());
    assert!(v.verify(&hour, T0 + 700).is_ok());
    assert!(matches!(
        expect_err(v.verify(&hour, T0 + 699), 7, ACCESS_DENIED),
        VerifyError::TooFarInFuture { .. }
    ));
}

#[test]
fn step_8_resource_authorization() {
    let v = verifier();
    let parsed = v.verify(&mint_main(T0), T0).expect("verify");
    assert!(v
        .authorize_resource(&parsed, &["HV01.lab.TEST"], 2179)
        .is_ok());
    assert!(v
        .authorize_resource(&parsed, &["other", "hv01.lab.test"], 2179)
        .is_ok());
    assert!(matches!(
        expect_err(
            v.authorize_resource(&parsed, &["hv02.lab.test"], 2179),
            8,
            RAP_DENIED
        ),
        VerifyError::ResourceMismatch { .. }
    ));
    assert!(matches!(
        expect_err(v.authorize_resource(&parsed, &[], 2179), 8, RAP_DENIED),
        VerifyError::ResourceMismatch { .. }
    ));
    assert_eq!(
        expect_err(v.authorize_resource(&parsed, &[HOST], 3389), 8, RAP_DENIED),
        VerifyError::PortMismatch {
            token_port: 2179,
            requested: 3389
        }
    );
}

#[test]
fn mint_refuses_what_a_gateway_would_misread() {
    let id = &keys().main;
    for host in ["", "a&b", "a=b", "h\u{f6}st", "a b", "a\nb"] {
        assert!(
            matches!(
                token::mint(id, &MintRequest::new(host), T0),
                Err(TokenError::InvalidHost { .. })
            ),
            "{host:?}"
        );
    }
    let err = token::mint(id, &MintRequest::new("h\u{200E}x"), T0).unwrap_err();
    assert!(
        err.to_string().contains("U+200E") && err.to_string().contains("position 2"),
        "{err}"
    );
    for ttl_secs in [0, 3601] {
        assert!(matches!(
            token::mint(
                id,
                &MintRequest {
                    ttl_secs,
                    ..MintRequest::new(HOST)
                },
                T0
            ),
            Err(TokenError::Ttl { .. })
        ));
    }
    // An IPv6 literal goes in as is, without brackets.
    let t = token::mint(id, &MintRequest::new("fd00::21"), T0).expect("mint");
    assert!(t.starts_with("Host=fd00::21&Port=2179&"), "{t}");
    assert!(verifier().verify(&t, T0).is_ok());
}

#[test]
fn identity_checks() {
    let k = keys();
    let err = SigningIdentity::from_pem(
        k.main_pem.cert_pem.as_bytes(),
        k.other_pem.key_pem.as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(err, TokenError::KeyCertMismatch { .. }), "{err}");
    let again = SigningIdentity::from_pem(
        k.main_pem.cert_pem.as_bytes(),
        k.main_pem.key_pem.as_bytes(),
    )
    .expect("same");
    assert_eq!(again.thumbprint(), k.main.thumbprint());
    assert_eq!(again.not_before(), T0 as i64);
    assert_eq!(again.not_after(), (T0 + 30 * 86_400) as i64);
    assert!(
        again.subject().contains("portico test signer"),
        "{}",
        again.subject()
    );
    // Debug output never carries key material.
    assert!(!format!("{:?}", k.main_pem).contains("PRIVATE KEY"));
    assert!(SigningIdentity::from_pem(k.main_pem.cert_pem.as_bytes(), b"garbage").is_err());
    // A trust bundle may hold several certificates.
    let certs = TrustedCert::all_from_pem(
        format!("{}{}", k.main_pem.cert_pem, k.other_pem.cert_pem).as_bytes(),
    )
    .expect("bundle");
    assert_eq!(certs.len(), 2);
}

#[test]
fn key_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir: PathBuf = [env!("CARGO_TARGET_TMPDIR"), "portico-token-perms"]
        .iter()
        .collect();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (cert, key) = (dir.join("probe.crt"), dir.join("probe.key"));
    keys().main_pem.write(&cert, &key).expect("write");
    let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let id = SigningIdentity::load(&cert, &key).expect("0600 is accepted");
    assert_eq!(id.thumbprint(), keys().main.thumbprint());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = SigningIdentity::load(&cert, &key).unwrap_err();
    assert!(
        matches!(err, TokenError::KeyFilePermissions { mode: 0o644, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("probe.key") && text.contains("0644"),
        "{text}"
    );
    // Rewriting tightens an existing loose file.
    keys().main_pem.write(&cert, &key).expect("rewrite");
    assert!(SigningIdentity::load(&cert, &key).is_ok());
    assert_eq!(TrustedCert::load(&cert).expect("cert").len(), 1);
    let missing = SigningIdentity::load(&cert, &dir.join("nope.key")).unwrap_err();
    assert!(missing.to_string().contains("nope.key"), "{missing}");
}

#[test]
fn redact_shows_prefix_and_expiry_only() {
    let t = mint_main(T0);
    let r = token::redact(&t);
    assert!(r.contains(&format!("ExpiresOn={}", T0 + 60)), "{r}");
    let (_, sig) = t.rsplit_once('|').expect("sig");
    assert!(!r.contains(&sig[..16]), "{r}");
    assert!(!r.contains(&keys().main.thumbprint().to_string()), "{r}");
    assert!(r.len() < 80, "{r}");
    // Parsed tokens' Debug leaves out the signature too.
    let dbg = format!("{:?}", token::parse(&t).expect("parse"));
    assert!(!dbg.contains(&sig[..16]), "{dbg}");
}

#[test]
fn rdp_file_carries_the_token() {
    let t = mint_main(T0);
    let f = token::rdp_file(
        "rdgw.example.com",
        HOST,
        2179,
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        &t,
    )
    .expect("rdp");
    assert!(f.contains(&format!("gatewayaccesstoken:s:{t}\r\n")));
    assert!(f.contains("gatewaycredentialssource:i:5\r\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(s in "\\PC*") {
        let _ = token::parse(&s);
        let _ = token::redact(&s);
        let _ = verifier().verify(&s, T0);
    }

    #[test]
    fn parse_never_panics_on_token_like_text(s in "(Host=|&Port=|&ExpiresOn=|&Signature=|[0-9]{1,13}|\\||SHA256|%[0-9A-Fa-f]{0,2}|[A-Za-z+/=]{0,8}|\u{200E})*") {
        let _ = token::parse(&s);
        let _ = token::redact(&s);
        let _ = verifier().verify(&s, T0);
    }

    #[test]
    fn cookie_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = verifier().verify_cookie_utf16(&bytes, T0);
    }

    #[test]
    fn round_trip_random_hosts_and_ports(
        host in "[!-%'-<>-~]{1,64}",
        port in any::<u16>(),
        ttl in 1u64..=3600,
        pss in any::<bool>(),
    ) {
        let padding = if pss { Padding::Pss } else { Padding::Pkcs1v15 };
        let r = MintRequest { host: &host, port, ttl_secs: ttl, padding, hash: HashAlg::Sha256 };
        let t = token::mint(&keys().main, &r, T0).expect("mint");
        let parsed = verifier().verify(&t, T0).expect("verify");
        prop_assert_eq!(&parsed.host, &host);
        prop_assert_eq!(parsed.port, port);
        prop_assert_eq!(parsed.expires_on, T0 + ttl);
        prop_assert!(verifier().authorize_resource(&parsed, &[&host.to_ascii_uppercase()], port).is_ok());
        prop_assert_eq!(token::parse(&t).expect("parse").signature, parsed.signature);
    }
}
