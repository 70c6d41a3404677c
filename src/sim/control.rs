//! A tiny line-based control socket for a simulated gateway, for the lab, drills and shell
//! sessions (`nc 127.0.0.1 PORT`, `socat - UNIX:/path`). One command per line, one or more
//! reply lines, the last starting with `ok` or `err`:
//!
//! | command | effect / reply |
//! |---|---|
//! | `fault <spec>` | turn a fault on (`token-reject`, `slow:250`, … see [`Fault`]) |
//! | `clear [<spec>]` | turn one fault kind (or all) off |
//! | `faults` | `ok faults=<comma list or ->` |
//! | `stats` | `ok name=value …` for every counter |
//! | `records` | one `record …` line per tunnel, then `ok <count>` |
//!
//! There is no authentication: bind it to loopback or a Unix socket in a private directory.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Fault, SimControl, TunnelRecord};

/// Longest command line accepted; longer closes the connection.
pub const MAX_LINE: usize = 1024;

/// Runs one command and returns the reply (every line ends in `\n`).
pub fn execute(control: &SimControl, line: &str) -> String {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    if words.next().is_some() {
        return "err too many arguments\n".into();
    }
    let faults_line = |c: &SimControl| {
        let list: Vec<String> = c.faults().list().iter().map(Fault::to_string).collect();
        if list.is_empty() {
            "ok faults=-\n".to_owned()
        } else {
            format!("ok faults={}\n", list.join(","))
        }
    };
    match (cmd, arg) {
        ("fault", Some(spec)) => match spec.parse::<Fault>() {
            Ok(f) => {
                control.set_fault(f);
                faults_line(control)
            }
            Err(e) => format!("err {e}\n"),
        },
        ("clear", None) => {
            control.clear_faults();
            faults_line(control)
        }
        ("clear", Some(spec)) => match spec.parse::<Fault>() {
            Ok(f) => {
                control.clear_fault(f);
                faults_line(control)
            }
            Err(e) => format!("err {e}\n"),
        },
        ("faults", None) => faults_line(control),
        ("stats", None) => {
            let pairs: Vec<String> = control
                .stats()
                .pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("ok {}\n", pairs.join(" "))
        }
        ("records", None) => {
            let recs = control.records();
            let mut out: String = recs.iter().map(record_line).collect();
            out.push_str(&format!("ok {}\n", recs.len()));
            out
        }
        _ => format!(
            "err unknown command {:?}: fault <spec> | clear [<spec>] | faults | stats | records\n",
            line.trim()
        ),
    }
}

fn record_line(r: &TunnelRecord) -> String {
    format!(
        "record seq={} conn={} peer={} transport={} verdict=\"{}\" client={} target={} channel={} to_target={} from_target={} close={}\n",
        r.seq,
        r.connection_id,
        r.peer,
        r.transport.as_str(),
        r.verdict,
        r.client_name.as_deref().unwrap_or("-").replace(char::is_whitespace, "_"),
        r.target.as_deref().unwrap_or("-").replace(char::is_whitespace, "_"),
        r.channel_status
            .map_or_else(|| "-".to_owned(), |c| format!("{c:#010x}")),
        r.bytes_to_target,
        r.bytes_from_target,
        r.close_reason
    )
}

/// Serves one control connection until it closes or sends a line over [`MAX_LINE`].
pub(crate) async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(control: SimControl, s: S) {
    let (rd, mut wr) = tokio::io::split(s);
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut rd).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                let _ = wr.write_all(b"err line too long\n").await;
                return;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let reply = execute(&control, &text);
        if wr.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
