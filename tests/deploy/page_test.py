#!/usr/bin/env python3
"""End to end, from a store's price to a page: the demo chain (a collector
and 24 agents), a real Prometheus with deploy/prometheus's rules scraping
the collector, a real Alertmanager with deploy/alertmanager's routing, and a
local HTTP receiver standing in for PagerDuty, Opsgenie and the webhooks.

The Alertmanager configuration is the shipped one with only what cannot run
here changed: the PagerDuty/Opsgenie/webhook URLs point at the local
receiver, the secret files are dummies named after themselves (so a
notification tells which receiver sent it) and group_wait/group_interval
are short. The rules are the shipped ones with `for: 0s` and
`keep_firing_for: 0s`. Business hours
are the real ones: the overcharging store pages its region's pager only
inside them, and the test expects that from the current time.

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
from zoneinfo import ZoneInfo

DEADLINE_S = 240


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


def business_hours_now():
    """The shipped store-business-hours interval: Mon-Sat 07:00-21:00 Paris."""
    now = datetime.datetime.now(ZoneInfo("Europe/Paris"))
    return now.weekday() <= 5 and 7 <= now.hour < 21


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
            if m:
                metrics = m.group(1)
                break
            if demo.poll() is not None:
                raise AssertionError("the demo exited:\n" + text)
            if time.monotonic() > deadline:
                raise AssertionError("the demo did not report in time:\n" + text)
            time.sleep(0.2)  # Polling its output, with a deadline.

        # Alertmanager: the shipped routing, local endpoints, dummy secrets.
        secrets = os.path.join(work, "secrets")
        os.mkdir(secrets)
        config = open(os.path.join(source, "deploy/alertmanager/alertmanager.yml")).read()
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

        # The overcharging store: always a ticket in its region's queue, and
        # inside business hours one page (one incident: one dedup key) to
        # its region's pager naming the store and the items.
        paging = business_hours_now()

        def overcharge_page(i):
            return (i[0] == "pagerduty" and i[1] == "pagerduty-west.key" and names(i, "demo-store-07")
                    and names(i, "ConstanceOutlier") and json.loads(i[2]).get("event_action") == "trigger")

        ticket = received.wait_for(
            lambda i: i[0] == "opsgenie" and i[1] == "opsgenie-west.key" and names(i, "demo-store-07")
            and names(i, "olive-oil-1l"), deadline, "a west ticket naming demo-store-07 and olive oil")
        print(f"ok: ticket for demo-store-07 in opsgenie-west ({len(ticket)} notification(s))")
        if paging:
            received.wait_for(lambda i: overcharge_page(i) and names(i, "olive-oil-1l")
                              and names(i, "cheese-200g"), deadline,
                              "a page to west's pager naming demo-store-07, olive oil and cheese")
            # What the on-call reads first: the page's headline names the store.
            headlines = [json.loads(i[2])["payload"]["summary"]
                         for i in received.snapshot() if overcharge_page(i)]
            if not all("demo-store-07" in h for h in headlines):
                raise AssertionError(f"a page headline does not name the store: {headlines}")
            print("ok: inside business hours, west's pager got the overcharge")
        else:
            print("ok: outside business hours (Europe/Paris): no store page expected")

        # Clearing the fault resolves it: the store fixes its prices.
        state = re.search(r"^State and logs: *(\S+)", open(demo_out).read(), re.M).group(1)
        agent = re.search(r"^http=(\S+)", open(os.path.join(state, "demo-store-07.ready")).read(),
                          re.M).group(1)
        fixed = [{"key": k, "price": {"minor_units": v, "currency": "EUR"}}
                 for k, v in (("coffee-250g", 449), ("olive-oil-1l", 899), ("cheese-200g", 349))]
        req = urllib.request.Request(f"http://{agent}/v1/observations", json.dumps(fixed).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status
        if paging:
            keys = {json.loads(i[2])["dedup_key"] for i in received.snapshot() if overcharge_page(i)}
            received.wait_for(lambda i: i[0] == "pagerduty" and json.loads(i[2]).get("event_action") == "resolve"
                              and json.loads(i[2]).get("dedup_key") in keys, deadline,
                              "the overcharge page resolved")
            keys = {json.loads(i[2])["dedup_key"] for i in received.snapshot() if overcharge_page(i)}
            if len(keys) != 1:
                raise AssertionError(f"expected one overcharge incident for demo-store-07, got {len(keys)}")
            print("ok: one incident for the overcharge, resolved once the prices were fixed")
        else:
            received.wait_for(lambda i: i[0] == "opsgenie" and i[1] == "opsgenie-west.key"
                              and i[3].endswith("/close"), deadline, "the west ticket closed")
            print("ok: the west ticket closed once the prices were fixed")
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

        # Nothing pages for what must not: pages name only the faulty stores.
        for kind, key, body, _ in received.snapshot():
            if kind != "pagerduty":
                continue
            stores = set(re.findall(r"demo-store-\d+", body))
            wrong = stores - {"demo-store-07", "demo-store-13", "demo-store-19"}
            if wrong:
                raise AssertionError(f"{key} paged for {sorted(wrong)}: {body[:500]}")
            if not paging and stores:
                raise AssertionError(f"{key} paged a store outside business hours: {body[:500]}")
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
