"""The metrics as Prometheus sees them: runs the relay binary given as argv[1] on loopback,
delivers a few events, checks the live /metrics exposition with `promtool check metrics`
and the chart's alert rules with `promtool check rules`, then scrapes the relay with a real
Prometheus server (which also loads and evaluates the alert rules) and reads a hookrelay
series back through Prometheus' HTTP API. Everything stops by itself."""

import http.server
import json
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "helm/hookrelay/files/alerts.yaml"
DEADLINE = 30.0


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def wait(what, cond):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


class Receive(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def step(text):
    print(f"== metrics: {text}", flush=True)


def main():
    binary = pathlib.Path(sys.argv[1]).resolve()
    app, api, ops, rx, prom = free_ports(5)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", rx), Receive)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "config.yaml").write_text(
            f"""listen: {{app: "127.0.0.1:{app}", api: "127.0.0.1:{api}", ops: "127.0.0.1:{ops}"}}
storage: {{path: "{tmp}/hookrelay.db", sync: normal}}
log: {{format: json}}
subscriptions:
  - {{name: orders, url: "http://127.0.0.1:{rx}/orders", events: ["order.*"]}}
  - {{name: audit, mode: pull, events: ["*"]}}
"""
        )
        procs = []
        try:
            log = open(tmp / "relay.log", "wb")
            procs.append(
                subprocess.Popen([binary, "--config", tmp / "config.yaml"], stderr=log)
            )
            wait("the relay's /readyz", lambda: get(f"http://127.0.0.1:{ops}/readyz")[0] == 200)
            for i in range(5):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{app}/v1/events",
                    data=json.dumps({"type": "order.paid", "id": f"o{i}", "data": {"n": i}}).encode(),
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert r.status == 202, r.status

            def delivered():
                text = get(f"http://127.0.0.1:{ops}/metrics")[1].decode()
                return 'hookrelay_deliveries_total{outcome="delivered",subscription="orders"} 5' in text

            wait("5 deliveries", delivered)

            step("promtool check metrics (the live exposition)")
            exposition = get(f"http://127.0.0.1:{ops}/metrics")[1]
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=exposition, capture_output=True
            )
            print(check.stdout.decode() + check.stderr.decode(), end="")
            if check.returncode != 0:
                sys.exit("promtool check metrics found problems")

            step(f"promtool check rules {RULES.relative_to(ROOT)}")
            subprocess.run(["promtool", "check", "rules", RULES], check=True)

            step("Prometheus scrapes the relay")
            (tmp / "prometheus.yml").write_text(
                f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: hookrelay
    static_configs: [{{targets: ["127.0.0.1:{ops}"]}}]
"""
            )
            procs.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={tmp / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp / "prometheus.log", "wb"),
                )
            )
            query = 'hookrelay_deliveries_total{subscription="orders",outcome="delivered"}'
            url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            result = {}

            def scraped():
                body = json.loads(get(url)[1])
                result["data"] = body["data"]["result"]
                return body["status"] == "success" and any(
                    float(r["value"][1]) == 5 for r in result["data"]
                )

            wait(f"Prometheus to return {query}", scraped)
            print(f"   {query} -> {result['data'][0]['value'][1]} (job {result['data'][0]['metric']['job']})")

            def rules_evaluated():
                groups = json.loads(get(f"http://127.0.0.1:{prom}/api/v1/rules")[1])["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules and all(r.get("health") == "ok" for r in rules)

            wait("the alert rules to evaluate without errors", rules_evaluated)
            groups = json.loads(get(f"http://127.0.0.1:{prom}/api/v1/rules")[1])["data"]["groups"]
            print(f"   {sum(len(g['rules']) for g in groups)} alert rules evaluated, health ok")
        except BaseException:
            for name in ("relay.log", "prometheus.log"):
                path = tmp / name
                if path.exists():
                    print(f"--- {name}\n{path.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
            receiver.shutdown()


if __name__ == "__main__":
    main()
