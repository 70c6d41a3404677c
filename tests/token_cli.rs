//! `portico token keygen | mint | verify | rdp` as an operator types them.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    c.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn mint_verify_and_rdp_round_trip_and_each_failure_names_its_step() {
    let dir = std::env::temp_dir().join(format!("portico-token-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let (cert, key, other_cert, other_key) = (p("s.pem"), p("s.key"), p("o.pem"), p("o.key"));

    let g = run(&["token", "keygen", "--cert", &cert, "--key", &key], None);
    assert!(g.status.success(), "{}", text(&g));
    let thumb = text(&g)
        .split("thumbprint ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(thumb.len(), 40);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(run(
        &[
            "token",
            "keygen",
            "--cert",
            &other_cert,
            "--key",
            &other_key
        ],
        None
    )
    .status
    .success());

    let m = run(
        &[
            "token",
            "mint",
            "--cert",
            &cert,
            "--key",
            &key,
            "--host",
            "hv01.lab.test",
        ],
        None,
    );
    assert!(m.status.success(), "{}", text(&m));
    let token = String::from_utf8_lossy(&m.stdout).trim().to_string();
    assert!(
        token.starts_with("Host=hv01.lab.test&Port=2179&ExpiresOn="),
        "{token}"
    );
    assert!(
        token.contains(&format!("&Signature=1|SHA256|{thumb}|")),
        "{token}"
    );

    // The gateway's view: trusted list holds our thumbprint, our certificate is installed.
    let ok = run(
        &[
            "token",
            "verify",
            "--trusted-thumbprint",
            &thumb,
            "--trusted-cert",
            &cert,
            "--resource",
            "hv01.lab.test",
        ],
        Some(&token),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).starts_with("valid: Host=hv01.lab.test Port=2179"),
        "{}",
        text(&ok)
    );

    // A thumbprint pasted from the Windows dialog with its invisible mark.
    let pasted = format!("\u{200e}{thumb}");
    let bad = run(
        &[
            "token",
            "verify",
            "--trusted-thumbprint",
            &pasted,
            "--trusted-cert",
            &cert,
        ],
        Some(&token),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).contains("U+200E") && text(&bad).contains("position 1"),
        "{}",
        text(&bad)
    );

    // Signed by a certificate the gateway does not trust.
    let untrusted = run(
        &["token", "verify", "--trusted-cert", &other_cert],
        Some(&token),
    );
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(text(&untrusted).contains("step 4"), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains("0x800759F8"),
        "{}",
        text(&untrusted)
    );

    // Tampered host: the signature no longer matches.
    let tampered = token.replacen("hv01", "hv02", 1);
    let t = run(
        &["token", "verify", "--trusted-cert", &cert],
        Some(&tampered),
    );
    assert_eq!(t.status.code(), Some(1));
    assert!(text(&t).contains("step 5"), "{}", text(&t));

    // The token names another host than the one the client asks for.
    let r = run(
        &[
            "token",
            "verify",
            "--trusted-cert",
            &cert,
            "--resource",
            "hv09.lab.test",
        ],
        Some(&token),
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r).contains("step 8"), "{}", text(&r));

    let rdp = run(
        &[
            "token",
            "rdp",
            "--cert",
            &cert,
            "--key",
            &key,
            "--host",
            "hv01.lab.test",
            "--vm-id",
            "1B2C3D4E-0000-4000-8000-000000000001",
            "--gateway",
            "rdgw.lab.test",
        ],
        None,
    );
    assert!(rdp.status.success(), "{}", text(&rdp));
    let file = String::from_utf8_lossy(&rdp.stdout);
    for line in [
        "full address:s:hv01.lab.test\r\n",
        "server port:i:2179\r\n",
        "pcb:s:1B2C3D4E-0000-4000-8000-000000000001\r\n",
        "gatewayhostname:s:rdgw.lab.test\r\n",
        "gatewaycredentialssource:i:5\r\n",
    ] {
        assert!(file.contains(line), "missing {line:?} in {file}");
    }
    let tok_line = file
        .lines()
        .find_map(|l| l.strip_prefix("gatewayaccesstoken:s:"))
        .unwrap();
    let v = run(
        &["token", "verify", "--trusted-cert", &cert],
        Some(tok_line.trim()),
    );
    assert!(v.status.success(), "the .rdp token verifies: {}", text(&v));
    let _ = std::fs::remove_dir_all(&dir);
}
