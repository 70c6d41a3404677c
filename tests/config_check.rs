//! `portico::config::parse` on the shipped configs (must pass) and on broken fixtures under
//! `tests/data/config/` (each must fail with the diagnostic its first comment line describes).

use std::path::{Path, PathBuf};

use std::net::SocketAddr;
use std::time::Duration;

use portico::config::{self, defaults, CheckIntervals, CheckKind, Diagnostic, Protocol, VipMode};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn check_file(name: &str) -> Result<(config::Config, Vec<Diagnostic>), config::ConfigError> {
    let path = data(name);
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    config::parse_with_warnings(&text, &path)
}

#[test]
fn shipped_configs_pass() {
    for name in ["config/portico.toml", "config/lab.toml"] {
        match check_file(name) {
            Ok((_, warnings)) => assert!(warnings.is_empty(), "{name} warnings: {warnings:#?}"),
            Err(e) => panic!("{name} fails:\n{e}"),
        }
    }
}

/// (fixture, expected diagnostics as (line, field, message fragment)), in reported order.
type Case = (&'static str, &'static [(usize, &'static str, &'static str)]);

const BROKEN: &[Case] = &[
    (
        "broken-dsr.toml",
        &[
            (9, "service[0].forwarding", "needs [node] interface"),
            (10, "service[0].backend_port", "cannot rewrite ports"),
            (14, "service[1].listen", "needs the VIP and port itself"),
            (17, "service[1].forwarding", "needs [node] interface"),
            (23, "service[2].forwarding", "unknown forwarding \"nat\""),
            (26, "pool.gw.backends[1].address", "of dsr service \"tls\""),
            (26, "pool.gw.backends[1].address", "of dsr service \"any\""),
        ],
    ),
    (
        "broken-dsr-sync.toml",
        &[
            (16, "dsr.sync_listen", "not a wildcard"),
            (19, "dsr.sync_peers[1]", "is listed twice"),
            (20, "dsr.sync_peers[2]", "this node's own sync_listen"),
            (
                21,
                "dsr.sync_peers[3]",
                "not the address family of sync_listen",
            ),
            (22, "dsr.sync_peers[4]", "the port is missing"),
            (
                24,
                "dsr.xdp",
                "unknown xdp setting \"yes\", expected one of: auto, on, off",
            ),
        ],
    ),
    (
        "broken-dsr-vip-group.toml",
        &[(
            18,
            "service[0].listen",
            "is in VIP group 2 (vrid 52), but the dsr forwarder follows the first group's VRRP instance (vrid 51)",
        )],
    ),
    (
        "broken-unknown-field.toml",
        &[(
            7,
            "service[0].listn",
            "unknown field \"listn\", expected one of: name, listen,",
        )],
    ),
    (
        "broken-wrong-type.toml",
        &[(
            13,
            "pool.gw.backends[1].weight",
            "expected an integer, found string \"2\"",
        )],
    ),
    (
        "broken-address.toml",
        &[
            (7, "service[0].listen", "\"127.0.0.1\": the port is missing"),
            (
                11,
                "pool.gw.backends[0].address",
                "\"10.0.0.300\" is not an address",
            ),
        ],
    ),
    (
        "broken-missing-pool.toml",
        &[(
            8,
            "service[0].pool",
            "no pool named \"gateway\" (defined pools: gw)",
        )],
    ),
    (
        "broken-duplicate-service.toml",
        &[(
            11,
            "service[1].name",
            "duplicate service name \"https\" (first used by service[0] at line 6)",
        )],
    ),
    (
        "broken-duplicate-backend.toml",
        &[
            (
                14,
                "pool.gw.backends[2].name",
                "duplicate backend name \"web01\" (first at backends[0], line 12)",
            ),
            (
                15,
                "pool.gw.backends[3].address",
                "duplicate backend address \"10.0.0.12:443\"",
            ),
        ],
    ),
    (
        "broken-weight-zero.toml",
        &[(
            12,
            "pool.gw.backends[0].weight",
            "must be between 1 and 1000, got 0",
        )],
    ),
    (
        "broken-prefix.toml",
        &[
            (
                8,
                "vip.addresses[0]",
                "prefix length \"33\" is out of range: IPv4 allows 0..=32",
            ),
            (9, "vip.addresses[1]", "\"192.0.2.11\" has no prefix length"),
        ],
    ),
    (
        "broken-empty-pool.toml",
        &[(11, "pool.gw.backends", "empty pool")],
    ),
    (
        "broken-port-clash.toml",
        &[(
            12,
            "service[1].listen",
            "port 443/tcp clashes with service \"any\" on 0.0.0.0:443 (line 7)",
        )],
    ),
    (
        "broken-affinity-group.toml",
        &[
            (
                15,
                "service[1].pool",
                "affinity group \"rdgw\" already uses pool \"gw\"",
            ),
            (
                16,
                "service[1].affinity.ipv4_prefix",
                "which has ipv4_prefix = 24",
            ),
        ],
    ),
    (
        "broken-vrrp-missing.toml",
        &[
            (5, "node.interface", "required when [vip] is set"),
            (7, "vip.vrrp", "mode = \"vrrp\" needs a [vip.vrrp] table"),
        ],
    ),
    (
        "broken-vrrp-values.toml",
        &[
            (11, "vip.vrrp.vrid", "must be between 1 and 255, got 0"),
            (
                12,
                "vip.vrrp.advert_interval_ms",
                "105 is not a multiple of 10",
            ),
        ],
    ),
    (
        "broken-vip-announce.toml",
        &[
            (
                8,
                "vip.label",
                "\"enp0s31f6:portico-vip\" is longer than the kernel's 15-byte address label",
            ),
            (
                9,
                "vip.garp_master_repeat",
                "must be between 1 and 100, got 0",
            ),
        ],
    ),
    (
        "broken-vip-groups.toml",
        &[
            (
                12,
                "vip[1].addresses",
                "192.0.2.10 is also in VIP group 0: an address belongs to one group",
            ),
            (
                14,
                "vip[1].vrrp.vrid",
                "vrid 51 is also used by VIP group 0: one VRID per instance",
            ),
        ],
    ),
    (
        "broken-table-size.toml",
        &[(12, "pool.gw.table_size", "65536 is not prime")],
    ),
    (
        "broken-channel-target.toml",
        &[(
            16,
            "pool.gw.health.rdg_token.channel_target",
            "\"canary:0\": port \"0\" is not 1..=65535",
        )],
    ),
    (
        "broken-health-intervals.toml",
        &[
            (
                15,
                "pool.gw.health.tcp_interval_ms",
                "must be between 1 and 3600000, got 0",
            ),
            (
                16,
                "pool.gw.health.rdg_token_interval_ms",
                "must be between 1 and 3600000, got 3600001",
            ),
        ],
    ),
    (
        "broken-health-zero.toml",
        &[
            (
                14,
                "pool.gw.health.rise",
                "must be between 1 and 1000, got 0",
            ),
            (
                15,
                "pool.gw.health.fall",
                "must be between 1 and 1000, got 0",
            ),
            (
                16,
                "pool.gw.health.timeout_ms",
                "must be between 1 and 3600000, got 0",
            ),
        ],
    ),
    (
        "broken-checks.toml",
        &[
            (14, "pool.gw.health.checks[1]", "\"tls\" needs a tls table"),
            (14, "pool.gw.health.checks[2]", "duplicate check \"tls\""),
            (
                14,
                "pool.gw.health.checks[3]",
                "\"rdg-token\" needs an rdg_token table",
            ),
        ],
    ),
    (
        "broken-dns-zone.toml",
        &[(15, "dns.zone", "has an empty label")],
    ),
    (
        "broken-dns-names.toml",
        &[
            (16, "dns.alias", "is outside the zone \"lab.test.\""),
            (17, "dns.alias_services[1]", "no service named \"nope\""),
            (18, "dns.allow_transfer[0]", "not an address or prefix"),
            (19, "dns.soa.rname", "a dot in the mailbox's local part"),
            (19, "dns.soa.refresh_s", "must be between 1 and"),
        ],
    ),
    (
        "broken-syntax.toml",
        &[(3, "", "syntax error: invalid basic string")],
    ),
    (
        "broken-missing-node.toml",
        &[(1, "node", "missing [node] table")],
    ),
    (
        "broken-many.toml",
        &[
            (4, "node.hostname", "unknown field \"hostname\""),
            (
                10,
                "service[0].idle_timeout",
                "(did you mean \"idle_timeout_s\"?)",
            ),
            (
                15,
                "service[1].protocol",
                "unknown protocol \"sctp\", expected one of: tcp, udp",
            ),
            (
                20,
                "pool.gw.backends[0].weight",
                "must be between 1 and 1000, got 1001",
            ),
            (
                24,
                "pool.gw.health.checks",
                "wrong type: expected an array, found string \"tcp\"",
            ),
        ],
    ),
];

#[test]
fn broken_configs_report_every_error_at_its_field() {
    let mut failures = Vec::new();
    for (fixture, expected) in BROKEN {
        let name = format!("tests/data/config/{fixture}");
        let got = match check_file(&name) {
            Ok(_) => {
                failures.push(format!("{fixture}: accepted"));
                continue;
            }
            Err(e) => e.diagnostics,
        };
        let matches = got.len() == expected.len()
            && got
                .iter()
                .zip(expected.iter())
                .all(|(d, (line, field, fragment))| {
                    d.line == *line
                        && d.field == *field
                        && d.message.contains(fragment)
                        && d.column > 0
                });
        if !matches {
            let got: Vec<String> = got.iter().map(|d| d.to_string()).collect();
            failures.push(format!("{fixture}: expected {expected:#?}\ngot {got:#?}"));
        }
        for d in &got {
            assert_eq!(d.file, data(&name), "{fixture}: diagnostics name the file");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_fixture_is_checked_and_says_what_is_wrong() {
    for entry in std::fs::read_dir(data("tests/data/config")).expect("fixture dir") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .into_string()
            .expect("utf-8 name");
        if !name.starts_with("broken-") {
            continue;
        }
        assert!(
            BROKEN.iter().any(|(f, _)| *f == name),
            "{name} has no expectations in BROKEN"
        );
        let text = std::fs::read_to_string(data(&format!("tests/data/config/{name}")))
            .expect("fixture readable");
        assert!(
            text.starts_with("# broken: "),
            "{name}: first line must say what is wrong"
        );
    }
}

#[test]
fn display_is_file_line_col_field_message() {
    let text = MINIMAL.replace("name = \"lb1\"", "name = \"\"");
    let err = config::parse(&text, Path::new("/etc/portico/x.toml")).expect_err("invalid");
    let first = err.diagnostics[0].to_string();
    assert!(
        first.starts_with("/etc/portico/x.toml:3:8: node.name: must not be empty"),
        "{first}"
    );
    assert_eq!(err.to_string().lines().count(), err.diagnostics.len());
}

#[test]
fn load_reports_an_unreadable_file_by_name() {
    let path = data("tests/data/config/does-not-exist.toml");
    let err = config::load(&path).expect_err("missing file");
    assert_eq!(err.diagnostics.len(), 1);
    let d = &err.diagnostics[0];
    assert_eq!((d.file.as_path(), d.line), (path.as_path(), 0));
    assert!(err
        .to_string()
        .starts_with(&format!("{}: cannot read", path.display())));
}

const MINIMAL: &str = r#"
[node]
name = "lb1"

[[service]]
name = "https"
listen = "192.0.2.10:443"
pool = "gw"

[[service]]
name = "udp"
listen = "192.0.2.10:3391"
protocol = "udp"
pool = "gw"

[pool.gw]
backends = [ { name = "web01", address = "10.0.0.11" } ]
"#;

#[test]
fn defaults_are_the_documented_consts() {
    let (c, warnings) =
        config::parse_with_warnings(MINIMAL, Path::new("minimal.toml")).expect("valid");
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(c.source, Path::new("minimal.toml"));
    assert!(c.vip.is_none() && c.dns.is_none() && c.node.interface.is_none());
    let (tcp, udp) = (&c.services[0], &c.services[1]);
    assert_eq!(tcp.protocol, Protocol::Tcp);
    assert_eq!(tcp.backend_port, 443);
    assert_eq!(udp.backend_port, 3391);
    assert_eq!(
        tcp.connect_timeout,
        Duration::from_millis(defaults::CONNECT_TIMEOUT_MS)
    );
    assert_eq!(tcp.connect_attempts.get(), defaults::CONNECT_ATTEMPTS);
    assert_eq!(
        tcp.idle_timeout,
        Duration::from_secs(defaults::TCP_IDLE_TIMEOUT_S)
    );
    assert_eq!(
        udp.idle_timeout,
        Duration::from_secs(defaults::UDP_IDLE_TIMEOUT_S)
    );
    assert_eq!(tcp.backlog, defaults::BACKLOG);
    assert_eq!(udp.max_flows, defaults::MAX_FLOWS);
    // No affinity table: the group is the pool, so TCP and UDP share one stick table.
    assert_eq!(tcp.affinity, udp.affinity);
    assert_eq!(tcp.affinity.group, "gw");
    assert_eq!(tcp.affinity.ipv4_prefix, defaults::AFFINITY_IPV4_PREFIX);
    assert_eq!(tcp.affinity.ipv6_prefix, defaults::AFFINITY_IPV6_PREFIX);
    assert_eq!(
        tcp.affinity.idle_timeout,
        Duration::from_secs(defaults::AFFINITY_IDLE_TIMEOUT_S)
    );
    assert_eq!(tcp.affinity.max_entries, defaults::AFFINITY_MAX_ENTRIES);
    let pool = c.pool("gw").expect("pool");
    assert_eq!(pool.table_size, defaults::TABLE_SIZE);
    assert_eq!(pool.backends[0].weight.get(), defaults::BACKEND_WEIGHT);
    assert_eq!(pool.backends[0].port, None);
    assert_eq!(pool.health.checks, vec![CheckKind::Tcp]);
    assert_eq!(
        pool.health.interval,
        Duration::from_millis(defaults::HEALTH_INTERVAL_MS)
    );
    assert_eq!(
        pool.health.timeout,
        Duration::from_millis(defaults::HEALTH_TIMEOUT_MS)
    );
    assert_eq!(
        pool.health.intervals,
        CheckIntervals::all(Duration::from_millis(defaults::HEALTH_INTERVAL_MS)),
        "every check tier defaults to interval_ms"
    );
    assert_eq!(pool.health.rise.get(), defaults::HEALTH_RISE);
    assert_eq!(pool.health.fall.get(), defaults::HEALTH_FALL);
    assert!(pool.health.passive && pool.health.tls.is_none());
    assert_eq!(
        c.balancer.drain_timeout,
        Duration::from_secs(defaults::DRAIN_TIMEOUT_S)
    );
    assert_eq!(
        c.metrics.listen,
        defaults::METRICS_LISTEN.parse::<SocketAddr>().ok()
    );
    assert_eq!(c.admin.socket, Path::new(defaults::ADMIN_SOCKET));
}

#[test]
fn reference_config_values() {
    let c = config::load(&data("config/portico.toml")).expect("valid");
    let vip = c.vip.as_ref().expect("vip");
    assert_eq!(vip.addresses.len(), 2);
    let VipMode::Vrrp(vrrp) = &vip.mode else {
        panic!("vrrp mode expected")
    };
    assert_eq!((vrrp.vrid, vrrp.priority), (51, 150));
    assert_eq!(vrrp.advert_interval, Duration::from_millis(100));
    let pool = c.pool("gateways").expect("pool");
    assert_eq!(
        pool.health.checks,
        vec![CheckKind::Tcp, CheckKind::Tls, CheckKind::RdgToken]
    );
    let ms = Duration::from_millis;
    assert_eq!(
        pool.health.intervals,
        CheckIntervals {
            tcp: ms(2000),
            tls: ms(10_000),
            rdg_token: ms(30_000)
        }
    );
    assert_eq!(
        c.dns.as_ref().map(|d| d.zone.as_str()),
        Some("rdgw.example.com.")
    );
    let dns = c.dns.as_ref().expect("dns");
    assert_eq!(dns.alias, "rdgw.example.com.");
    assert_eq!(dns.nameservers, ["ns.rdgw.example.com."]);
    assert_eq!(dns.soa.rname, "hostmaster.rdgw.example.com.");
    assert_eq!(
        (
            dns.soa.refresh,
            dns.soa.retry,
            dns.soa.expire,
            dns.soa.minimum
        ),
        (
            defaults::DNS_SOA_REFRESH_S,
            defaults::DNS_SOA_RETRY_S,
            defaults::DNS_SOA_EXPIRE_S,
            dns.ttl
        ),
        "the reference spells out the defaults"
    );
    assert_eq!(dns.allow_transfer.len(), 1);
    assert_eq!(c.services[0].affinity, c.services[1].affinity);
}

#[test]
fn lab_config_values() {
    let c = config::load(&data("config/lab.toml")).expect("valid");
    assert_eq!(c.node.name, "lb-lab");
    assert!(c.vip.is_none());
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    assert_eq!(c.services[0].listen, addr("127.0.0.1:10443"));
    assert_eq!(c.services[1].listen, addr("127.0.0.1:13391"));
    assert_eq!(c.services[1].protocol, Protocol::Udp);
    assert!(c
        .services
        .iter()
        .all(|s| s.affinity.group == "rdgw" && s.pool == "gateways"));
    let pool = c.pool("gateways").expect("pool");
    let backends: Vec<(String, SocketAddr)> = pool
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.socket_addr(1)))
        .collect();
    assert_eq!(
        backends,
        vec![
            ("web01".to_owned(), addr("127.0.0.1:20443")),
            ("web02".to_owned(), addr("127.0.0.1:20444")),
            ("web03".to_owned(), addr("127.0.0.1:20445")),
        ]
    );
    assert_eq!(pool.health.interval, Duration::from_millis(1000));
    assert_eq!(pool.health.checks, vec![CheckKind::Tcp]);
    let dns = c.dns.as_ref().expect("dns");
    assert_eq!(
        (dns.listen.clone(), dns.zone.as_str()),
        (vec![addr("127.0.0.1:10053")], "lab.test.")
    );
    assert_eq!(dns.alias, "rdgw.lab.test.");
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9469")));
    assert_eq!(c.admin.socket, Path::new("/tmp/portico-lab/admin.sock"));
}

#[test]
fn warnings_do_not_stop_a_config() {
    let text = MINIMAL.replace(
        "[pool.gw]\n",
        "[metrics]\nlisten = \"0.0.0.0:9469\"\n\n[pool.gw]\ntable_size = 13\n",
    ) + "[pool.gw.health]\ninterval_ms = 500\ntimeout_ms = 500\n";
    let (c, warnings) = config::parse_with_warnings(&text, Path::new("w.toml")).expect("valid");
    assert_eq!(c.pool("gw").map(|p| p.table_size), Some(13));
    let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "metrics.listen",
            "pool.gw.table_size",
            "pool.gw.health.timeout_ms"
        ],
        "{warnings:#?}"
    );
    assert!(warnings[0].message.contains("beyond this host"));
    assert!(warnings[1].message.contains("below 65537"));
    assert!(warnings[2].message.contains("not shorter than interval_ms"));
}

#[test]
fn metrics_can_be_switched_off() {
    for off in ["\"\"", "\"off\""] {
        let text = format!("{MINIMAL}\n[metrics]\nlisten = {off}\n");
        let c = config::parse(&text, Path::new("m.toml")).expect("valid");
        assert_eq!(c.metrics.listen, None);
    }
}

#[test]
fn zone_is_normalised() {
    let text =
        format!("{MINIMAL}\n[dns]\nlisten = [\"127.0.0.1:10053\"]\nzone = \"RDGW.Example.COM\"\n");
    let c = config::parse(&text, Path::new("z.toml")).expect("valid");
    let dns = c.dns.expect("dns");
    assert_eq!(dns.zone, "rdgw.example.com.");
    // Defaults: the alias is the apex, one name server below it, every service carried.
    assert_eq!(dns.alias, "rdgw.example.com.");
    assert_eq!(dns.nameservers, ["ns.rdgw.example.com."]);
    assert_eq!(dns.soa.rname, "hostmaster.rdgw.example.com.");
    assert_eq!(dns.soa.minimum, dns.ttl);
    assert_eq!(dns.alias_services.len(), c.services.len());
    assert!(dns.allow_transfer.is_empty());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// No file can make the checker panic: damage the reference config anywhere (cut a byte
    /// range, splice in arbitrary text) and it must answer with a config or diagnostics.
    #[test]
    fn damaged_input_never_panics(
        cut_at in 0usize..20_000,
        cut_len in 0usize..64,
        insert in "\\PC{0,16}",
        pick_lab in proptest::bool::ANY,
    ) {
        let name = if pick_lab { "config/lab.toml" } else { "config/portico.toml" };
        let original = std::fs::read_to_string(data(name)).expect("readable");
        let mut at = cut_at % (original.len() + 1);
        while !original.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + cut_len).min(original.len());
        while !original.is_char_boundary(end) {
            end -= 1;
        }
        let damaged = format!("{}{}{}", &original[..at], insert, &original[end..]);
        if let Err(e) = config::parse(&damaged, Path::new("damaged.toml")) {
            proptest::prop_assert!(!e.diagnostics.is_empty());
            for d in &e.diagnostics {
                proptest::prop_assert!(d.line >= 1 && d.column >= 1, "{}", d);
            }
        }
    }
}

#[test]
fn several_vip_groups_each_with_its_vrid() {
    let text = r#"
[node]
name = "lb1"
interface = "eth0"

[[vip]]
addresses = ["192.0.2.10/24"]
mode = "vrrp"
[vip.vrrp]
vrid = 51
priority = 150

[[vip]]
addresses = ["192.0.2.11/24"]
mode = "vrrp"
label = "vip2"
[vip.vrrp]
vrid = 52
priority = 100

[[service]]
name = "https"
listen = "0.0.0.0:10443"
pool = "gw"

[pool.gw]
backends = [ { name = "web01", address = "10.0.0.11" } ]
"#;
    let c = config::parse(text, Path::new("g.toml")).expect("valid");
    let groups: Vec<_> = c.vip_groups().collect();
    assert_eq!(groups.len(), 2);
    assert_eq!(c.vip_more.len(), 1);
    let vrids: Vec<u8> = groups
        .iter()
        .map(|g| match &g.mode {
            VipMode::Vrrp(v) => v.vrid,
            VipMode::Standalone => 0,
        })
        .collect();
    assert_eq!(vrids, [51, 52]);
    assert_eq!(groups[1].label, "vip2");
    let specs = portico::vrrp::Spec::from_config(&c);
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1].vrid, 52);
    assert_eq!(specs[0].tracked_pools, ["gw"]);
}
