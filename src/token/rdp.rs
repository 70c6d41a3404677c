//! The .rdp file a portal hands a tenant for a console connection (PROTOCOLS.md §6).

use super::error::TokenError;

/// VMConnect listener port on Hyper-V hosts (`Msvm_TerminalServiceSettingData.ListenerPort`).
pub const VMCONNECT_PORT: u16 = 2179;

/// Builds a console-connect .rdp file: `full address` and `server port` name the Hyper-V host,
/// `pcb` the VM, the gateway fields make the client always use `gateway_alias` with the token
/// as PAA cookie (`gatewaycredentialssource:i:5`). Lines end in CRLF, as mstsc writes them.
///
/// Every value must be printable ASCII without spaces: a CR or LF would let a value add .rdp
/// properties of its own (for instance an `alternate shell`), so such input is refused rather
/// than escaped. The file holds the token, so it is as secret as the token.
pub fn rdp_file(
    gateway_alias: &str,
    host: &str,
    port: u16,
    vm_id: &str,
    token: &str,
) -> Result<String, TokenError> {
    for (field, value) in [
        ("gatewayhostname", gateway_alias),
        ("full address", host),
        ("pcb", vm_id),
        ("gatewayaccesstoken", token),
    ] {
        check_value(field, value)?;
    }
    let lines = [
        format!("full address:s:{host}"),
        format!("server port:i:{port}"),
        format!("pcb:s:{vm_id}"),
        format!("gatewayhostname:s:{gateway_alias}"),
        "gatewayusagemethod:i:1".to_owned(),
        "gatewaycredentialssource:i:5".to_owned(),
        "gatewayprofileusagemethod:i:1".to_owned(),
        format!("gatewayaccesstoken:s:{token}"),
    ];
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    Ok(out)
}

fn check_value(field: &'static str, value: &str) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::RdpField {
            field,
            reason: "empty".into(),
        });
    }
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    {
        Some((index, ch)) => Err(TokenError::RdpField {
            field,
            reason: format!(
                "{} at position {} is not printable ASCII",
                super::thumbprint::describe_char(ch),
                index + 1
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_every_console_connect_field() {
        let f = rdp_file(
            "rdgw.example.com",
            "hv01.lab.test",
            VMCONNECT_PORT,
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "Host=hv01.lab.test&Port=2179&ExpiresOn=1&Signature=1|SHA256|AB|x",
        )
        .expect("valid");
        assert_eq!(
            f,
            "full address:s:hv01.lab.test\r\n\
             server port:i:2179\r\n\
             pcb:s:3f2504e0-4f89-11d3-9a0c-0305e82c3301\r\n\
             gatewayhostname:s:rdgw.example.com\r\n\
             gatewayusagemethod:i:1\r\n\
             gatewaycredentialssource:i:5\r\n\
             gatewayprofileusagemethod:i:1\r\n\
             gatewayaccesstoken:s:Host=hv01.lab.test&Port=2179&ExpiresOn=1&Signature=1|SHA256|AB|x\r\n"
        );
    }

    #[test]
    fn refuses_line_injection() {
        let err = rdp_file("gw", "hv01", 2179, "id\r\nalternate shell:s:cmd", "t").unwrap_err();
        assert!(err.to_string().contains("pcb"), "{err}");
        assert!(err.to_string().contains("U+000D"), "{err}");
    }
}
