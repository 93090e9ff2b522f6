#!/usr/bin/env python3
"""End to end, from a store's price to a page: the demo chain (a collector
and 24 agents), a real Prometheus with deploy/prometheus's rules scraping
the collector, a real Alertmanager with deploy/alertmanager's routing, and a
local HTTP receiver standing in for PagerDuty, Opsgenie and the webhooks.

The Alertmanager configuration is the shipped one with only what cannot run
here changed: the PagerDuty/Opsgenie/webhook URLs point at the local
receiver, the secret files are dummies named after themselves (so a
notification tells which receiver sent it), group_wait/group_interval are
short, and two regions' business hours are put in time zones chosen from
the current time: west's (demo-store-07 overcharges) where it is mid-day
on a working day, south's (demo-store-13, made to overcharge too) where it
is the middle of the night. The intervals are rendered by
deploy/alertmanager/render-intervals.py from a catalog of those zones, so
only their `location:` differs from the shipped ones. Every run checks,
at one instant, both sides of the shipped routing: west's pager gets the
page and south's store only a ticket in south's queue, never a page.
(From Sunday 08:00 to 18:00 UTC no zone has a Monday-Saturday day: then
the day region's interval is widened to every day of the week.) The rules
are the shipped ones with `for: 0s` and `keep_firing_for: 0s`.

    page_test.py BIN_DIR SOURCE_DIR
"""
import datetime
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

DEADLINE_S = 360

# The shipped hours of every region's pager (alertmanager.yml,
# business-hours-<region>): Monday to Saturday, 07:00 to 21:00 local time.
SHIPPED_WEEKDAYS = "weekdays: ['monday:saturday']"
OPEN_H, CLOSE_H = 7, 21
WORKING_DAYS = range(0, 6)  # Monday to Saturday, as datetime counts them.
MARGIN_H = 1  # Far from a change of hours: the run lasts minutes.
# demo.sh puts store i in regions[i % 4] of (north south east west).
DAY_REGION, DAY_STORE = "west", "demo-store-07"
NIGHT_REGION, NIGHT_STORE = "south", "demo-store-13"


class Received:
    """Notifications the local receiver got, with a condition to wait on."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items = []  # (kind, key, body text, path)

    def add(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, predicate, deadline, what):
        with self.cond:
            while True:
                found = [i for i in self.items if predicate(i)]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; received: "
                                         + "; ".join(f"{i[0]} {i[1]}" for i in self.items))
                self.cond.wait(left)

    def snapshot(self):
        with self.cond:
            return list(self.items)


def make_handler(received):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            path = urllib.parse.urlparse(self.path).path
            if path.startswith("/pagerduty"):
                received.add(("pagerduty", json.loads(body).get("routing_key", ""), body, path))
            elif path.startswith("/opsgenie"):
                auth = self.headers.get("Authorization", "")
                received.add(("opsgenie", auth.replace("GenieKey ", ""), body, path))
            else:
                received.add(("webhook", path, body, path))
            answer = b'{"status":"success","result":"ok","request_id":"1"}'
            self.send_response(202 if path.startswith("/pagerduty") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    return Handler


def listening_port(pid, deadline, what, log):
    """The loopback port a process listens on (it was given port 0)."""
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                m = re.search(r"127\.0\.0\.1:(\d+)", line)
                if m:
                    return int(m.group(1))
        time.sleep(0.2)  # Polling the socket table, with a deadline.
    raise AssertionError(f"{what} is not listening; its log:\n{open(log).read()}")


def etc_zone(offset):
    """The fixed-offset zone `offset` hours east of UTC. Its name's sign is
    POSIX's, inverted: Etc/GMT-3 is UTC+3."""
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def pick_offsets(now):
    """(day, night, all_week): hours east of UTC where, at the UTC instant
    `now`, it is mid-day on a working day (all_week: no zone has one, so any
    day) and the middle of the night (02:00)."""
    def local(k):
        return now + datetime.timedelta(hours=k)

    def hour(k):
        return local(k).hour + local(k).minute / 60

    offsets = range(-12, 15)  # Every fixed-offset zone there is.
    open_now = [k for k in offsets if OPEN_H + MARGIN_H <= hour(k) < CLOSE_H - MARGIN_H]
    working = [k for k in open_now if local(k).weekday() in WORKING_DAYS]
    day = min(working or open_now, key=lambda k: abs(hour(k) - (OPEN_H + CLOSE_H) / 2))
    night_h = (CLOSE_H + 24 + OPEN_H) / 2 % 24
    night = min(offsets, key=lambda k: min(abs(hour(k) - night_h), 24 - abs(hour(k) - night_h)))
    return day, night, not working


def interval_span(config, name):
    """(start, end) of time interval `name`'s entry in the config's text."""
    m = re.search(rf"^( *)- name: {re.escape(name)}\n(?:\1 .*\n|[ \t]*\n)*", config, re.M)
    if not m:
        raise AssertionError(f"alertmanager.yml has no time interval {name}")
    return m.start(), m.end()


def render_business_hours(source, work):
    """The shipped config with DAY_REGION's business hours in a zone where
    it is mid-day now and NIGHT_REGION's where it is night; a description."""
    shipped_path = os.path.join(source, "deploy/alertmanager/alertmanager.yml")
    shipped = open(shipped_path).read()
    for region in (DAY_REGION, NIGHT_REGION):
        start, end = interval_span(shipped, f"business-hours-{region}")
        entry = shipped[start:end]
        if not all(t in entry for t in (SHIPPED_WEEKDAYS, f"start_time: '{OPEN_H:02d}:00'",
                                        f"end_time: '{CLOSE_H:02d}:00'")):
            raise AssertionError(f"business-hours-{region} no longer reads Mon-Sat "
                                 f"{OPEN_H:02d}:00-{CLOSE_H:02d}:00: update page_test.py:\n{entry}")
    now = datetime.datetime.now(datetime.timezone.utc)
    day, night, all_week = pick_offsets(now)
    zones = {DAY_REGION: etc_zone(day), NIGHT_REGION: etc_zone(night)}
    catalog = os.path.join(work, "catalog.yaml")
    with open(catalog, "w") as f:
        f.write("locations:\n")
        for i in range(1, 25):
            region = ("north", "south", "east", "west")[i % 4]
            if region in zones:
                f.write(f"  - {{id: demo-store-{i:02d}, labels: {{region: {region}}}, "
                        f"timezone: \"{zones[region]}\"}}\n")
    run = subprocess.run([sys.executable, os.path.join(source, "deploy/alertmanager/render-intervals.py"),
                          "render", catalog, shipped_path], capture_output=True, text=True)
    if run.returncode != 0:
        raise AssertionError(f"render-intervals.py failed:\n{run.stderr}")
    config = run.stdout
    if all_week:
        start, end = interval_span(config, f"business-hours-{DAY_REGION}")
        config = (config[:start] + config[start:end].replace(SHIPPED_WEEKDAYS, "weekdays: ['sunday:saturday']")
                  + config[end:])

    def at(k):
        return (now + datetime.timedelta(hours=k)).strftime("%a %H:%M")

    return config, (f"at {now:%a %H:%M} UTC, {DAY_REGION} ({zones[DAY_REGION]}) is at {at(day)}, inside "
                    f"its business hours{' (widened to every day)' if all_week else ''}; "
                    f"{NIGHT_REGION} ({zones[NIGHT_REGION]}) is at {at(night)}, outside")


def post_prices(state, store, prices):
    """Sends {key: minor units} as a store's prices through its agent."""
    agent = re.search(r"^http=(\S+)", open(os.path.join(state, f"{store}.ready")).read(), re.M).group(1)
    body = [{"key": k, "price": {"minor_units": v, "currency": "EUR"}} for k, v in prices.items()]
    req = urllib.request.Request(f"http://{agent}/v1/observations", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200, r.status


def main():
    bin_dir, source = sys.argv[1], sys.argv[2]
    deadline = time.monotonic() + DEADLINE_S
    work = tempfile.mkdtemp(prefix="constance-page-test.")
    procs = []
    received = Received()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(received))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # The demo: a collector and 24 agents, running until stopped.
        demo_out = os.path.join(work, "demo.out")
        env = dict(os.environ, CONSTANCE_BIN_DIR=bin_dir)
        demo = subprocess.Popen([os.path.join(source, "deploy/demo.sh")], env=env,
                                stdout=open(demo_out, "w"), stderr=subprocess.STDOUT)
        procs.append(demo)
        metrics = None
        while metrics is None:
            text = open(demo_out).read()
            m = re.search(r"^Prometheus metrics: http://(\S+)/metrics", text, re.M)
            st = re.search(r"^State and logs: *(\S+)\n", text, re.M)
            if m and st:
                metrics, state = m.group(1), st.group(1)
                break
            if demo.poll() is not None:
                raise AssertionError("the demo exited:\n" + text)
            if time.monotonic() > deadline:
                raise AssertionError("the demo did not report in time:\n" + text)
            time.sleep(0.2)  # Polling its output, with a deadline.

        # The night region's store overcharges olive oil as 07 does (south's
        # prices are 20 cents up): a page for south's pager, which its hours
        # must hold back.
        post_prices(state, NIGHT_STORE, {"olive-oil-1l": (899 + 20) * 112 // 100})

        # Alertmanager: the shipped routing with two regions' hours in the
        # chosen zones, local endpoints, dummy secrets.
        config, hours = render_business_hours(source, work)
        print(f"ok: {hours}")
        secrets = os.path.join(work, "secrets")
        os.mkdir(secrets)
        for name in set(re.findall(r"/etc/alertmanager/secrets/([\w.-]+)", config)):
            with open(os.path.join(secrets, name), "w") as f:
                f.write(name)
        config = config.replace("/etc/alertmanager/secrets/", secrets + "/")
        config = re.sub(r"pagerduty_url: \S+", f"pagerduty_url: {hook}/pagerduty/v2/enqueue", config)
        config = re.sub(r"opsgenie_api_url: \S+", f"opsgenie_api_url: {hook}/opsgenie/", config)
        config = re.sub(r"(- url: )https?://[^/\s]+(/\S*)", lambda m: f"{m.group(1)}{hook}/webhook{m.group(2)}",
                        config)
        config = re.sub(r"group_wait: \S+", "group_wait: 1s", config)
        config = re.sub(r"group_interval: \S+", "group_interval: 2s", config)
        am_config = os.path.join(work, "alertmanager.yml")
        open(am_config, "w").write(config)
        am_log = os.path.join(work, "alertmanager.log")
        am = subprocess.Popen(["prometheus-alertmanager", f"--config.file={am_config}",
                               f"--storage.path={work}/am", "--web.listen-address=127.0.0.1:0",
                               "--cluster.listen-address="],
                              stdout=open(am_log, "w"), stderr=subprocess.STDOUT)
        procs.append(am)
        am_port = listening_port(am.pid, deadline, "alertmanager", am_log)

        # Prometheus: the shipped rules, every `for:` at 0s.
        rules = os.path.join(work, "alert_rules.yml")
        subprocess.run([os.path.join(source, "deploy/prometheus/render-rules.sh"), "0s", rules],
                       check=True, env=dict(os.environ, KEEP_FIRING_FOR="0s"))
        prom_config = os.path.join(work, "prometheus.yml")
        open(prom_config, "w").write(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{source}/deploy/prometheus/recording_rules.yml", "{rules}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: constance-collector
    static_configs: [{{targets: ["{metrics}"]}}]
""")
        prom_log = os.path.join(work, "prometheus.log")
        prom = subprocess.Popen(["prometheus", f"--config.file={prom_config}",
                                 f"--storage.tsdb.path={work}/tsdb", "--web.listen-address=127.0.0.1:0"],
                                stdout=open(prom_log, "w"), stderr=subprocess.STDOUT)
        procs.append(prom)
        listening_port(prom.pid, deadline, "prometheus", prom_log)

        def names(item, text):
            return text in item[2]

        # The overcharging store: a ticket in its region's queue and, its
        # region being inside business hours, one page (one incident: one
        # dedup key) to its region's pager naming the store and the items.
        def overcharge_page(i):
            return (i[0] == "pagerduty" and i[1] == f"pagerduty-{DAY_REGION}.key" and names(i, DAY_STORE)
                    and names(i, "ConstanceOutlier") and json.loads(i[2]).get("event_action") == "trigger")

        ticket = received.wait_for(
            lambda i: i[0] == "opsgenie" and i[1] == f"opsgenie-{DAY_REGION}.key" and names(i, DAY_STORE)
            and names(i, "olive-oil-1l"), deadline, f"a {DAY_REGION} ticket naming {DAY_STORE} and olive oil")
        print(f"ok: ticket for {DAY_STORE} in opsgenie-{DAY_REGION} ({len(ticket)} notification(s))")
        received.wait_for(lambda i: overcharge_page(i) and names(i, "olive-oil-1l")
                          and names(i, "cheese-200g"), deadline,
                          f"a page to {DAY_REGION}'s pager naming {DAY_STORE}, olive oil and cheese")
        # What the on-call reads first: the page's headline names the store.
        headlines = [json.loads(i[2])["payload"]["summary"]
                     for i in received.snapshot() if overcharge_page(i)]
        if not all(DAY_STORE in h for h in headlines):
            raise AssertionError(f"a page headline does not name the store: {headlines}")
        print(f"ok: inside its business hours, {DAY_REGION}'s pager got the overcharge")

        # At the same time, outside its region's hours: the other overcharge
        # is a ticket in its region's queue, and Alertmanager routes it to
        # the region's pager too (so only the hours can keep it from paging).
        received.wait_for(
            lambda i: i[0] == "opsgenie" and i[1] == f"opsgenie-{NIGHT_REGION}.key"
            and names(i, NIGHT_STORE) and names(i, "olive-oil-1l"), deadline,
            f"a {NIGHT_REGION} ticket naming {NIGHT_STORE} and olive oil")
        query = urllib.parse.urlencode([("filter", f'location="{NIGHT_STORE}"'), ("filter", 'severity="page"'),
                                        ("filter", 'key="olive-oil-1l"')])
        with urllib.request.urlopen(f"http://127.0.0.1:{am_port}/api/v2/alerts?{query}", timeout=10) as r:
            alerts = json.load(r)
        routed = {rcv["name"] for a in alerts for rcv in a["receivers"]}
        if not alerts or f"{NIGHT_REGION}-pager" not in routed \
                or any(a["status"]["state"] != "active" for a in alerts):
            raise AssertionError(f"{NIGHT_STORE}'s overcharge is not an active page for "
                                 f"{NIGHT_REGION}-pager in Alertmanager: {alerts}")
        print(f"ok: outside its business hours, {NIGHT_STORE}'s page is a ticket in opsgenie-{NIGHT_REGION}")

        # Clearing the fault resolves it: the store fixes its prices.
        post_prices(state, DAY_STORE, {"coffee-250g": 449, "olive-oil-1l": 899, "cheese-200g": 349})
        keys = {json.loads(i[2])["dedup_key"] for i in received.snapshot() if overcharge_page(i)}
        received.wait_for(lambda i: i[0] == "pagerduty" and json.loads(i[2]).get("event_action") == "resolve"
                          and json.loads(i[2]).get("dedup_key") in keys, deadline,
                          "the overcharge page resolved")
        keys = {json.loads(i[2])["dedup_key"] for i in received.snapshot() if overcharge_page(i)}
        if len(keys) != 1:
            raise AssertionError(f"expected one overcharge incident for {DAY_STORE}, got {len(keys)}")
        print("ok: one incident for the overcharge, resolved once the prices were fixed")
        received.wait_for(lambda i: i[0] == "opsgenie" and i[1] == f"opsgenie-{DAY_REGION}.key"
                          and i[3].endswith("/close"), deadline, f"the {DAY_REGION} ticket closed")
        print(f"ok: the {DAY_REGION} ticket closed once the prices were fixed")
        # Chain-level findings go to HQ, not to stores.
        received.wait_for(lambda i: i[0] == "opsgenie" and i[1] == "opsgenie-hq.key"
                          and names(i, "ConstanceSplit"), deadline, "the split for HQ")
        received.wait_for(lambda i: i[0] == "opsgenie" and i[1] == "opsgenie-hq.key"
                          and names(i, "ConstanceUnkeepablePromise"), deadline,
                          "the unkeepable promise for HQ")
        print("ok: split and unkeepable promise reached HQ")
        # The drifting store: a ticket for its region, never a page.
        received.wait_for(lambda i: i[0] == "opsgenie" and i[1] == "opsgenie-north.key"
                          and names(i, "demo-store-16") and names(i, "ConstanceDrift"),
                          deadline, "the drift ticket for demo-store-16")
        print("ok: demo-store-16's drift is a ticket for north")
        # The dead-man's switch fires all the time.
        received.wait_for(lambda i: i[0] == "webhook" and "ping" in i[1] and names(i, "ConstanceWatchdog"),
                          deadline, "the watchdog at the dead-man's switch")
        print("ok: the watchdog reaches the dead-man's switch")

        # Nothing pages for what must not: pages name only the faulty stores,
        # and none of the region outside its business hours, all run long.
        for kind, key, body, _ in received.snapshot():
            if kind != "pagerduty":
                continue
            stores = set(re.findall(r"demo-store-\d+", body))
            wrong = stores - {"demo-store-07", "demo-store-13", "demo-store-19"}
            if wrong:
                raise AssertionError(f"{key} paged for {sorted(wrong)}: {body[:500]}")
            if key == f"pagerduty-{NIGHT_REGION}.key" or NIGHT_STORE in stores:
                raise AssertionError(f"{key} paged outside {NIGHT_REGION}'s business hours: {body[:500]}")
        pages = sum(1 for i in received.snapshot() if i[0] == "pagerduty")
        print(f"page_test: {len(received.snapshot())} notifications, {pages} pages, "
              "each to the receiver its route names")
        return 0
    except AssertionError as e:
        print(f"FAIL: {e}")
        for log in ("alertmanager.log", "prometheus.log"):
            path = os.path.join(work, log)
            if os.path.exists(path):
                print(f"--- {log} (tail)\n" + "".join(open(path).readlines()[-20:]))
        return 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
