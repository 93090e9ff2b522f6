#!/usr/bin/env python3
"""Print every PromQL expression of the constance dashboards, one per line,
with Grafana's variables replaced by sample values, e.g. to run each against
a Prometheus scraping a demo:

    tests/dashboards/queries.py --var location=store-007 | while read -r q; do
        curl -fsS --get http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$q"
    done

Options: --var NAME=VALUE (repeatable) overrides a sample value;
--with-source prefixes each line with "FILE<TAB>PANEL ID<TAB>PANEL TITLE<TAB>".
Arguments: dashboard files or directories (default: the repository's dashboards/).
Also imported by check_dashboards.py. Standard library only.
"""
import argparse
import json
import os
import re
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD_DIR = os.path.join(REPO, "dashboards")

# Sample values for the dashboards' template variables and Grafana's global
# variables (the range ones must be valid PromQL durations).
SAMPLE_VALUES = {
    "location": "store-001",
    "family": "price",
    "key": "sku-0001",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
    "__range_s": "21600",
    "__interval_ms": "30000",
}

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(text, values=None):
    """Replace $name, ${name}, ${name:fmt} and [[name]]; unknown names raise KeyError."""
    values = SAMPLE_VALUES if values is None else values

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError("no sample value for variable $%s" % name)
        return values[name]

    return _VAR.sub(repl, text)


def dashboard_files(paths=None):
    out = []
    for p in paths or [DASHBOARD_DIR]:
        if os.path.isdir(p):
            out.extend(os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".json"))
        else:
            out.append(p)
    return out


def iter_panels(panels):
    """Every panel, including those nested in collapsed rows."""
    for p in panels or []:
        yield p
        yield from iter_panels(p.get("panels"))


def iter_targets(dashboard):
    """(panel, target) for every target of every panel."""
    for panel in iter_panels(dashboard.get("panels")):
        for target in panel.get("targets") or []:
            yield panel, target


def one_line(expr):
    return " ".join(expr.split())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--with-source", action="store_true")
    args = ap.parse_args(argv)
    values = dict(SAMPLE_VALUES)
    for v in args.var:
        name, sep, value = v.partition("=")
        if not sep:
            ap.error("--var wants NAME=VALUE, got %r" % v)
        values[name] = value
    for path in dashboard_files(args.paths):
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
        for panel, target in iter_targets(dashboard):
            expr = target.get("expr", "")
            if target.get("hide") or not expr.strip():
                continue
            line = one_line(substitute(expr, values))
            if args.with_source:
                line = "%s\t%s\t%s\t%s" % (os.path.basename(path), panel.get("id"), panel.get("title", ""), line)
            print(line)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    sys.exit(main())
