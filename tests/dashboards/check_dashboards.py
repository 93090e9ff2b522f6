#!/usr/bin/env python3
"""Structural checks of the Grafana dashboards in dashboards/ (ctest -L dashboards).

Usage: check_dashboards.py PROMTOOL [DASHBOARD_DIR] [RECORDING_RULES]

Checks: valid JSON; uid, title, tags ["constance"], schemaVersion >= 37;
uid unique across dashboards; panel ids unique within one; a template
variable `datasource` of type datasource (query prometheus) used by every
panel, target and query variable; gridPos inside the 24 columns with no
two panels overlapping; every target has a non-empty expr; every expr (with
variables substituted) parses (`promtool check rules` on a temporary rules
file); every metric name is a known constance metric, `up`, or a recording
rule of deploy/prometheus/recording_rules.yml. Standard library only.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import queries  # noqa: E402

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the collector exports (README, "How constance decides").
_SERIES_STATS = ("locations mean stddev cv min max median mad p10 p90 band_low band_high "
                 "outliers levels").split()
KNOWN_METRICS = {
    "constance_finding", "constance_finding_value", "constance_finding_expected",
    "constance_findings_active", "constance_findings_suppressed",
    "constance_trust_score", "constance_trust_balance",
    "constance_outlier", "constance_outlier_value",
    "constance_location_last_report_timestamp_seconds", "constance_location_watermark",
    "constance_agent_spool_depth", "constance_agent_oldest_unacknowledged_seconds",
    "constance_agent_last_heartbeat_timestamp_seconds", "constance_agent_streams",
    "constance_locations", "constance_cells",
    "constance_observations_applied_total", "constance_observations_rejected_total",
    "constance_observations_duplicate_total", "constance_batches_total",
    "up",
} | {"constance_series_" + s for s in _SERIES_STATS}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "inf", "nan", "atan2", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr):
    """Metric names an expression selects (functions, keywords, labels, durations left out)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    return {m for m in _IDENT.findall(s) if m.lower() not in _KEYWORDS}


def recording_rule_names(path):
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*-?\s*record:\s*['\"]?([A-Za-z_:][\w:]*)", line)
            if m:
                names.add(m.group(1))
    return names


def rects_overlap(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and
            a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def check_dashboard(name, d, errors):
    def err(msg):
        errors.append("%s: %s" % (name, msg))

    for field in ("uid", "title"):
        if not isinstance(d.get(field), str) or not d[field].strip():
            err("missing %s" % field)
    if d.get("tags") != ["constance"]:
        err('tags must be ["constance"], got %r' % d.get("tags"))
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 37:
        err("schemaVersion must be >= 37, got %r" % d.get("schemaVersion"))

    variables = (d.get("templating") or {}).get("list") or []
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if len(ds_vars) != 1 or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        err("needs exactly one variable `datasource` of type datasource with query prometheus")
    for v in variables:
        if v.get("type") == "query":
            if v.get("datasource") != DATASOURCE:
                err("variable %s: datasource must be %s" % (v.get("name"), DATASOURCE))
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.match(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)", q)
            if not m:
                err("variable %s: expected label_values(METRIC..., LABEL), got %r" % (v.get("name"), q))
            else:
                yield ("variable " + v.get("name", "?"), m.group(1), None)

    panels = list(queries.iter_panels(d.get("panels")))
    if not panels:
        err("no panels")
    seen_ids = {}
    placed = []
    for p in panels:
        label = "panel %r (%r)" % (p.get("id"), p.get("title"))
        pid = p.get("id")
        if not isinstance(pid, int):
            err("%s: id must be an integer" % label)
        elif pid in seen_ids:
            err("%s: id also used by %r" % (label, seen_ids[pid]))
        else:
            seen_ids[pid] = p.get("title")
        if p.get("type") != "row" or p.get("targets"):
            if p.get("datasource") != DATASOURCE:
                err("%s: datasource must be %s, got %r" % (label, DATASOURCE, p.get("datasource")))
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "xywh"):
            err("%s: gridPos needs integer x, y, w, h" % label)
        elif g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            err("%s: gridPos %r outside the 24-column grid" % (label, g))
        else:
            for other_label, other in placed:
                if rects_overlap(g, other):
                    err("%s: gridPos %r overlaps %s %r" % (label, g, other_label, other))
            placed.append((label, g))
        if p.get("type") != "row" and not p.get("targets"):
            err("%s: no targets" % label)
        for t in p.get("targets") or []:
            tl = "%s target %s" % (label, t.get("refId"))
            if t.get("datasource", DATASOURCE) != DATASOURCE:
                err("%s: datasource must be %s" % (tl, DATASOURCE))
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                err("%s: empty expr" % tl)
                continue
            try:
                sub = queries.substitute(expr)
            except KeyError as e:
                err("%s: %s" % (tl, e.args[0]))
                continue
            yield (tl, None, sub)


def promtool_check(promtool, exprs, workdir):
    """exprs: [(label, expr)]; returns error strings. One run; per expr only on failure."""
    def run(items, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("groups:\n  - name: dashboards\n    rules:\n")
            for i, (_, e) in enumerate(items):
                # A JSON string is a valid YAML double-quoted scalar.
                f.write("      - record: dashboard_expr_%d\n        expr: %s\n" % (i, json.dumps(e)))
        r = subprocess.run([promtool, "check", "rules", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        out = r.stdout.strip()
        bad = r.returncode != 0 or re.search(r"warn", out, re.I)
        return bad, out

    path = os.path.join(workdir, "dashboard_rules.yml")
    bad, out = run(exprs, path)
    if not bad:
        return []
    errors = []
    for label, e in exprs:
        one_bad, one_out = run([(label, e)], path)
        if one_bad:
            errors.append("%s: promtool rejects %r:\n%s" % (label, e, one_out))
    return errors or ["promtool check rules failed:\n" + out]


def self_test():
    cases = {
        'sum by (reason) (rate(constance_observations_rejected_total{job="x",reason=~"a|b"}[5m]))':
            {"constance_observations_rejected_total"},
        "time() - constance_location_last_report_timestamp_seconds offset 5m":
            {"constance_location_last_report_timestamp_seconds"},
        "topk(10, a:b:c) / on(job) group_left(x) up or vector(0) > bool 1e3":
            {"a:b:c", "up"},
        'count(foo{l="bar baz"}) and ignoring(x) constance_cells': {"foo", "constance_cells"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        assert got == want, "metric_names(%r) = %r, want %r" % (expr, got, want)
    assert queries.substitute("x[$__rate_interval] ${location} [[key]]") == "x[1m] store-001 sku-0001"


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    promtool = argv[1]
    ddir = argv[2] if len(argv) > 2 else queries.DASHBOARD_DIR
    rules = argv[3] if len(argv) > 3 else os.path.join(queries.REPO, "deploy", "prometheus", "recording_rules.yml")
    self_test()
    recorded = recording_rule_names(rules)
    if not recorded:
        print("no recording rules found in %s" % rules, file=sys.stderr)
        return 1
    files = queries.dashboard_files([ddir])
    if not files:
        print("no dashboards in %s" % ddir, file=sys.stderr)
        return 1
    errors, uids, exprs = [], {}, []
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            errors.append("%s: not valid JSON: %s" % (name, e))
            continue
        if not isinstance(d, dict):
            errors.append("%s: not a JSON object" % name)
            continue
        uid = d.get("uid")
        if uid in uids:
            errors.append("%s: uid %r also used by %s" % (name, uid, uids[uid]))
        uids[uid] = name
        for label, metric, expr in check_dashboard(name, d, errors):
            names = {metric} if metric else metric_names(expr)
            if expr is not None:
                exprs.append(("%s: %s" % (name, label), expr))
            for m in sorted(names):
                if m in recorded or m in KNOWN_METRICS:
                    continue
                why = "not a metric constance exports" if m.startswith("constance_") else \
                      "not constance_-prefixed, not up, and no recording rule"
                errors.append("%s: %s: metric %s: %s" % (name, label, m, why))
    with tempfile.TemporaryDirectory(prefix="constance-dashboards-") as tmp:
        if exprs:
            errors.extend(promtool_check(promtool, exprs, tmp))
    for e in errors:
        print("FAIL " + e)
    print("%d dashboards, %d expressions, %d errors" % (len(files), len(exprs), len(errors)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
