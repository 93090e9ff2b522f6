#!/usr/bin/env python3
"""Keeps Alertmanager's paging hours in each region's own time zone.

A store page reaches its region's pager only inside the region's business
hours: alertmanager.yml has one time interval per region,
`business-hours-<region>`, whose `location:` is the region's time zone. The
collector's catalog says where each location is: its `region` label and
its IANA `timezone` (UTC when absent). This script keeps the two in step.

    render-intervals.py check CATALOG [ALERTMANAGER_YML]
    render-intervals.py render CATALOG [ALERTMANAGER_YML] [-o OUTPUT]

`check` routes a store page (labels as deploy/prometheus/alert_rules.yml
sets them) of every region of CATALOG through ALERTMANAGER_YML (default:
alertmanager.yml beside this script) and checks that every time interval
that keeps it from the pager (`active_time_intervals`) is in the zone of
the region's locations. A region without a route of its own is checked
against the catch-all pager's interval. It fails, naming the region and
both zones, when they differ, and when a region's locations span several
zones (no one interval fits them: split the region). Closed locations
(`closed: true`) are left out; they raise no findings.

`render` prints ALERTMANAGER_YML (or writes OUTPUT, which may be the input)
with the `location:` of each `business-hours-<region>` interval set to that
region's zone and nothing else changed, then checks the result as above
(and writes nothing if it fails). Hours, weekdays and routes stay as
written: a new region's interval and route are added by hand, and until
then the check says what its pages reach.

Exit status: 0 consistent, 1 inconsistent, 2 unreadable input or usage.
Python's standard library has no YAML reader: the one below reads what
these files use (block and flow collections, plain and quoted scalars,
block scalars, comments) and refuses anchors, aliases, tags and multiple
documents rather than misread them.
"""
import argparse
import json
import os
import re
import sys
import tempfile

INTERVAL_PREFIX = "business-hours-"
# A store page as deploy/prometheus/alert_rules.yml labels it.
PAGE_LABELS = {"alertname": "ConstanceOutlier", "severity": "page", "audience": "store"}


class InputError(Exception):
    """A file that cannot be read as the YAML subset or the expected shape."""


# --- a small YAML reader -------------------------------------------------


def _strip_comment(line):
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote == "'":
            if c == "'":
                if line[i + 1:i + 2] == "'":
                    i += 1
                else:
                    quote = None
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        elif c in "'\"" and (i == 0 or line[i - 1] in " \t[{,:-"):
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "\\": "\\", "/": "/", " ": " "}


class _Reader:
    def __init__(self, text, name):
        self.name = name
        self.raw = text.split("\n")
        self.lines = []  # [raw line index, indent, text without comment]
        for n, raw in enumerate(self.raw):
            text = _strip_comment(raw)
            if not text.strip():
                continue
            body = text.lstrip(" ")
            if body.startswith("\t"):
                self.fail(n, "tab in indentation")
            if body in ("---", "...") and len(body) == len(text):
                if body == "---" and not self.lines:
                    continue
                self.fail(n, "more than one YAML document")
            self.lines.append([n, len(text) - len(body), body])
        self.i = 0

    def fail(self, n, msg):
        raise InputError(f"{self.name}:{n + 1}: {msg}")

    def parse(self):
        if not self.lines:
            return None
        value = self.block(self.lines[0][1])
        if self.i < len(self.lines):
            self.fail(self.lines[self.i][0], "unexpected content after the document's top level")
        return value

    @staticmethod
    def is_item(s):
        return s == "-" or s.startswith("- ")

    def block(self, indent):
        if self.is_item(self.lines[self.i][2]):
            return self.sequence(indent)
        return self.mapping(indent)

    def nested(self, indent):
        """The block under a line at `indent`, or None when there is none."""
        if self.i < len(self.lines) and self.lines[self.i][1] > indent:
            return self.block(self.lines[self.i][1])
        return None

    def sequence(self, indent):
        out = []
        while self.i < len(self.lines):
            n, ind, s = self.lines[self.i]
            if ind != indent or not self.is_item(s):
                break
            rest = s[1:].lstrip(" ")
            if not rest:
                self.i += 1
                out.append(self.nested(indent))
                continue
            # "- key: value" opens a mapping at the column of "key".
            column = indent + len(s) - len(rest)
            if self.is_item(rest) or self.split_key(rest, n):
                self.lines[self.i] = [n, column, rest]
                out.append(self.block(column))
            else:
                self.i += 1
                out.append(self.value(rest, n, indent))
        return out

    def mapping(self, indent):
        out = {}
        while self.i < len(self.lines):
            n, ind, s = self.lines[self.i]
            if ind < indent or (ind == indent and self.is_item(s)):
                break
            if ind > indent:
                self.fail(n, "unexpected indentation")
            kv = self.split_key(s, n)
            if not kv:
                self.fail(n, f"expected 'key: value', got '{s}'")
            key, rest = kv
            if key in out:
                self.fail(n, f"duplicate key '{key}'")
            self.i += 1
            if rest:
                out[key] = self.value(rest, n, indent)
            elif self.i < len(self.lines) and self.lines[self.i][1] == indent \
                    and self.is_item(self.lines[self.i][2]):
                out[key] = self.sequence(indent)
            else:
                out[key] = self.nested(indent)
        return out

    def split_key(self, s, n):
        """(key, rest) when s is "key: rest" or "key:", else None."""
        if s[0] in "{[":
            return None
        if s[0] in "'\"":
            key, end = self.quoted(s, 0, n)
            m = re.match(r"\s*:(\s+|$)", s[end:])
            return (key, s[end + m.end():].strip()) if m else None
        m = re.search(r":(\s+|$)", s)
        if not m:
            return None
        return s[:m.start()].rstrip(), s[m.end():].strip()

    def value(self, text, n, indent):
        c = text[0]
        if c in "&*!%@`":
            self.fail(n, f"unsupported YAML ('{c}': anchors, aliases, tags, directives)")
        if c in "|>":
            return self.block_scalar(text, n, indent)
        # A value may go on over the next, more indented lines: a flow
        # collection or quoted scalar until it closes, a plain scalar always.
        plain = c not in "{['\""
        while self.i < len(self.lines) and self.lines[self.i][1] > indent and \
                (plain or not self.complete(text)):
            if plain and self.split_key(self.lines[self.i][2], n):
                self.fail(self.lines[self.i][0], "unexpected indentation")
            text += " " + self.lines[self.i][2]
            self.i += 1
        if c in "{[":
            value, end = self.flow(text, 0, n)
        elif c in "'\"":
            value, end = self.quoted(text, 0, n)
        else:
            return text
        if text[end:].strip():
            self.fail(n, f"unexpected '{text[end:].strip()}' after a value")
        return value

    def complete(self, text):
        try:
            if text[0] in "{[":
                self.flow(text, 0, -1)
            else:
                self.quoted(text, 0, -1)
            return True
        except InputError:
            return False

    def block_scalar(self, header, n, indent):
        m = re.fullmatch(r"([|>])([+-]?)(\d?)", header)
        if not m:
            self.fail(n, f"unsupported block scalar header '{header}'")
        raw_lines = []
        k = n + 1
        while k < len(self.raw):
            line = self.raw[k]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            raw_lines.append(line)
            k += 1
        while self.i < len(self.lines) and self.lines[self.i][0] < k:
            self.i += 1
        content = [line for line in raw_lines if line.strip()]
        strip = min((len(line) - len(line.lstrip(" ")) for line in content), default=0)
        body = [line[strip:] for line in raw_lines]
        while body and not body[-1].strip():
            body.pop()
        if m.group(1) == "|" or not body:
            text = "\n".join(body)
        else:
            # Folding: a break between two lines at the base indentation is a
            # space; empty lines are breaks; breaks beside more indented lines stay.
            text, prev, empty = body[0], body[0], 0
            for line in body[1:]:
                if not line.strip():
                    empty += 1
                    continue
                kept = "\n" if prev.startswith(" ") or line.startswith(" ") else ""
                text += (kept + "\n" * empty if empty else kept or " ") + line
                prev, empty = line, 0
        return text if m.group(2) == "-" else text + "\n"

    def quoted(self, s, pos, n):
        q = s[pos]
        out = []
        i = pos + 1
        while i < len(s):
            c = s[i]
            if q == "'" and c == "'":
                if s[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            if q == '"' and c == '"':
                return "".join(out), i + 1
            if q == '"' and c == "\\":
                e = s[i + 1:i + 2]
                if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2:i + 6]):
                    out.append(chr(int(s[i + 2:i + 6], 16)))
                    i += 6
                    continue
                if e not in _ESCAPES:
                    self.fail(n, f"unsupported escape '\\{e}'")
                out.append(_ESCAPES[e])
                i += 2
                continue
            out.append(c)
            i += 1
        self.fail(n, "unterminated quoted scalar")

    def flow(self, s, pos, n):
        """The flow node at s[pos]: (value, end)."""
        def skip(p):
            while p < len(s) and s[p] == " ":
                p += 1
            return p

        pos = skip(pos)
        if pos >= len(s):
            self.fail(n, "unterminated flow collection")
        c = s[pos]
        if c in "{[":
            close = "}" if c == "{" else "]"
            out = {} if c == "{" else []
            pos = skip(pos + 1)
            while True:
                if pos >= len(s):
                    self.fail(n, "unterminated flow collection")
                if s[pos] == close:
                    return out, pos + 1
                item, pos = self.flow(s, pos, n)
                pos = skip(pos)
                if c == "{":
                    value = None
                    if s[pos:pos + 1] == ":":
                        pos = skip(pos + 1)
                        if s[pos:pos + 1] not in (",", "}"):
                            value, pos = self.flow(s, pos, n)
                            pos = skip(pos)
                    out[item] = value
                else:
                    out.append(item)
                if s[pos:pos + 1] == ",":
                    pos = skip(pos + 1)
                elif s[pos:pos + 1] != close:
                    self.fail(n, f"expected ',' or '{close}' in a flow collection")
        if c in "'\"":
            return self.quoted(s, pos, n)
        if c in "&*!%@`|>":
            self.fail(n, f"unsupported YAML ('{c}') in a flow collection")
        m = re.compile(r"(?:[^,\[\]{}:]|:(?![\s,\[\]{}]|$))+").match(s, pos)
        if not m:
            self.fail(n, "empty value in a flow collection")
        return m.group(0).strip(), m.end()


def read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}")
    return text, _Reader(text, path).parse()


# --- the catalog ---------------------------------------------------------


def region_zones(catalog, path):
    """{region: {zone: [location ids]}} of the catalog's open locations."""
    if catalog is None:
        return {}
    if not isinstance(catalog, dict):
        raise InputError(f"{path}: not a catalog (expected a mapping)")
    locations = catalog.get("locations") or []
    if not isinstance(locations, list):
        raise InputError(f"{path}: locations: expected a list")
    regions = {}
    for k, loc in enumerate(locations):
        if not isinstance(loc, dict) or not isinstance(loc.get("id"), str):
            raise InputError(f"{path}: locations[{k}]: expected a mapping with an id")
        if loc.get("closed") == "true":
            continue
        labels = loc.get("labels") or {}
        if not isinstance(labels, dict):
            raise InputError(f"{path}: locations[{k}].labels: expected a mapping")
        region = labels.get("region") or ""
        zone = loc.get("timezone") or "UTC"
        regions.setdefault(region, {}).setdefault(zone, []).append(loc["id"])
    return regions


def describe(region):
    return f"region {region}" if region else "locations without a region label"


# --- Alertmanager's routing ----------------------------------------------


def _matchers(route):
    out = []
    for m in route.get("matchers") or []:
        mm = re.fullmatch(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*", str(m))
        if not mm:
            raise InputError(f"unreadable matcher '{m}'")
        value = mm.group(3)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = json.loads(value)
        out.append((mm.group(1), mm.group(2), value))
    out += [(k, "=", v) for k, v in (route.get("match") or {}).items()]
    out += [(k, "=~", v) for k, v in (route.get("match_re") or {}).items()]
    return out


def _matches(route, labels):
    for name, op, value in _matchers(route):
        have = labels.get(name, "")
        if op in ("=", "!="):
            hit = have == value
        else:
            hit = re.fullmatch(value, have) is not None  # Alertmanager anchors regexes too.
        if hit != (op in ("=", "=~")):
            return False
    return True


def route_alert(route, labels, receiver=None):
    """The (route, receiver) pairs an alert ends at, as Alertmanager routes:
    depth first, the first matching child unless it says `continue`."""
    if not _matches(route, labels):
        return []
    receiver = route.get("receiver") or receiver
    found = []
    for child in route.get("routes") or []:
        got = route_alert(child, labels, receiver)
        found += got
        if got and str(child.get("continue")).lower() != "true":
            break
    return found or [(route, receiver)]


def interval_zones(config):
    """{interval name: [zone of each of its time ranges]}."""
    out = {}
    for key in ("time_intervals", "mute_time_intervals"):
        for interval in config.get(key) or []:
            out[interval["name"]] = [t.get("location") or "UTC"
                                     for t in interval.get("time_intervals") or [{}]]
    return out


def check(regions, config, config_path):
    """Problems (one line each) and the report of what was checked."""
    problems, report = [], []
    zones_of = interval_zones(config)
    for region in sorted(regions):
        by_zone = regions[region]
        who = describe(region)
        if len(by_zone) > 1:
            spread = "; ".join(f"{zone}: {', '.join(sorted(ids)[:3])}{', ...' if len(ids) > 3 else ''}"
                               for zone, ids in sorted(by_zone.items()))
            problems.append(f"{who}: the locations span several time zones ({spread}); no one "
                            "business-hours interval fits them: split the region")
            continue
        zone = next(iter(by_zone))
        own = INTERVAL_PREFIX + region
        held, free = [], []
        for route, receiver in route_alert(config.get("route") or {}, dict(PAGE_LABELS, region=region)):
            names = route.get("active_time_intervals") or []
            if not names:
                free.append(receiver)
            for name in names:
                held.append(f"{receiver} in {name}")
                if name not in zones_of:
                    problems.append(f"{who}: their pages reach {receiver} in time interval {name}, "
                                    f"which {config_path} does not define")
                    continue
                for other in zones_of[name]:
                    if other == zone:
                        continue
                    if name == own:
                        fix = f"set its location to {zone} (`render` does)"
                    elif region:
                        fix = f"give the region a route of its own, held to {own} in {zone}"
                    else:
                        fix = "give these locations a region label"
                    problems.append(
                        f"{who}: the locations are in {zone} but their pages reach {receiver} "
                        f"in time interval {name}, which is in {other}: {fix}")
        ids = sum(len(v) for v in by_zone.values())
        reach = ", ".join(held + [f"{r} at any hour" for r in free])
        report.append(f"{who}: {ids} location(s) in {zone}; pages reach {reach}")
    return problems, report


# --- render --------------------------------------------------------------


def render(text, regions):
    """text with each business-hours-<region>'s `location:` set to the
    region's zone (regions spanning several zones are left to check)."""
    zone_of = {r: next(iter(z)) for r, z in regions.items() if r and len(z) == 1}
    out = []
    in_block = False
    current = None
    for line in text.split("\n"):
        if re.match(r"\S", line) and not line.startswith("#"):
            in_block = line.startswith("time_intervals:")
            current = None
        elif in_block:
            m = re.match(r"\s*- name:\s*['\"]?([^'\"#\s]+)", line)
            if m:
                current = m.group(1)
            m = re.match(r"(\s*(?:- )?location:\s*)(['\"]?[^\s#'\"]+['\"]?)(.*)$", line)
            region = current[len(INTERVAL_PREFIX):] \
                if current and current.startswith(INTERVAL_PREFIX) else None
            if m and region in zone_of:
                line = m.group(1) + zone_of[region] + m.group(3)
        out.append(line)
    return "\n".join(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(
        description="Check or render alertmanager.yml's per-region business hours from a catalog.")
    parser.add_argument("mode", choices=("check", "render"))
    parser.add_argument("catalog")
    parser.add_argument("config", nargs="?", default=os.path.join(here, "alertmanager.yml"))
    parser.add_argument("-o", "--output", help="render: write here (default: standard output)")
    args = parser.parse_args()
    me = os.path.basename(sys.argv[0])
    try:
        _, catalog = read_yaml(args.catalog)
        regions = region_zones(catalog, args.catalog)
        text, config = read_yaml(args.config)
        if not isinstance(config, dict):
            raise InputError(f"{args.config}: not an Alertmanager configuration")
        if args.mode == "render":
            text = render(text, regions)
            config = _Reader(text, args.config).parse()
        problems, report = check(regions, config, args.config)
    except (InputError, KeyError, TypeError, AttributeError, re.error) as e:
        print(f"{me}: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"{me}: {line}", file=sys.stderr)
    if problems:
        return 1
    if args.mode == "render":
        if not args.output:
            sys.stdout.write(text)
        else:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.output)),
                                       prefix=os.path.basename(args.output) + ".")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            mode = os.stat(args.output).st_mode & 0o777 if os.path.exists(args.output) else 0o644
            os.chmod(tmp, mode)
            os.replace(tmp, args.output)
    else:
        for line in report:
            print(f"ok: {line}")
        if not regions:
            print(f"{me}: {args.catalog} declares no open location: nothing to check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
