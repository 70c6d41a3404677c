#!/usr/bin/env python3
"""Writes dashboards/alerts_test.yml: for every alert in dashboards/alerts.yml, input series that
make it fire and series that must not, with the annotations an operator would read.

Expected annotations are rendered here from the rules' templates with the expected labels (a
template naming a label the alert does not carry is an error, so "<no value>" never reaches an
operator). `promtool test rules dashboards/alerts_test.yml` then checks the rules themselves.
Run after changing alerts.yml:  python3 scripts/gen-alerts-test.py
"""
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RULES = os.path.join(ROOT, "dashboards", "alerts.yml")
OUT = os.path.join(ROOT, "dashboards", "alerts_test.yml")

rules = {r["alert"]: r for g in yaml.safe_load(open(RULES))["groups"] for r in g["rules"]}


def humanize_duration(v):
    """Prometheus' humanizeDuration for whole seconds >= 1 minute."""
    v = int(v)
    sign = "-" if v < 0 else ""
    v = abs(v)
    d, h, m, s = v // 86400, v // 3600 % 24, v // 60 % 60, v % 60
    if d:
        return f"{sign}{d}d {h}h {m}m {s}s"
    if h:
        return f"{sign}{h}h {m}m {s}s"
    return f"{sign}{m}m {s}s"


def render(text, labels, value):
    def sub(m):
        expr = m.group(1).strip()
        if expr == "$value":
            return str(value)
        if expr == "$value | humanizeDuration":
            return humanize_duration(value)
        lm = re.fullmatch(r"\$labels\.(\w+)", expr)
        if lm:
            if lm.group(1) not in labels:
                sys.exit(f"template names label {lm.group(1)!r}, alert carries {sorted(labels)}")
            return labels[lm.group(1)]
        sys.exit(f"unsupported template {expr!r}")

    return re.sub(r"\{\{(.*?)\}\}", sub, text)


def firing(alert, labels, value=None):
    r = rules[alert]
    full = dict(r.get("labels", {}))
    full.update(labels)
    return {
        "exp_labels": full,
        "exp_annotations": {k: render(v, labels, value) for k, v in r["annotations"].items()},
    }


def case(name, series, evals):
    """series: {selector: values}; evals: [(eval_time, alert, [firing(...)...])]."""
    return {
        "name": name,
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": t, "alertname": a, "exp_alerts": exp} for t, a, exp in evals
        ],
    }


L1 = 'instance="lb1"'
tests = [
    case(
        "PorticoDown: a node unscrapeable for 1 minute",
        {
            f'up{{job="portico",{L1}}}': "1 1 1 0x10",
            'up{job="portico",instance="lb2"}': "1x13",
        },
        [
            ("30s", "PorticoDown", []),
            ("1m", "PorticoDown", []),
            ("2m", "PorticoDown", [firing("PorticoDown", {"job": "portico", "instance": "lb1"})]),
        ],
    ),
    case(
        "PorticoNoHealthyGateway: every gateway of a pool down on one node",
        {
            f'portico_backend_up{{{L1},pool="gateways",backend="web01"}}': "1 0x10",
            f'portico_backend_up{{{L1},pool="gateways",backend="web02"}}': "1 1 0x10",
            'portico_backend_up{instance="lb2",pool="gateways",backend="web01"}': "1x12",
            'portico_backend_up{instance="lb2",pool="gateways",backend="web02"}': "0x12",
        },
        [
            ("45s", "PorticoNoHealthyGateway", []),
            (
                "1m30s",
                "PorticoNoHealthyGateway",
                [firing("PorticoNoHealthyGateway", {"instance": "lb1", "pool": "gateways"})],
            ),
        ],
    ),
    case(
        "PorticoGatewayDown: enabled but failing probes; a drained gateway is not alerted",
        {
            f'portico_backend_up{{{L1},pool="gateways",backend="web01"}}': "1 0x10",
            f'portico_backend_admin_state{{{L1},pool="gateways",backend="web01",state="enabled"}}': "1x11",
            f'portico_backend_up{{{L1},pool="gateways",backend="web02"}}': "0x11",
            f'portico_backend_admin_state{{{L1},pool="gateways",backend="web02",state="enabled"}}': "0x11",
            f'portico_backend_admin_state{{{L1},pool="gateways",backend="web02",state="drain"}}': "1x11",
            f'portico_backend_up{{{L1},pool="gateways",backend="web03"}}': "1x11",
            f'portico_backend_admin_state{{{L1},pool="gateways",backend="web03",state="enabled"}}': "1x11",
        },
        [
            ("30s", "PorticoGatewayDown", []),
            (
                "2m",
                "PorticoGatewayDown",
                [firing("PorticoGatewayDown", {"instance": "lb1", "pool": "gateways", "backend": "web01"})],
            ),
        ],
    ),
    case(
        "PorticoGatewayRejectsTokens: one gateway rejects the probe token",
        {
            f'portico_probe_results_total{{{L1},backend="web01",check="rdg-token",result="token-rejected"}}': "0 0 1+1x20",
            f'portico_probe_results_total{{{L1},backend="web02",check="rdg-token",result="token-rejected"}}': "0x22",
            f'portico_probe_credential_suspect{{{L1},pool="gateways"}}': "0x22",
        },
        [
            ("1m", "PorticoGatewayRejectsTokens", []),
            (
                "4m",
                "PorticoGatewayRejectsTokens",
                [firing("PorticoGatewayRejectsTokens", {"instance": "lb1", "backend": "web01"})],
            ),
        ],
    ),
    case(
        "PorticoGatewayRejectsTokens stays quiet while the whole pool is credential-suspect",
        {
            f'portico_probe_results_total{{{L1},backend="web01",check="rdg-token",result="token-rejected"}}': "0 0 1+1x20",
            f'portico_probe_results_total{{{L1},backend="web02",check="rdg-token",result="token-rejected"}}': "0 0 1+1x20",
            f'portico_probe_credential_suspect{{{L1},pool="gateways"}}': "0 0 1x20",
        },
        [
            ("4m", "PorticoGatewayRejectsTokens", []),
            (
                "4m",
                "PorticoProbeCredentialSuspect",
                [firing("PorticoProbeCredentialSuspect", {"instance": "lb1", "pool": "gateways"})],
            ),
        ],
    ),
    case(
        "PorticoProbeCredentialSuspect: fires after 1 minute, not before",
        {f'portico_probe_credential_suspect{{{L1},pool="gateways"}}': "0 0 1x10"},
        [
            ("30s", "PorticoProbeCredentialSuspect", []),
            ("1m", "PorticoProbeCredentialSuspect", []),
            (
                "2m",
                "PorticoProbeCredentialSuspect",
                [firing("PorticoProbeCredentialSuspect", {"instance": "lb1", "pool": "gateways"})],
            ),
        ],
    ),
    case(
        "PorticoGatewayCertificateExpiring: 10 days left fires, 100 days does not",
        {
            # time() is 1200 at the 20m evaluation.
            f'portico_backend_cert_not_after_seconds{{{L1},pool="gateways",backend="web01"}}': f"{1200 + 10 * 86400}x100",
            f'portico_backend_cert_not_after_seconds{{{L1},pool="gateways",backend="web02"}}': f"{1200 + 100 * 86400}x100",
        },
        [
            ("5m", "PorticoGatewayCertificateExpiring", []),
            (
                "20m",
                "PorticoGatewayCertificateExpiring",
                [
                    firing(
                        "PorticoGatewayCertificateExpiring",
                        {"instance": "lb1", "pool": "gateways", "backend": "web01"},
                        10 * 86400,
                    )
                ],
            ),
        ],
    ),
    case(
        "PorticoGatewayClockSkew: past 30 s either way, for 5 minutes",
        {
            f'portico_backend_clock_skew_seconds{{{L1},pool="gateways",backend="web01"}}': "0 0 45x40",
            f'portico_backend_clock_skew_seconds{{{L1},pool="gateways",backend="web02"}}': "-10x42",
            f'portico_backend_clock_skew_seconds{{{L1},pool="gateways",backend="web03"}}': "-40x42",
        },
        [
            ("4m", "PorticoGatewayClockSkew", []),
            (
                "6m",
                "PorticoGatewayClockSkew",
                [
                    firing("PorticoGatewayClockSkew", {"instance": "lb1", "pool": "gateways", "backend": "web01"}, 45),
                    firing("PorticoGatewayClockSkew", {"instance": "lb1", "pool": "gateways", "backend": "web03"}, 40),
                ],
            ),
        ],
    ),
    case(
        "PorticoVrrpTwoMasters: both nodes report master",
        {
            f'portico_vrrp_state{{{L1},vrid="51",state="master"}}': "1x20",
            'portico_vrrp_state{instance="lb2",vrid="51",state="master"}': "0 0 0 1x20",
        },
        [
            ("30s", "PorticoVrrpTwoMasters", []),
            ("2m", "PorticoVrrpTwoMasters", [firing("PorticoVrrpTwoMasters", {"vrid": "51"})]),
        ],
    ),
    case(
        "PorticoVrrpTwoMasters: a master heard another master (dual-master counter)",
        {
            f'portico_vrrp_state{{{L1},vrid="51",state="master"}}': "1x20",
            'portico_vrrp_state{instance="lb2",vrid="51",state="master"}': "0x20",
            f'portico_vrrp_dual_master_total{{{L1},vrid="51"}}': "0 0 0 1x20",
        },
        [
            ("30s", "PorticoVrrpTwoMasters", []),
            ("2m", "PorticoVrrpTwoMasters", [firing("PorticoVrrpTwoMasters", {"instance": "lb1", "vrid": "51"})]),
        ],
    ),
    case(
        "PorticoVrrpNoMaster: every node backup",
        {
            f'portico_vrrp_state{{{L1},vrid="51",state="master"}}': "1 1 0x20",
            'portico_vrrp_state{instance="lb2",vrid="51",state="master"}': "0x22",
        },
        [
            ("30s", "PorticoVrrpNoMaster", []),
            ("2m", "PorticoVrrpNoMaster", [firing("PorticoVrrpNoMaster", {"vrid": "51"})]),
        ],
    ),
    case(
        "PorticoConfigReloadFailed: for 10 minutes after a failed reload",
        {f'portico_config_reload_failures_total{{{L1}}}': "0 0 0 1x60"},
        [
            ("30s", "PorticoConfigReloadFailed", []),
            ("1m", "PorticoConfigReloadFailed", [firing("PorticoConfigReloadFailed", {"instance": "lb1"})]),
            ("12m", "PorticoConfigReloadFailed", []),
        ],
    ),
    case(
        "PorticoAcceptErrors: EMFILE for 5 minutes",
        {
            f'portico_accept_errors_total{{{L1},service="rdgw-https",reason="emfile"}}': "0+5x60",
            f'portico_accept_errors_total{{{L1},service="rdgw-https",reason="other"}}': "0x60",
        },
        [
            ("2m", "PorticoAcceptErrors", []),
            (
                "7m",
                "PorticoAcceptErrors",
                [firing("PorticoAcceptErrors", {"instance": "lb1", "service": "rdgw-https", "reason": "emfile"})],
            ),
        ],
    ),
    case(
        "PorticoDsrNoForwarder: both nodes stop forwarding",
        {
            f'portico_dsr_active{{{L1}}}': "1 1 0x20",
            'portico_dsr_active{instance="lb2"}': "0x22",
        },
        [
            ("15s", "PorticoDsrNoForwarder", []),
            ("2m", "PorticoDsrNoForwarder", [firing("PorticoDsrNoForwarder", {})]),
        ],
    ),
    case(
        "PorticoDsrTwoForwarders: both nodes forward",
        {
            f'portico_dsr_active{{{L1}}}': "1x20",
            'portico_dsr_active{instance="lb2"}': "0 0 0 1x20",
        },
        [
            ("30s", "PorticoDsrTwoForwarders", []),
            ("2m", "PorticoDsrTwoForwarders", [firing("PorticoDsrTwoForwarders", {})]),
        ],
    ),
    case(
        "PorticoDsrDropping: no-neighbour drops for 5 minutes; malformed frames are not alerted",
        {
            f'portico_dsr_drops_total{{{L1},reason="no-neighbour"}}': "0+300x60",
            f'portico_dsr_drops_total{{{L1},reason="truncated"}}': "0+300x60",
        },
        [
            ("2m", "PorticoDsrDropping", []),
            (
                "8m",
                "PorticoDsrDropping",
                [firing("PorticoDsrDropping", {"instance": "lb1", "reason": "no-neighbour"})],
            ),
        ],
    ),
    case(
        "PorticoDsrXdpErrors: map updates failing for 10 minutes; a burst that stops is not alerted",
        {
            f'portico_dsr_xdp_errors_total{{{L1}}}': "0+5x80",
            f'portico_dsr_xdp_errors_total{{instance="lb2"}}': "0+50x4 200x76",
        },
        [
            ("5m", "PorticoDsrXdpErrors", []),
            (
                "16m",
                "PorticoDsrXdpErrors",
                [firing("PorticoDsrXdpErrors", {"instance": "lb1"})],
            ),
        ],
    ),
    case(
        "PorticoDsrSyncErrors: datagrams from a stranger for 10 minutes",
        {
            f'portico_dsr_sync_errors_total{{{L1},reason="not_peer"}}': "0+10x80",
            f'portico_dsr_sync_errors_total{{{L1},reason="magic"}}': "0x80",
        },
        [
            ("5m", "PorticoDsrSyncErrors", []),
            (
                "16m",
                "PorticoDsrSyncErrors",
                [firing("PorticoDsrSyncErrors", {"instance": "lb1", "reason": "not_peer"})],
            ),
        ],
    ),
]

covered = {t["alertname"] for c in tests for t in c["alert_rule_test"] if t["exp_alerts"]}
missing = set(rules) - covered
if missing:
    sys.exit(f"alerts without a firing test: {sorted(missing)}")
quiet = {t["alertname"] for c in tests for t in c["alert_rule_test"] if not t["exp_alerts"]}
if set(rules) - quiet:
    sys.exit(f"alerts without a not-firing test: {sorted(set(rules) - quiet)}")

header = (
    "# Generated by scripts/gen-alerts-test.py from dashboards/alerts.yml: every alert fires on\n"
    "# the series that should fire it and stays quiet on the ones that should not.\n"
    "#   promtool test rules dashboards/alerts_test.yml\n"
)
doc = {"rule_files": ["alerts.yml"], "evaluation_interval": "15s", "tests": tests}
with open(OUT, "w") as f:
    f.write(header)
    yaml.safe_dump(doc, f, sort_keys=False, width=100, allow_unicode=True)
print(f"wrote {OUT}: {len(tests)} cases, {len(rules)} alerts")
