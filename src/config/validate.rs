//! From text to [`Config`]: syntax, shape (serde), then meaning, collecting every error.
//!
//! The semantic checks never stop early: a helper that finds a bad value records a diagnostic
//! and hands back a harmless stand-in (usually the default), so the checks after it still run.
//! The stand-ins never escape: any error means no `Config` is returned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::defaults as d;
use super::raw::*;
use super::span::{self, FieldPath};
use super::types::*;
use super::{ConfigError, Diagnostic};

/// Shape errors reported before giving up on re-deserializing; a file with more is not a
/// slightly wrong config but a different file, and the first ones tell the story.
const MAX_SHAPE_ERRORS: usize = 50;

/// Largest accepted Maglev table: a prime just below 2^24. The table is allocated per pool,
/// so a typo of a few extra digits must be refused rather than attempted.
const MAX_TABLE_SIZE: u32 = 16_777_213;

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
const MAX_IFNAME: usize = 15;

/// Runs all three phases (see the module docs of `config`).
pub(super) fn check(text: &str, source: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let mut diagnostics: Vec<Diagnostic> = syntax_errors
            .iter()
            .map(|e| {
                let (line, column) = span::line_col(text, e.span().map_or(0, |s| s.start));
                Diagnostic {
                    file: source.to_owned(),
                    line,
                    column,
                    field: String::new(),
                    message: syntax_message(text, e),
                }
            })
            .collect();
        sort(&mut diagnostics);
        diagnostics.dedup_by_key(|d| d.line);
        return Err(ConfigError { diagnostics });
    }
    let doc_span = doc.span();
    let root = doc.into_inner();

    let mut report = Report {
        file: source,
        text,
        root: &root,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    // Phase 2: shape. Retry after cutting out each offending entry.
    let mut working = root.clone();
    let mut removed: Vec<FieldPath> = Vec::new();
    // For a misspelt key with an obvious intended spelling, "the intended key is missing"
    // would only repeat the unknown-field error.
    let mut misspelt: Vec<FieldPath> = Vec::new();
    let raw = loop {
        let de = toml::Deserializer::from(toml::Spanned::new(doc_span.clone(), working.clone()));
        match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let path = FieldPath::from_serde(e.path());
                let inner = e.inner();
                let at = inner
                    .span()
                    .unwrap_or_else(|| span::locate(&root, &path))
                    .start;
                report.push_error_at_offset(&path, at, humanize_serde(inner.message()));
                if let Some(near) = unknown_field_suggestion(inner.message()) {
                    misspelt.push(path.parent().key(near));
                }
                match span::remove(&mut working, &path) {
                    Some(cut) if report.errors.len() < MAX_SHAPE_ERRORS => removed.push(cut),
                    // Nothing left to cut (or too many errors): the shape errors so far are
                    // all we can say.
                    _ => break None,
                }
            }
        }
    };

    // Phase 3: meaning.
    let config = raw.map(|raw| {
        let shape_errors = report.errors.len();
        let config = validate(raw, source, &mut report);
        // A cut-out entry reads as missing; do not report that again.
        let semantic = report.errors.split_off(shape_errors);
        report.errors.extend(
            semantic
                .into_iter()
                .filter(|(path, _)| !removed.iter().any(|cut| path.starts_with(cut)))
                .filter(|(path, _)| !misspelt.contains(path)),
        );
        config
    });

    let mut errors: Vec<Diagnostic> = report.errors.into_iter().map(|(_, d)| d).collect();
    let mut warnings: Vec<Diagnostic> = report.warnings.into_iter().map(|(_, d)| d).collect();
    sort(&mut errors);
    sort(&mut warnings);
    match config {
        Some(config) if errors.is_empty() => Ok((config, warnings)),
        _ => Err(ConfigError {
            diagnostics: errors,
        }),
    }
}

/// toml's parse error message, with the offending key named where toml leaves it out.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    let key = e.span().and_then(|s| text.get(s)).filter(|k| !k.is_empty());
    match key {
        Some(key) if message == "duplicate key" => {
            format!("syntax error: duplicate key {key}: a key or table can be defined only once")
        }
        _ => format!("syntax error: {message}"),
    }
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.line, d.column));
}

/// serde's unknown-field message: the unknown key and the keys the table takes.
fn unknown_field_names(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field ")?;
    let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let (unknown, expected) = names.split_first()?;
    Some((unknown, expected.to_vec()))
}

/// The key an unknown key was probably meant to be.
fn unknown_field_suggestion(message: &str) -> Option<&str> {
    let (unknown, expected) = unknown_field_names(message)?;
    closest(unknown, &expected)
}

/// Makes serde's messages read like the rest: keys and types in TOML words, not Rust's.
fn humanize_serde(message: &str) -> String {
    if let Some((unknown, expected)) = unknown_field_names(message) {
        let mut out = format!("unknown field \"{unknown}\"");
        if expected.is_empty() {
            out.push_str(", this table takes no fields");
        } else {
            out.push_str(&format!(", expected one of: {}", expected.join(", ")));
            if let Some(near) = closest(unknown, &expected) {
                out.push_str(&format!(" (did you mean \"{near}\"?)"));
            }
        }
        return out;
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return format!(
                "wrong type: expected {}, found {}",
                toml_type(expected),
                toml_type(found)
            );
        }
    }
    message.to_owned()
}

/// Serde/Rust type descriptions in TOML vocabulary.
fn toml_type(serde: &str) -> String {
    let s = serde.trim();
    if s.starts_with("struct ") || s == "a map" || s == "map" {
        return "a table".to_owned();
    }
    match s {
        "i64" | "u64" | "i32" | "u32" | "u16" | "u8" => "an integer".to_owned(),
        "a sequence" | "sequence" => "an array".to_owned(),
        "a string" => "a string".to_owned(),
        "a boolean" => "true or false".to_owned(),
        _ => s.replace("floating point", "float").replace('`', ""),
    }
}

/// The expected name within edit distance 2 of `typo`, if exactly one is nearest.
fn closest<'a>(typo: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(typo, c), *c))
        // Short keys are all within 2 edits of each other; only suggest a close match.
        .filter(|(dist, _)| *dist <= 2 && *dist * 3 <= typo.chars().count())
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// === Report ===

/// Collects diagnostics, placing each on its field in the text.
struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    root: &'a DeTable<'a>,
    errors: Vec<(FieldPath, Diagnostic)>,
    warnings: Vec<(FieldPath, Diagnostic)>,
}

impl Report<'_> {
    fn make(&self, field: &FieldPath, offset: usize, message: String) -> (FieldPath, Diagnostic) {
        let (line, column) = span::line_col(self.text, offset);
        let diagnostic = Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_string(),
            message,
        };
        (field.clone(), diagnostic)
    }

    fn offset(&self, at: &FieldPath) -> usize {
        span::locate(self.root, at).start
    }

    /// The line of `at` (or of its nearest written parent), for "first defined at line N".
    fn line(&self, at: &FieldPath) -> usize {
        span::line_col(self.text, self.offset(at)).0
    }

    fn push_error_at_offset(&mut self, field: &FieldPath, offset: usize, message: String) {
        let entry = self.make(field, offset, message);
        self.errors.push(entry);
    }

    /// An error about `field`, placed on its value (or nearest written parent).
    fn error(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.error_at(field, field, message);
    }

    /// An error about `field` placed on another value `at`, when that one is what the operator
    /// wrote (e.g. `vip.mode = "vrrp"` for a missing `[vip.vrrp]`).
    fn error_at(&mut self, field: &FieldPath, at: &FieldPath, message: impl Into<String>) {
        let entry = self.make(field, self.offset(at), message.into());
        self.errors.push(entry);
    }

    fn warn(&mut self, field: &FieldPath, message: impl Into<String>) {
        let entry = self.make(field, self.offset(field), message.into());
        self.warnings.push(entry);
    }

    // --- value helpers: each records its own error and returns a stand-in ---

    /// A required, non-blank string.
    fn required_str(&mut self, path: &FieldPath, value: Option<String>, why: &str) -> String {
        match value {
            None => {
                self.error(path, format!("missing; {why}"));
                String::new()
            }
            Some(s) if s.trim().is_empty() => {
                self.error(path, format!("must not be empty; {why}"));
                String::new()
            }
            Some(s) => s,
        }
    }

    /// An integer in `min..=max`, `default` when absent.
    fn int(
        &mut self,
        path: &FieldPath,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match value {
            None => default,
            Some(v) if v < min || v > max => {
                self.error(path, format!("must be between {min} and {max}, got {v}"));
                default
            }
            Some(v) => v,
        }
    }

    fn u64(
        &mut self,
        path: &FieldPath,
        value: Option<i64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let v = self.int(
            path,
            value,
            clamp_i64(default),
            clamp_i64(min),
            clamp_i64(max),
        );
        u64::try_from(v).unwrap_or(default)
    }

    fn u32(
        &mut self,
        path: &FieldPath,
        value: Option<i64>,
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        let v = self.int(path, value, default.into(), min.into(), max.into());
        u32::try_from(v).unwrap_or(default)
    }

    fn u8(&mut self, path: &FieldPath, value: Option<i64>, default: u8, min: u8, max: u8) -> u8 {
        let v = self.int(path, value, default.into(), min.into(), max.into());
        u8::try_from(v).unwrap_or(default)
    }

    fn port(&mut self, path: &FieldPath, value: Option<i64>, default: u16) -> u16 {
        let v = self.int(path, value, default.into(), 1, 65535);
        u16::try_from(v).unwrap_or(default)
    }

    fn nonzero(
        &mut self,
        path: &FieldPath,
        value: Option<i64>,
        default: u32,
        max: u32,
    ) -> NonZeroU32 {
        let v = self.u32(path, value, default, 1, max);
        NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
    }

    /// `IP:port` with a non-zero port.
    fn socket_addr(&mut self, path: &FieldPath, text: &str) -> Option<SocketAddr> {
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.error(path, format!("\"{text}\": port 0 is not a usable port"));
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                let hint = if text.parse::<IpAddr>().is_ok() {
                    "the port is missing"
                } else {
                    "not an IP address with a port"
                };
                self.error(
                    path,
                    format!(
                        "\"{text}\": {hint}; write it as \"192.0.2.10:443\" or \"[2001:db8::10]:443\""
                    ),
                );
                None
            }
        }
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

// === Config ===

fn validate(raw: RawConfig, source: &Path, r: &mut Report<'_>) -> Config {
    let root = FieldPath::root();
    let node = node(raw.node, &root.key("node"), r);
    let mut groups: Vec<Vip> = match raw.vip {
        None => Vec::new(),
        Some(RawVips::One(v)) => vip(*v, &node, &root.key("vip"), r).into_iter().collect(),
        Some(RawVips::Many(list)) => list
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| vip(v, &node, &root.key("vip").index(i), r))
            .collect(),
    };
    vip_clashes(&groups, &raw_vip_paths(r, groups.len()), r);
    let vip_more = if groups.len() > 1 {
        groups.split_off(1)
    } else {
        Vec::new()
    };
    let vip = groups.pop();
    // Pool names as written, taken from the text rather than from `raw`: a pool cut out for a
    // shape error still exists as far as the services naming it are concerned. `None` when
    // `pool` itself is not a table: that shape error says it all.
    let pool_names: Option<BTreeSet<String>> = match r.root.get("pool").map(|v| v.get_ref()) {
        None => Some(BTreeSet::new()),
        Some(toml::de::DeValue::Table(t)) => {
            Some(t.keys().map(|k| k.get_ref().to_string()).collect())
        }
        Some(_) => None,
    };
    let services = services(raw.service, pool_names.as_ref(), &root.key("service"), r);
    let pools = pools(raw.pool, &services, &root.key("pool"), r);
    dsr_checks(&node, &services, &pools, &root, r);
    dsr_vip_groups(&services, vip.iter().chain(vip_more.iter()), &root, r);
    let balancer = balancer(raw.balancer, &root.key("balancer"), r);
    let dns = raw
        .dns
        .map(|v| dns(v, &services, vip.as_ref(), &root.key("dns"), r));
    let metrics = metrics(raw.metrics, &root.key("metrics"), r);
    let admin = admin(raw.admin, &root.key("admin"), r);
    let (dsr_sync, dsr_xdp) = match raw.dsr {
        Some(mut d) => {
            let xdp = dsr_xdp(d.xdp.take(), &root.key("dsr").key("xdp"), r);
            (dsr_sync(d, &services, &root.key("dsr"), r), xdp)
        }
        None => (None, DsrXdp::default()),
    };
    listener_clashes(&services, dns.as_ref(), &metrics, &root, r);
    Config {
        source: source.to_owned(),
        node,
        vip,
        vip_more,
        services,
        pools,
        balancer,
        dns,
        metrics,
        admin,
        dsr_sync,
        dsr_xdp,
    }
}

fn node(raw: Option<RawNode>, p: &FieldPath, r: &mut Report<'_>) -> Node {
    let Some(raw) = raw else {
        r.error(
            p,
            "missing [node] table with a name: every node needs one (it labels logs and metrics)",
        );
        return Node {
            name: String::new(),
            interface: None,
        };
    };
    let name = r.required_str(
        &p.key("name"),
        raw.name,
        "it names this node in logs, metrics and `portico ctl status`",
    );
    let interface = raw.interface.map(|i| {
        let path = p.key("interface");
        if i.is_empty() {
            r.error(&path, "must not be empty; leave it out when Portico owns no address");
        } else if i.len() > MAX_IFNAME || i.contains(['/', ' ', '\t', '\0']) {
            r.error(
                &path,
                format!("\"{i}\" is not a Linux interface name (at most {MAX_IFNAME} bytes, no '/' or spaces)"),
            );
        }
        i
    });
    Node { name, interface }
}

fn ip_prefix(text: &str) -> Result<IpPrefix, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(format!(
            "\"{text}\" has no prefix length; write it as \"192.0.2.10/24\" or \"2001:db8::10/64\""
        ));
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .trim()
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| {
            format!(
                "prefix length \"{len}\" is out of range: {} allows 0..={max}",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )
        })?;
    Ok(IpPrefix { addr, len })
}

/// The field path of VIP group `i` as written: `vip` for a single `[vip]`, `vip[i]` for
/// `[[vip]]` groups.
fn raw_vip_paths(r: &Report<'_>, n: usize) -> Vec<FieldPath> {
    let root = FieldPath::root().key("vip");
    match r.root.get("vip").map(|v| v.get_ref()) {
        Some(toml::de::DeValue::Array(_)) => (0..n).map(|i| root.index(i)).collect(),
        _ => vec![root; n],
    }
}

/// Across groups: an address belongs to one group, a VRID to one instance.
fn vip_clashes(groups: &[Vip], paths: &[FieldPath], r: &mut Report<'_>) {
    let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut vrids: HashMap<u8, usize> = HashMap::new();
    for (i, (g, p)) in groups.iter().zip(paths).enumerate() {
        for a in &g.addresses {
            if let Some(first) = addrs.insert(a.addr, i) {
                if first != i {
                    r.error(
                        &p.key("addresses"),
                        format!(
                            "{} is also in VIP group {first}: an address belongs to one group",
                            a.addr
                        ),
                    );
                }
            }
        }
        if let VipMode::Vrrp(v) = &g.mode {
            if let Some(first) = vrids.insert(v.vrid, i) {
                r.error(
                    &p.key("vrrp").key("vrid"),
                    format!(
                        "vrid {} is also used by VIP group {first}: one VRID per instance",
                        v.vrid
                    ),
                );
            }
        }
    }
}

fn vip(raw: RawVip, node: &Node, p: &FieldPath, r: &mut Report<'_>) -> Option<Vip> {
    let p = p.clone();
    let ap = p.key("addresses");
    let mut addresses = Vec::new();
    match raw.addresses {
        None => r.error(&ap, "missing; [vip] needs the addresses Portico owns"),
        Some(list) if list.is_empty() => r.error(
            &ap,
            "must list at least one address; remove [vip] if Portico owns none",
        ),
        Some(list) => {
            let mut seen: HashMap<IpAddr, usize> = HashMap::new();
            for (i, text) in list.iter().enumerate() {
                let path = ap.index(i);
                match ip_prefix(text) {
                    Err(message) => r.error(&path, message),
                    Ok(prefix) => {
                        if let Some(first) = seen.insert(prefix.addr, i) {
                            r.error(
                                &path,
                                format!(
                                    "{} is listed twice (also addresses[{first}])",
                                    prefix.addr
                                ),
                            );
                        }
                        addresses.push(prefix);
                    }
                }
            }
        }
    }
    if node.interface.is_none() {
        r.error_at(
            &FieldPath::root().key("node").key("interface"),
            &p,
            "required when [vip] is set: the VIP addresses are added to this interface",
        );
    }
    let mode_path = p.key("mode");
    let mode = raw.mode.unwrap_or_else(|| d::VIP_MODE.to_owned());
    let mode = match mode.as_str() {
        "standalone" => {
            if raw.vrrp.is_some() {
                r.warn(
                    &p.key("vrrp"),
                    "ignored: [vip] mode is \"standalone\"; set mode = \"vrrp\" to use it",
                );
            }
            VipMode::Standalone
        }
        "vrrp" => match raw.vrrp {
            Some(v) => VipMode::Vrrp(vrrp(v, &p.key("vrrp"), r)),
            None => {
                r.error_at(
                    &p.key("vrrp"),
                    &mode_path,
                    "mode = \"vrrp\" needs a [vip.vrrp] table (at least its vrid)",
                );
                VipMode::Standalone
            }
        },
        other => {
            r.error(
                &mode_path,
                format!("unknown mode \"{other}\", expected one of: standalone, vrrp"),
            );
            VipMode::Standalone
        }
    };
    let label_path = p.key("label");
    let label = raw.label.unwrap_or_else(|| d::VIP_LABEL.to_owned());
    let iface_len = node.interface.as_deref().map_or(0, str::len);
    if label.is_empty()
        || !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        r.error(
            &label_path,
            format!("\"{label}\" must be non-empty letters, digits, '-', '_' or '.'"),
        );
    } else if iface_len + 1 + label.len() > MAX_IFNAME {
        r.error(
            &label_path,
            format!(
                "\"{}:{label}\" is longer than the kernel's {MAX_IFNAME}-byte address label; shorten the label",
                node.interface.as_deref().unwrap_or_default()
            ),
        );
    }
    let repeat = r.u32(
        &p.key("garp_master_repeat"),
        raw.garp_master_repeat,
        d::GARP_MASTER_REPEAT,
        1,
        100,
    );
    let interval = r.u64(
        &p.key("garp_interval_ms"),
        raw.garp_interval_ms,
        d::GARP_INTERVAL_MS,
        0,
        10_000,
    );
    let delay = r.u64(
        &p.key("garp_master_delay_ms"),
        raw.garp_master_delay_ms,
        d::GARP_MASTER_DELAY_MS,
        0,
        3_600_000,
    );
    let refresh = r.u64(
        &p.key("garp_master_refresh_s"),
        raw.garp_master_refresh_s,
        d::GARP_MASTER_REFRESH_S,
        0,
        86_400,
    );
    let announce = Announce {
        repeat,
        interval: ms(interval),
        delay: ms(delay),
        refresh: (refresh > 0).then(|| secs(refresh)),
    };
    Some(Vip {
        addresses,
        mode,
        label,
        announce,
    })
}

fn vrrp(raw: RawVrrp, p: &FieldPath, r: &mut Report<'_>) -> Vrrp {
    let vrid_path = p.key("vrid");
    let vrid = match raw.vrid {
        None => {
            r.error(
                &vrid_path,
                "missing; pick the virtual router id (1..=255) shared by both nodes",
            );
            1
        }
        Some(v) => r.u8(&vrid_path, Some(v), 1, 1, 255),
    };
    let priority = r.u8(&p.key("priority"), raw.priority, d::VRRP_PRIORITY, 1, 255);
    let advert_path = p.key("advert_interval_ms");
    let advert = r.u64(
        &advert_path,
        raw.advert_interval_ms,
        d::VRRP_ADVERT_INTERVAL_MS,
        10,
        40_950,
    );
    if advert % 10 != 0 {
        r.error(
            &advert_path,
            format!(
                "{advert} is not a multiple of 10: VRRPv3 carries the interval in centiseconds (RFC 5798 §5.2.7)"
            ),
        );
    }
    let preempt_delay = r.u64(
        &p.key("preempt_delay_ms"),
        raw.preempt_delay_ms,
        d::VRRP_PREEMPT_DELAY_MS,
        0,
        3_600_000,
    );
    let peers_path = p.key("unicast_peers");
    let mut unicast_peers = Vec::new();
    for (i, text) in raw.unicast_peers.unwrap_or_default().iter().enumerate() {
        let path = peers_path.index(i);
        match text.trim().parse::<IpAddr>() {
            Err(_) => r.error(&path, format!("\"{text}\" is not an IP address")),
            Ok(ip) if unicast_peers.contains(&ip) => {
                r.error(&path, format!("{ip} is listed twice"))
            }
            Ok(ip) => unicast_peers.push(ip),
        }
    }
    let track_pool_penalty = r.u8(
        &p.key("track_pool_penalty"),
        raw.track_pool_penalty,
        d::VRRP_TRACK_POOL_PENALTY,
        0,
        255,
    );
    Vrrp {
        vrid,
        priority,
        advert_interval: ms(advert),
        preempt: raw.preempt.unwrap_or(d::VRRP_PREEMPT),
        preempt_delay: ms(preempt_delay),
        accept_mode: raw.accept_mode.unwrap_or(d::VRRP_ACCEPT_MODE),
        unicast_peers,
        track_pool_penalty,
        checksum_as_v2: raw.checksum_as_v2.unwrap_or(d::VRRP_CHECKSUM_AS_V2),
    }
}

// === Services ===

fn protocol(raw: Option<String>, path: &FieldPath, r: &mut Report<'_>) -> Protocol {
    match raw.as_deref().unwrap_or(d::SERVICE_PROTOCOL) {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            r.error(
                path,
                format!("unknown protocol \"{other}\", expected one of: tcp, udp"),
            );
            Protocol::Tcp
        }
    }
}

fn forwarding(raw: Option<String>, path: &FieldPath, r: &mut Report<'_>) -> Forwarding {
    match raw.as_deref() {
        None | Some("proxy") => Forwarding::Proxy,
        Some("dsr") => Forwarding::Dsr,
        Some(other) => {
            r.error(
                path,
                format!("unknown forwarding \"{other}\", expected one of: proxy, dsr"),
            );
            Forwarding::Proxy
        }
    }
}

/// What a `dsr` service needs on its own. A forwarder only swaps MAC addresses, so the frame
/// keeps the client's destination address and port: the listen address is the VIP itself and
/// the backends must listen on the same port. Whether the backends share the balancer's L2
/// segment cannot be seen from here (docs/dsr.md): a backend behind a router never gets a
/// neighbour entry and its traffic is dropped as `no-neighbour`.
fn dsr_service(
    listen: SocketAddr,
    backend_port: u16,
    backend_port_set: bool,
    sp: &FieldPath,
    r: &mut Report<'_>,
) {
    if listen.ip().is_unspecified() || listen.port() == 0 {
        r.error(
            &sp.key("listen"),
            format!("forwarding = \"dsr\" needs the VIP and port itself, not {listen}: the forwarder matches frames sent to exactly that address"),
        );
    } else if listen.is_ipv6() {
        r.error(
            &sp.key("listen"),
            "forwarding = \"dsr\" supports IPv4 VIPs only for now (the forwarder answers ARP, not NDP)",
        );
    }
    if backend_port_set && backend_port != listen.port() {
        r.error(
            &sp.key("backend_port"),
            format!("forwarding = \"dsr\" cannot rewrite ports: backend_port must equal the listen port {} (or be left out)", listen.port()),
        );
    }
}

/// `dsr` checks that need the node and the pools.
fn dsr_checks(
    node: &Node,
    services: &[Service],
    pools: &[Pool],
    root: &FieldPath,
    r: &mut Report<'_>,
) {
    for (i, s) in services.iter().enumerate() {
        if s.forwarding != Forwarding::Dsr {
            continue;
        }
        let sp = root.key("service").index(i);
        if node.interface.is_none() {
            r.error(
                &sp.key("forwarding"),
                "forwarding = \"dsr\" needs [node] interface: the forwarder reads and sends frames on it",
            );
        }
        let Some(pool) = pools.iter().find(|p| p.name == s.pool) else {
            continue;
        };
        for (j, b) in pool.backends.iter().enumerate() {
            let wrong_port = b.port.filter(|p| *p != s.listen.port());
            if let Some(port) = wrong_port {
                r.error(
                    &root.key("pool").key(&pool.name).key("backends").index(j).key("address"),
                    format!("port {port} differs from the port {} of dsr service \"{}\": dsr cannot rewrite ports", s.listen.port(), s.name),
                );
            }
            if b.address.is_ipv4() != s.listen.is_ipv4() {
                r.error(
                    &root.key("pool").key(&pool.name).key("backends").index(j).key("address"),
                    format!("dsr service \"{}\" forwards {} frames: a backend of the other family cannot take them", s.name, if s.listen.is_ipv4() { "IPv4" } else { "IPv6" }),
                );
            }
        }
    }
}

fn services(
    raw: Option<Vec<RawService>>,
    pool_names: Option<&BTreeSet<String>>,
    p: &FieldPath,
    r: &mut Report<'_>,
) -> Vec<Service> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        r.error(p, "no [[service]] defined: Portico would listen on nothing");
    }
    let mut services: Vec<Service> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, s) in raw.into_iter().enumerate() {
        let sp = p.index(i);
        let name = r.required_str(
            &sp.key("name"),
            s.name,
            "it names the service in logs and metrics",
        );
        if !name.is_empty() {
            if let Some(first) = names.get(&name) {
                let line = r.line(&p.index(*first).key("name"));
                r.error(
                    &sp.key("name"),
                    format!("duplicate service name \"{name}\" (first used by service[{first}] at line {line})"),
                );
            } else {
                names.insert(name.clone(), i);
            }
        }
        let protocol = protocol(s.protocol, &sp.key("protocol"), r);
        let listen_text = r.required_str(
            &sp.key("listen"),
            s.listen,
            "the address and port clients connect to",
        );
        let listen = if listen_text.is_empty() {
            None
        } else {
            r.socket_addr(&sp.key("listen"), &listen_text)
        };
        let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let pool = r.required_str(
            &sp.key("pool"),
            s.pool,
            "the pool of backends this service spreads over",
        );
        let pool_names = pool_names.filter(|names| !pool.is_empty() && !names.contains(&pool));
        if let Some(pool_names) = pool_names {
            let known: Vec<&str> = pool_names.iter().map(String::as_str).collect();
            let known = if known.is_empty() {
                "no pools are defined".to_owned()
            } else {
                format!("defined pools: {}", known.join(", "))
            };
            r.error(
                &sp.key("pool"),
                format!("no pool named \"{pool}\" ({known})"),
            );
        }
        let default_port = if listen.port() == 0 { 1 } else { listen.port() };
        let backend_port = r.port(&sp.key("backend_port"), s.backend_port, default_port);

        // Settings the other protocol ignores: legal, but worth a word.
        let tcp_only = [
            ("connect_timeout_ms", s.connect_timeout_ms.is_some()),
            ("backlog", s.backlog.is_some()),
        ];
        let udp_only = [("max_flows", s.max_flows.is_some())];
        let forwarding = forwarding(s.forwarding, &sp.key("forwarding"), r);
        // A dsr forwarder never opens a connection: the TCP connect settings mean nothing there,
        // and max_flows sizes its flow table for both protocols.
        let dsr_ignores = [
            ("connect_timeout_ms", s.connect_timeout_ms.is_some()),
            ("connect_attempts", s.connect_attempts.is_some()),
            ("backlog", s.backlog.is_some()),
        ];
        let ignored: &[(&str, bool)] = match (forwarding, protocol) {
            (Forwarding::Dsr, _) => &dsr_ignores,
            (_, Protocol::Tcp) => &udp_only,
            (_, Protocol::Udp) => &tcp_only,
        };
        for (key, set) in ignored {
            if *set {
                r.warn(
                    &sp.key(key),
                    format!(
                        "ignored: {key} does not apply to {} services",
                        match forwarding {
                            Forwarding::Dsr => "dsr",
                            Forwarding::Proxy => protocol.as_str(),
                        }
                    ),
                );
            }
        }

        let connect_timeout = r.u64(
            &sp.key("connect_timeout_ms"),
            s.connect_timeout_ms,
            d::CONNECT_TIMEOUT_MS,
            1,
            600_000,
        );
        let connect_attempts = r.nonzero(
            &sp.key("connect_attempts"),
            s.connect_attempts,
            d::CONNECT_ATTEMPTS,
            16,
        );
        let idle_default = match protocol {
            Protocol::Tcp => d::TCP_IDLE_TIMEOUT_S,
            Protocol::Udp => d::UDP_IDLE_TIMEOUT_S,
        };
        let idle = r.u64(
            &sp.key("idle_timeout_s"),
            s.idle_timeout_s,
            idle_default,
            1,
            30 * 86_400,
        );
        let backlog = r.u32(&sp.key("backlog"), s.backlog, d::BACKLOG, 1, 65_535);
        let max_flows = r.u64(
            &sp.key("max_flows"),
            s.max_flows,
            d::MAX_FLOWS as u64,
            1,
            u32::MAX.into(),
        );
        let affinity = affinity(s.affinity, &pool, &sp.key("affinity"), r);
        if forwarding == Forwarding::Dsr {
            dsr_service(listen, backend_port, s.backend_port.is_some(), &sp, r);
        }
        services.push(Service {
            name,
            listen,
            protocol,
            pool,
            backend_port,
            affinity,
            connect_timeout: ms(connect_timeout),
            connect_attempts,
            idle_timeout: secs(idle),
            backlog,
            max_flows: usize::try_from(max_flows).unwrap_or(d::MAX_FLOWS),
            forwarding,
        });
    }
    affinity_groups(&services, p, r);
    services
}

fn affinity(raw: Option<RawAffinity>, pool: &str, p: &FieldPath, r: &mut Report<'_>) -> Affinity {
    let raw = raw.unwrap_or_default();
    if let Some(key) = raw.key.as_deref() {
        if key != d::AFFINITY_KEY {
            r.error(
                &p.key("key"),
                format!(
                    "unknown affinity key \"{key}\", expected one of: {}",
                    d::AFFINITY_KEY
                ),
            );
        }
    }
    let ipv4_prefix = r.u8(
        &p.key("ipv4_prefix"),
        raw.ipv4_prefix,
        d::AFFINITY_IPV4_PREFIX,
        0,
        32,
    );
    let ipv6_prefix = r.u8(
        &p.key("ipv6_prefix"),
        raw.ipv6_prefix,
        d::AFFINITY_IPV6_PREFIX,
        0,
        128,
    );
    let idle = r.u64(
        &p.key("idle_timeout_s"),
        raw.idle_timeout_s,
        d::AFFINITY_IDLE_TIMEOUT_S,
        1,
        30 * 86_400,
    );
    let max_entries = r.u64(
        &p.key("max_entries"),
        raw.max_entries,
        d::AFFINITY_MAX_ENTRIES as u64,
        1,
        100_000_000,
    );
    let group = match raw.group {
        Some(g) if g.trim().is_empty() => {
            r.error(
                &p.key("group"),
                "must not be empty; leave it out to use the pool name",
            );
            pool.to_owned()
        }
        Some(g) => g,
        // A shared stick table per pool is what lets a client's TCP and UDP channels meet.
        None => pool.to_owned(),
    };
    Affinity {
        group,
        ipv4_prefix,
        ipv6_prefix,
        idle_timeout: secs(idle),
        max_entries: usize::try_from(max_entries).unwrap_or(d::AFFINITY_MAX_ENTRIES),
    }
}

/// Services of one group share a stick table, so they must agree on what it holds.
fn affinity_groups(services: &[Service], p: &FieldPath, r: &mut Report<'_>) {
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        if s.pool.is_empty() {
            continue;
        }
        let Some(&f) = first_of.get(s.affinity.group.as_str()) else {
            first_of.insert(&s.affinity.group, i);
            continue;
        };
        let first = &services[f];
        let line = r.line(&p.index(f));
        let group = &s.affinity.group;
        let sp = p.index(i);
        if s.pool != first.pool {
            r.error(
                &sp.key("pool"),
                format!(
                    "affinity group \"{group}\" already uses pool \"{}\" (service \"{}\" at line {line}); one stick table cannot pin clients into two pools: use another group",
                    first.pool, first.name
                ),
            );
        }
        let (a, b) = (&s.affinity, &first.affinity);
        let differing: [(&str, bool, String); 4] = [
            (
                "ipv4_prefix",
                a.ipv4_prefix != b.ipv4_prefix,
                b.ipv4_prefix.to_string(),
            ),
            (
                "ipv6_prefix",
                a.ipv6_prefix != b.ipv6_prefix,
                b.ipv6_prefix.to_string(),
            ),
            (
                "idle_timeout_s",
                a.idle_timeout != b.idle_timeout,
                b.idle_timeout.as_secs().to_string(),
            ),
            (
                "max_entries",
                a.max_entries != b.max_entries,
                b.max_entries.to_string(),
            ),
        ];
        for (key, differs, theirs) in differing {
            if differs {
                r.error(
                    &sp.key("affinity").key(key),
                    format!(
                        "affinity group \"{group}\" is shared with service \"{}\" (line {line}), which has {key} = {theirs}; services of one group share one stick table and must agree",
                        first.name
                    ),
                );
            }
        }
    }
}

// === Pools ===

fn pools(
    raw: Option<BTreeMap<String, RawPool>>,
    services: &[Service],
    p: &FieldPath,
    r: &mut Report<'_>,
) -> Vec<Pool> {
    let mut pools = Vec::new();
    for (name, raw) in raw.unwrap_or_default() {
        let pp = p.key(&name);
        if name.trim().is_empty() {
            r.error(&pp, "a pool name must not be empty");
        }
        if !services.iter().any(|s| s.pool == name) {
            r.warn(&pp, format!("pool \"{name}\" is not used by any service"));
        }
        let backends = backends(raw.backends, &pp.key("backends"), r);
        let table_size = table_size(raw.table_size, backends.len(), &pp.key("table_size"), r);
        let health = health(raw.health, &pp.key("health"), r);
        pools.push(Pool {
            name,
            backends,
            health,
            table_size,
        });
    }
    pools
}

/// A backend address: bare IP (port from the service) or IP with port.
fn backend_address(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    match text.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => Err(format!("\"{text}\": port 0 is not a usable port")),
        Ok(sa) => Ok((sa.ip(), Some(sa.port()))),
        Err(_) => Err(format!(
            "\"{text}\" is not an address; write \"10.0.0.11\", \"10.0.0.11:443\" or \"[2001:db8::11]:443\""
        )),
    }
}

fn backends(raw: Option<Vec<RawBackend>>, p: &FieldPath, r: &mut Report<'_>) -> Vec<Backend> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        r.error(p, "empty pool: list at least one backend");
    }
    let mut out: Vec<Backend> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
    for (i, b) in raw.into_iter().enumerate() {
        let bp = p.index(i);
        let name = r.required_str(
            &bp.key("name"),
            b.name,
            "it names the backend in logs, metrics and `portico ctl`",
        );
        if !name.is_empty() {
            if let Some(first) = names.get(&name) {
                let line = r.line(&p.index(*first));
                r.error(
                    &bp.key("name"),
                    format!("duplicate backend name \"{name}\" (first at backends[{first}], line {line})"),
                );
            } else {
                names.insert(name.clone(), i);
            }
        }
        let address_text = r.required_str(
            &bp.key("address"),
            b.address,
            "the backend's IP address, optionally with a port",
        );
        let mut address = (IpAddr::from([0, 0, 0, 0]), None);
        if !address_text.is_empty() {
            match backend_address(&address_text) {
                Err(message) => r.error(&bp.key("address"), message),
                Ok(a) => {
                    if let Some(first) = addresses.get(&a) {
                        let line = r.line(&p.index(*first));
                        r.error(
                            &bp.key("address"),
                            format!(
                                "duplicate backend address \"{address_text}\" (also backends[{first}], line {line})"
                            ),
                        );
                    } else {
                        addresses.insert(a, i);
                    }
                    address = a;
                }
            }
        }
        let weight_path = bp.key("weight");
        if b.weight == Some(0) {
            r.error(
                &weight_path,
                "must be between 1 and 1000, got 0; to take a backend out of rotation use `portico ctl drain` or `disable`",
            );
        }
        let weight = r.nonzero(
            &weight_path,
            b.weight.filter(|w| *w != 0),
            d::BACKEND_WEIGHT,
            1000,
        );
        out.push(Backend {
            name,
            address: address.0,
            port: address.1,
            weight,
        });
    }
    out
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut i = 2u64;
    while i * i <= n {
        if n % i == 0 {
            return false;
        }
        i += 1;
    }
    true
}

fn table_size(raw: Option<i64>, backends: usize, p: &FieldPath, r: &mut Report<'_>) -> u32 {
    let size = r.u32(p, raw, d::TABLE_SIZE, 1, MAX_TABLE_SIZE);
    if raw.is_some() && size != d::TABLE_SIZE {
        if !is_prime(size) {
            r.error(
                p,
                format!(
                    "{size} is not prime: Maglev needs a prime table size (e.g. 65537, 655373)"
                ),
            );
        } else if usize::try_from(size).is_ok_and(|s| s < backends) {
            r.error(
                p,
                format!("{size} is smaller than the pool's {backends} backends"),
            );
        } else if size < d::TABLE_SIZE {
            r.warn(
                p,
                format!(
                    "{size} is below {}: fine for tests, but a small table spreads keys unevenly and moves more of them when a backend changes",
                    d::TABLE_SIZE
                ),
            );
        }
    }
    size
}

fn health(raw: Option<RawHealth>, p: &FieldPath, r: &mut Report<'_>) -> Health {
    let raw = raw.unwrap_or_default();
    let interval = r.u64(
        &p.key("interval_ms"),
        raw.interval_ms,
        d::HEALTH_INTERVAL_MS,
        1,
        3_600_000,
    );
    let timeout = r.u64(
        &p.key("timeout_ms"),
        raw.timeout_ms,
        d::HEALTH_TIMEOUT_MS,
        1,
        3_600_000,
    );
    if raw.timeout_ms.is_some_and(|t| t > 0) && timeout >= interval {
        r.warn(
            &p.key("timeout_ms"),
            format!("{timeout} ms is not shorter than interval_ms ({interval} ms): a slow probe delays the next one"),
        );
    } else if raw.timeout_ms.is_none() && timeout >= interval {
        r.warn(
            &p.key("interval_ms"),
            format!("{interval} ms is not longer than timeout_ms (default {timeout} ms): a slow probe delays the next one"),
        );
    }
    // Each check tier's own interval, `interval_ms` unless given (and then checked the same way).
    let mut tier = |key: &str, value: Option<i64>| -> u64 {
        let path = p.key(key);
        let v = r.u64(&path, value, interval, 1, 3_600_000);
        if value.is_some() && timeout >= v {
            r.warn(
                &path,
                format!("{v} ms is not longer than timeout_ms ({timeout} ms): a slow probe delays the next one"),
            );
        }
        v
    };
    let intervals = CheckIntervals {
        tcp: ms(tier("tcp_interval_ms", raw.tcp_interval_ms)),
        tls: ms(tier("tls_interval_ms", raw.tls_interval_ms)),
        rdg_token: ms(tier("rdg_token_interval_ms", raw.rdg_token_interval_ms)),
    };
    let rise = r.nonzero(&p.key("rise"), raw.rise, d::HEALTH_RISE, 1000);
    let fall = r.nonzero(&p.key("fall"), raw.fall, d::HEALTH_FALL, 1000);

    let cp = p.key("checks");
    let names: Vec<String> = raw
        .checks
        .unwrap_or_else(|| d::HEALTH_CHECKS.iter().map(|s| (*s).to_owned()).collect());
    if names.is_empty() {
        r.error(
            &cp,
            "must name at least one check; [\"tcp\"] is a plain connect",
        );
    }
    let mut checks: Vec<CheckKind> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = cp.index(i);
        let kind = match name.as_str() {
            "tcp" => CheckKind::Tcp,
            "tls" => CheckKind::Tls,
            "rdg-token" => CheckKind::RdgToken,
            other => {
                r.error(
                    &path,
                    format!("unknown check \"{other}\", expected one of: tcp, tls, rdg-token"),
                );
                continue;
            }
        };
        if checks.contains(&kind) {
            r.error(&path, format!("duplicate check \"{name}\""));
            continue;
        }
        match kind {
            CheckKind::Tls if raw.tls.is_none() => r.error(
                &path,
                "\"tls\" needs a tls table: tls = { server_name = \"...\" }",
            ),
            CheckKind::RdgToken => {
                if raw.rdg_token.is_none() {
                    r.error(
                        &path,
                        "\"rdg-token\" needs an rdg_token table: rdg_token = { signing_cert = \"...\", signing_key = \"...\", host = \"...\" }",
                    );
                }
                if !names.iter().any(|n| n == "tls") {
                    r.error(
                        &path,
                        "\"rdg-token\" runs inside the TLS session: add \"tls\" to checks (before it)",
                    );
                }
            }
            _ => {}
        }
        checks.push(kind);
    }

    let tls = raw.tls.map(|t| {
        let tp = p.key("tls");
        if !checks.contains(&CheckKind::Tls) {
            r.warn(&tp, "ignored: \"tls\" is not in checks");
        }
        let server_name = r.required_str(
            &tp.key("server_name"),
            t.server_name,
            "the name the gateways' certificate must carry (the farm alias)",
        );
        let ca_file = t.ca_file.map(|f| {
            if f.trim().is_empty() {
                r.error(
                    &tp.key("ca_file"),
                    "must not be empty; leave it out to use the system roots",
                );
            }
            PathBuf::from(f)
        });
        let min_days_left = r.u32(
            &tp.key("min_days_left"),
            t.min_days_left,
            d::TLS_MIN_DAYS_LEFT,
            0,
            3650,
        );
        TlsCheck {
            server_name,
            ca_file,
            min_days_left,
        }
    });

    let rdg_token = raw.rdg_token.map(|t| {
        let tp = p.key("rdg_token");
        if !checks.contains(&CheckKind::RdgToken) {
            r.warn(&tp, "ignored: \"rdg-token\" is not in checks");
        }
        let signing_cert = r.required_str(
            &tp.key("signing_cert"),
            t.signing_cert,
            "the probe's own certificate (not VMM's), trusted by the gateways",
        );
        let signing_key = r.required_str(
            &tp.key("signing_key"),
            t.signing_key,
            "the private key of signing_cert",
        );
        let host = r.required_str(
            &tp.key("host"),
            t.host,
            "the canary host the probe token names",
        );
        let port = r.port(&tp.key("port"), t.port, d::RDG_TOKEN_PORT);
        let channel_target = t.channel_target.and_then(|text| {
            let cp = tp.key("channel_target");
            match channel_target(&text, port) {
                Ok(v) => Some(v),
                Err(why) => {
                    r.error(&cp, format!("\"{text}\": {why}"));
                    None
                }
            }
        });
        RdgTokenCheck {
            signing_cert: PathBuf::from(signing_cert),
            signing_key: PathBuf::from(signing_key),
            host,
            port,
            channel_target,
        }
    });

    for (check, key, set) in [
        (
            CheckKind::Tcp,
            "tcp_interval_ms",
            raw.tcp_interval_ms.is_some(),
        ),
        (
            CheckKind::Tls,
            "tls_interval_ms",
            raw.tls_interval_ms.is_some(),
        ),
        (
            CheckKind::RdgToken,
            "rdg_token_interval_ms",
            raw.rdg_token_interval_ms.is_some(),
        ),
    ] {
        if set && !checks.contains(&check) {
            r.warn(&p.key(key), "ignored: its check is not in checks");
        }
    }

    Health {
        interval: ms(interval),
        intervals,
        timeout: ms(timeout),
        rise,
        fall,
        checks,
        passive: raw.passive.unwrap_or(d::HEALTH_PASSIVE),
        tls,
        rdg_token,
    }
}

/// `HOST` or `HOST:PORT` (default `port`): a host name as a token names it (no spaces or
/// control characters; an IPv6 literal in brackets).
fn channel_target(text: &str, port: u16) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, p) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
            let p: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not 1..=65535"))?;
            (h, p)
        }
        _ => (text, port),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected HOST or HOST:PORT, e.g. \"canary.hv.example.com:2179\"".into());
    }
    Ok((host.to_owned(), p))
}

// === The rest ===

fn balancer(raw: Option<RawBalancer>, p: &FieldPath, r: &mut Report<'_>) -> Balancer {
    let raw = raw.unwrap_or_default();
    let drain = r.u64(
        &p.key("drain_timeout_s"),
        raw.drain_timeout_s,
        d::DRAIN_TIMEOUT_S,
        0,
        86_400,
    );
    Balancer {
        drain_timeout: secs(drain),
    }
}

/// Lower-cases, adds the trailing dot and checks each label (RFC 1035 §2.3.1 host syntax).
fn dns_zone(text: &str) -> Result<String, String> {
    let zone = text.trim().to_ascii_lowercase();
    let bare = zone.strip_suffix('.').unwrap_or(&zone);
    if bare.is_empty() {
        return Err("must name a zone below the root, e.g. \"rdgw.example.com.\"".to_owned());
    }
    if bare.len() > 253 {
        return Err(format!("\"{text}\" is longer than 253 characters"));
    }
    for label in bare.split('.') {
        let why = if label.is_empty() {
            Some("has an empty label (\"..\")".to_owned())
        } else if label.len() > 63 {
            Some(format!("label \"{label}\" is longer than 63 characters"))
        } else if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            Some(format!(
                "label \"{label}\" contains {c:?}; only letters, digits and '-' are allowed"
            ))
        } else if label.starts_with('-') || label.ends_with('-') {
            Some(format!("label \"{label}\" starts or ends with '-'"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("\"{text}\" is not a valid zone: {why}"));
        }
    }
    Ok(format!("{bare}."))
}

fn dns(
    raw: RawDns,
    services: &[Service],
    vip: Option<&Vip>,
    p: &FieldPath,
    r: &mut Report<'_>,
) -> Dns {
    let lp = p.key("listen");
    let mut listen = Vec::new();
    match &raw.listen {
        None => r.error(
            &lp,
            "missing; the addresses the DNS server answers on, e.g. [\"192.0.2.10:53\"]",
        ),
        Some(list) if list.is_empty() => r.error(
            &lp,
            "must list at least one address; remove [dns] to run without DNS",
        ),
        Some(list) => {
            for (i, text) in list.iter().enumerate() {
                if let Some(addr) = r.socket_addr(&lp.index(i), text) {
                    if listen.contains(&addr) {
                        r.error(&lp.index(i), format!("{addr} is listed twice"));
                    } else {
                        listen.push(addr);
                    }
                }
            }
        }
    }
    let zp = p.key("zone");
    let zone_text = r.required_str(
        &zp,
        raw.zone.clone(),
        "the zone Portico answers for, e.g. \"rdgw.example.com.\"",
    );
    let zone = if zone_text.is_empty() {
        String::new()
    } else {
        dns_zone(&zone_text).unwrap_or_else(|message| {
            r.error(&zp, message);
            String::new()
        })
    };
    // RFC 2181 §8: a TTL is an unsigned 31-bit number.
    let ttl = r.u32(&p.key("ttl"), raw.ttl, d::DNS_TTL, 0, 2_147_483_647);
    dns_records(raw, services, vip, listen, zone, ttl, p, r)
}

/// A name written in `[dns]`: with a trailing dot it is absolute; without, it is absolute when
/// it already ends in the zone and relative to the zone otherwise (as in a zone file, but
/// forgiving the common "rdgw.example.com" spelling).
fn dns_name(text: &str, zone: &str) -> Result<String, String> {
    let absolute = text.trim().ends_with('.');
    let name = dns_zone(text)?;
    if absolute || zone.is_empty() || name == zone || name.ends_with(&format!(".{zone}")) {
        Ok(name)
    } else {
        dns_zone(&format!("{name}{zone}"))
    }
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// The `[dns]` fields beyond listen/zone/ttl: the alias, its addresses, NS, SOA, transfers.
#[allow(clippy::too_many_arguments)]
fn dns_records(
    raw: RawDns,
    services: &[Service],
    vip: Option<&Vip>,
    listen: Vec<SocketAddr>,
    zone: String,
    ttl: u32,
    p: &FieldPath,
    r: &mut Report<'_>,
) -> Dns {
    let name_at = |r: &mut Report<'_>, path: &FieldPath, text: &str| -> Option<String> {
        match dns_name(text, &zone) {
            Ok(n) => Some(n),
            Err(message) => {
                r.error(path, message);
                None
            }
        }
    };
    let ap = p.key("alias");
    let alias = match raw.alias {
        None => zone.clone(),
        Some(text) => match name_at(r, &ap, &text) {
            Some(n) if !zone.is_empty() && !in_zone(&n, &zone) => {
                r.error(
                    &ap,
                    format!("\"{n}\" is outside the zone \"{zone}\"; the alias must be in it"),
                );
                zone.clone()
            }
            Some(n) => n,
            None => zone.clone(),
        },
    };

    let sp = p.key("alias_services");
    let alias_services: Vec<String> = match raw.alias_services {
        None => services.iter().map(|s| s.name.clone()).collect(),
        Some(list) if list.is_empty() => {
            r.error(
                &sp,
                "must name at least one service; leave it out for every service",
            );
            Vec::new()
        }
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (i, name) in list.iter().enumerate() {
                if !services.iter().any(|s| &s.name == name) {
                    let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                    r.error(
                        &sp.index(i),
                        format!(
                            "no service named \"{name}\" (services: {})",
                            known.join(", ")
                        ),
                    );
                } else if out.contains(name) {
                    r.error(&sp.index(i), format!("\"{name}\" is listed twice"));
                } else {
                    out.push(name.clone());
                }
            }
            out
        }
    };

    let aap = p.key("alias_addresses");
    let mut alias_addresses: Vec<IpAddr> = Vec::new();
    for (i, text) in raw.alias_addresses.unwrap_or_default().iter().enumerate() {
        match text.trim().parse::<IpAddr>() {
            Ok(a) if alias_addresses.contains(&a) => {
                r.error(&aap.index(i), format!("{a} is listed twice"))
            }
            Ok(a) => alias_addresses.push(a),
            Err(_) => r.error(
                &aap.index(i),
                format!("\"{text}\" is not an IPv4 or IPv6 address (no port)"),
            ),
        }
    }
    if alias_addresses.is_empty() && !alias_services.is_empty() {
        let wildcard_only = services
            .iter()
            .filter(|s| alias_services.contains(&s.name))
            .all(|s| s.listen.ip().is_unspecified());
        if wildcard_only && vip.is_none_or(|v| v.addresses.is_empty()) {
            r.error(
                &ap,
                "the alias has no address: its services listen on a wildcard and there is no [vip]; set alias_addresses",
            );
        }
    }

    let np = p.key("nameservers");
    let nameservers = match raw.nameservers {
        None if zone.is_empty() => Vec::new(),
        None => vec![format!("{}.{zone}", d::DNS_NAMESERVER_LABEL)],
        Some(list) if list.is_empty() => {
            r.error(
                &np,
                "must name at least one name server; leave it out for ns.<zone>",
            );
            Vec::new()
        }
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (i, text) in list.iter().enumerate() {
                if let Some(n) = name_at(r, &np.index(i), text) {
                    if out.contains(&n) {
                        r.error(&np.index(i), format!("\"{n}\" is listed twice"));
                    } else {
                        out.push(n);
                    }
                }
            }
            out
        }
    };

    let soa_p = p.key("soa");
    let raw_soa = raw.soa.unwrap_or_default();
    let rp = soa_p.key("rname");
    let rname = match raw_soa.rname {
        None if zone.is_empty() => String::new(),
        None => format!("{}.{zone}", d::DNS_SOA_RNAME_LABEL),
        // RFC 1035 §8: the mailbox's '@' becomes the first dot.
        Some(text) => match text.split_once('@') {
            Some((local, _)) if local.contains('.') => {
                r.error(
                    &rp,
                    format!("\"{text}\": a dot in the mailbox's local part cannot be written here; use another mailbox"),
                );
                String::new()
            }
            Some((local, domain)) => name_at(
                r,
                &rp,
                &format!("{local}.{}.", domain.trim_end_matches('.')),
            )
            .unwrap_or_default(),
            None => name_at(r, &rp, &text).unwrap_or_default(),
        },
    };
    const MAX_31: u32 = 2_147_483_647;
    let refresh = r.u32(
        &soa_p.key("refresh_s"),
        raw_soa.refresh_s,
        d::DNS_SOA_REFRESH_S,
        1,
        MAX_31,
    );
    let retry = r.u32(
        &soa_p.key("retry_s"),
        raw_soa.retry_s,
        d::DNS_SOA_RETRY_S,
        1,
        MAX_31,
    );
    let expire = r.u32(
        &soa_p.key("expire_s"),
        raw_soa.expire_s,
        d::DNS_SOA_EXPIRE_S,
        1,
        MAX_31,
    );
    let minimum = r.u32(&soa_p.key("minimum_s"), raw_soa.minimum_s, ttl, 0, MAX_31);

    let tp = p.key("allow_transfer");
    let mut allow_transfer = Vec::new();
    for (i, text) in raw.allow_transfer.unwrap_or_default().iter().enumerate() {
        let parsed = if text.contains('/') {
            ip_prefix(text.trim())
        } else {
            text.trim()
                .parse::<IpAddr>()
                .map(|addr| IpPrefix {
                    addr,
                    len: if addr.is_ipv4() { 32 } else { 128 },
                })
                .map_err(|_| {
                    format!(
                        "\"{text}\" is not an address or prefix (\"192.0.2.3\", \"192.0.2.0/24\")"
                    )
                })
        };
        match parsed {
            Ok(prefix) => allow_transfer.push(prefix),
            Err(message) => r.error(&tp.index(i), message),
        }
    }

    Dns {
        listen,
        zone,
        ttl,
        alias,
        alias_services,
        alias_addresses,
        nameservers,
        soa: Soa {
            rname,
            refresh,
            retry,
            expire,
            minimum,
        },
        allow_transfer,
    }
}

fn metrics(raw: Option<RawMetrics>, p: &FieldPath, r: &mut Report<'_>) -> Metrics {
    let lp = p.key("listen");
    let text = raw
        .and_then(|m| m.listen)
        .unwrap_or_else(|| d::METRICS_LISTEN.to_owned());
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("off") {
        return Metrics { listen: None };
    }
    let listen = r.socket_addr(&lp, trimmed);
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() {
            r.warn(
                &lp,
                format!("{addr} is reachable beyond this host: /metrics has no authentication; prefer loopback behind a scraper or a firewall"),
            );
        }
    }
    Metrics { listen }
}

fn admin(raw: Option<RawAdmin>, p: &FieldPath, r: &mut Report<'_>) -> Admin {
    let sp = p.key("socket");
    let socket = raw
        .and_then(|a| a.socket)
        .unwrap_or_else(|| d::ADMIN_SOCKET.to_owned());
    if socket.trim().is_empty() {
        r.error(&sp, "must not be empty");
    } else if socket.len() > MAX_SOCKET_PATH {
        r.error(
            &sp,
            format!(
                "{} bytes is too long for a Unix socket path (at most {MAX_SOCKET_PATH})",
                socket.len()
            ),
        );
    }
    Admin {
        socket: PathBuf::from(socket),
    }
}

/// The dsr forwarder follows one VRRP instance, the first group's (`daemon::follow_mastership`):
/// a dsr VIP in a later group would be forwarded while this node is master of the *first*
/// group, which in an active/active pair is the other node's VIP. Refused rather than
/// half-working.
fn dsr_vip_groups<'a>(
    services: &[Service],
    groups: impl Iterator<Item = &'a Vip>,
    root: &FieldPath,
    r: &mut Report<'_>,
) {
    let groups: Vec<&Vip> = groups.collect();
    let vrid = |g: &Vip| match &g.mode {
        VipMode::Vrrp(v) => Some(v.vrid),
        VipMode::Standalone => None,
    };
    let Some(first_vrid) = groups.first().and_then(|g| vrid(g)) else {
        return;
    };
    for (i, s) in services.iter().enumerate() {
        if s.forwarding != Forwarding::Dsr {
            continue;
        }
        let ip = s.listen.ip();
        let Some((n, g)) = groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.addresses.iter().any(|a| a.addr == ip))
        else {
            continue;
        };
        if n > 0 {
            let theirs = vrid(g).map_or("standalone".to_string(), |v| format!("vrid {v}"));
            r.error(
                &root.key("service").index(i).key("listen"),
                format!("dsr VIP {ip} is in VIP group {} ({theirs}), but the dsr forwarder follows the first group's VRRP instance (vrid {first_vrid}): move dsr VIPs to the first group", n + 1),
            );
        }
    }
}

fn dsr_xdp(text: Option<String>, p: &FieldPath, r: &mut Report<'_>) -> DsrXdp {
    match text.as_deref() {
        None | Some("auto") => DsrXdp::Auto,
        Some("on") => DsrXdp::On,
        Some("off") => DsrXdp::Off,
        Some(other) => {
            r.error(
                p,
                format!("unknown xdp setting \"{other}\", expected one of: auto, on, off"),
            );
            DsrXdp::default()
        }
    }
}

fn dsr_sync(
    raw: RawDsr,
    services: &[Service],
    p: &FieldPath,
    r: &mut Report<'_>,
) -> Option<DsrSync> {
    let lp = p.key("sync_listen");
    let pp = p.key("sync_peers");
    let (listen_text, peers_text) = match (raw.sync_listen, raw.sync_peers) {
        (None, None) => return None,
        (Some(_), None) => {
            r.error(
                &lp,
                "sync_listen without sync_peers: name the other balancer nodes' sync addresses",
            );
            return None;
        }
        (None, Some(_)) => {
            r.error(
                &pp,
                "sync_peers without sync_listen: give this node's own sync address (IP:port)",
            );
            return None;
        }
        (Some(l), Some(ps)) => (l, ps),
    };
    let listen = r.socket_addr(&lp, &listen_text);
    if let Some(addr) = listen {
        if addr.ip().is_unspecified() {
            r.error(
                &lp,
                format!("{addr}: give this node's own address on the sync link, not a wildcard (peers check the source of what they receive)"),
            );
        }
    }
    if peers_text.is_empty() {
        r.error(&pp, "must name at least one peer");
    }
    let mut peers: Vec<SocketAddr> = Vec::new();
    for (i, text) in peers_text.iter().enumerate() {
        let path = pp.index(i);
        let Some(addr) = r.socket_addr(&path, text) else {
            continue;
        };
        if peers.contains(&addr) {
            r.error(&path, format!("{addr} is listed twice"));
        } else if Some(addr) == listen {
            r.error(&path, format!("{addr} is this node's own sync_listen"));
        } else if listen.is_some_and(|l| l.is_ipv4() != addr.is_ipv4()) {
            r.error(
                &path,
                format!("{addr}: not the address family of sync_listen"),
            );
        } else {
            peers.push(addr);
        }
    }
    if !services.iter().any(|s| s.forwarding == Forwarding::Dsr) {
        r.warn(
            p,
            "no service has forwarding = \"dsr\": the flow-table sync has nothing to carry",
        );
    }
    let listen = listen?;
    (!peers.is_empty()).then_some(DsrSync { listen, peers })
}

/// Two listeners clash when they bind the same protocol and port on overlapping addresses:
/// the same IP, or a wildcard of the other's family (`::` also covers IPv4, as Linux binds it
/// dual-stack by default).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    x == y || covers(x, y) || covers(y, x)
}

fn listener_clashes(
    services: &[Service],
    dns: Option<&Dns>,
    metrics: &Metrics,
    root: &FieldPath,
    r: &mut Report<'_>,
) {
    // (protocol, address, who, where) in file order, so the later one is blamed.
    let mut listeners: Vec<(Protocol, SocketAddr, String, FieldPath)> = Vec::new();
    for (i, s) in services.iter().enumerate() {
        if s.listen.port() != 0 {
            let path = root.key("service").index(i).key("listen");
            listeners.push((
                s.protocol,
                s.listen,
                format!("service \"{}\"", s.name),
                path,
            ));
        }
    }
    if let Some(dns) = dns {
        for (i, addr) in dns.listen.iter().enumerate() {
            let path = root.key("dns").key("listen").index(i);
            for proto in [Protocol::Udp, Protocol::Tcp] {
                listeners.push((proto, *addr, "the DNS server".to_owned(), path.clone()));
            }
        }
    }
    if let Some(addr) = metrics.listen {
        let path = root.key("metrics").key("listen");
        listeners.push((Protocol::Tcp, addr, "the metrics listener".to_owned(), path));
    }
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for (j, (proto, addr, _, path)) in listeners.iter().enumerate() {
        let earlier = listeners[..j]
            .iter()
            .find(|(p2, a2, _, path2)| p2 == proto && overlaps(*addr, *a2) && path2 != path);
        if let Some((_, other_addr, who, other_path)) = earlier {
            // DNS pushes two entries per address; one message per field is enough.
            if reported.insert(path.to_string()) {
                let line = r.line(other_path);
                r.error(
                    path,
                    format!(
                        "port {}/{} clashes with {who} on {other_addr} (line {line})",
                        addr.port(),
                        proto.as_str()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(is_prime(2) && is_prime(13));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65536));
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            ip_prefix("192.0.2.10/24"),
            Ok(IpPrefix {
                addr: "192.0.2.10".parse().unwrap(),
                len: 24
            })
        );
        assert!(ip_prefix("2001:db8::10/128").is_ok());
        assert!(ip_prefix("192.0.2.10")
            .unwrap_err()
            .contains("no prefix length"));
        assert!(ip_prefix("192.0.2.10/33").unwrap_err().contains("0..=32"));
        assert!(ip_prefix("2001:db8::10/129")
            .unwrap_err()
            .contains("0..=128"));
        assert!(ip_prefix("192.0.2.300/24")
            .unwrap_err()
            .contains("not an IPv4"));
    }

    #[test]
    fn zones() {
        assert_eq!(
            dns_zone("RDGW.Example.com"),
            Ok("rdgw.example.com.".to_owned())
        );
        assert_eq!(dns_zone("lab.test."), Ok("lab.test.".to_owned()));
        assert!(dns_zone(".").is_err());
        assert!(dns_zone("a..b").unwrap_err().contains("empty label"));
        assert!(dns_zone("-a.b").unwrap_err().contains("'-'"));
        assert!(dns_zone("a_b.c").unwrap_err().contains("'_'"));
        assert!(dns_zone(&"a".repeat(64)).unwrap_err().contains("63"));
    }

    #[test]
    fn channel_targets() {
        let ok = |t: &str| channel_target(t, 2179);
        assert_eq!(ok("canary.hv"), Ok(("canary.hv".into(), 2179)));
        assert_eq!(ok("canary.hv:3389"), Ok(("canary.hv".into(), 3389)));
        assert_eq!(ok("[2001:db8::1]:3389"), Ok(("[2001:db8::1]".into(), 3389)));
        assert!(ok("canary.hv:0").is_err());
        assert!(ok("canary.hv:x").is_err());
        assert!(ok("").is_err());
        assert!(ok("two words").is_err());
    }

    #[test]
    fn backend_addresses() {
        assert_eq!(
            backend_address("10.0.0.11"),
            Ok(("10.0.0.11".parse().unwrap(), None))
        );
        assert_eq!(
            backend_address("[2001:db8::1]:443"),
            Ok(("2001:db8::1".parse().unwrap(), Some(443)))
        );
        assert_eq!(
            backend_address("2001:db8::1"),
            Ok(("2001:db8::1".parse().unwrap(), None))
        );
        assert!(backend_address("10.0.0.11:0").is_err());
        assert!(backend_address("web01").is_err());
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:443"), a("192.0.2.10:443")));
        assert!(overlaps(a("[::]:443"), a("192.0.2.10:443")));
        assert!(!overlaps(a("0.0.0.0:443"), a("[2001:db8::1]:443")));
        assert!(!overlaps(a("192.0.2.10:443"), a("192.0.2.11:443")));
        assert!(!overlaps(a("192.0.2.10:443"), a("192.0.2.10:444")));
    }

    #[test]
    fn serde_messages_are_humanized() {
        assert_eq!(
            humanize_serde("unknown field `listn`, expected one of `name`, `listen`, `pool`"),
            "unknown field \"listn\", expected one of: name, listen, pool (did you mean \"listen\"?)"
        );
        assert_eq!(
            humanize_serde("unknown field `x`, expected `socket`"),
            "unknown field \"x\", expected one of: socket"
        );
        assert_eq!(
            humanize_serde("invalid type: string \"1\", expected i64"),
            "wrong type: expected an integer, found string \"1\""
        );
        assert_eq!(
            humanize_serde("invalid type: integer `5`, expected a sequence"),
            "wrong type: expected an array, found integer 5"
        );
    }
}
