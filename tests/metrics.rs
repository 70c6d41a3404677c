//! The exposition as Prometheus' own linter sees it, after real traffic has touched every
//! family (TCP, UDP, retries, failures).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_reports_nothing() {
    let gws = gateways(&["web01", "web02", "web03"]).await;
    let d = portico::daemon::start(config(&[
        ("web01", gws[0].addr, 1),
        ("web02", gws[1].addr, 2),
        ("web03", gws[2].addr, 1),
    ]))
    .await
    .unwrap();
    let vip = d.local_addr("rdgw-https").unwrap();
    for n in 2..12u8 {
        which_gateway(source(n), vip).await.unwrap();
        udp_which(source(n), d.local_addr("rdgw-udp").unwrap())
            .await
            .unwrap();
    }
    gws[0].kill().await;
    for n in 12..30u8 {
        which_gateway(source(n), vip).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // one housekeeping pass
    let text = scrape(d.metrics_addr.unwrap()).await;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .expect("HTTP body")
        .to_string();
    assert!(
        body.contains("portico_affinity_entries{group=\"rdgw\"}"),
        "affinity gauge exported"
    );
    assert!(
        metric(
            &body,
            "portico_connect_retries_total{service=\"rdgw-https\"}"
        ) >= 1.0
    );

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics said:\n{said}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}
