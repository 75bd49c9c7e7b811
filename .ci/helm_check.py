#!/usr/bin/env python3
"""Checks of the Helm chart helm/hookrelay; run by .ci/deploy-check, which installs the tools.

Real Helm (its Go SDK, through helm-python-sdk) lints the chart and renders it with its
default values, each helm/hookrelay/ci/*-values.yaml and the mode-2 example parent chart;
kubernetes-validate --strict checks every rendered object against Kubernetes 1.29 and the
newest version it knows; the Prometheus Operator objects, the alert file and the Grafana
dashboard are checked field by field; then the chart's promises are asserted (ConfigMap
mounted without subPath, native/container sidecar placement, securityContext,
StatefulSet with volumeClaimTemplates, ...). Exits non-zero on the first failed step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

import helm_python as helm
import kubernetes_validate.utils as kv_utils

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "hookrelay"
EXAMPLE = CHART / "examples" / "parent-chart"
RELEASE = "demo"
NAMESPACE = "hookrelay-ci"
OLDEST_KUBE = "1.29.0"  # native sidecars (SidecarContainers) are on by default from 1.29

CRD_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}

# Every hookrelay metric the relay exports; dashboards and alerts may use only these.
METRICS = {
    "hookrelay_events_received_total", "hookrelay_events_rejected_total",
    "hookrelay_events_matched_total", "hookrelay_delivery_attempts_total",
    "hookrelay_deliveries_total", "hookrelay_queue_depth",
    "hookrelay_oldest_pending_timestamp_seconds", "hookrelay_dead_letters",
    "hookrelay_orphaned_deliveries", "hookrelay_rate_limited_total",
    "hookrelay_pull_redelivered_total", "hookrelay_build_info",
    "hookrelay_config_reloads_total", "hookrelay_config_last_reload_success_timestamp_seconds",
    "hookrelay_subscriptions", "hookrelay_http_requests_total",
    "hookrelay_oauth2_token_requests_total",
    "hookrelay_client_certificate_expiry_timestamp_seconds",
}
HISTOGRAMS = {
    "hookrelay_delivery_duration_seconds", "hookrelay_store_commit_duration_seconds",
    "hookrelay_store_batch_size", "hookrelay_ingest_duration_seconds",
}
for _h in HISTOGRAMS:
    METRICS |= {f"{_h}_bucket", f"{_h}_sum", f"{_h}_count"}

ALERTS = {
    "HookrelayDeliveryFailureRatioHigh": (
        'sum by (subscription) (rate(hookrelay_delivery_attempts_total{result!="success"}[10m]))'
        " / sum by (subscription) (rate(hookrelay_delivery_attempts_total[10m])) > 0.2",
        "10m", "warning"),
    "HookrelayDeliveriesFailing": (
        'sum by (subscription) (increase(hookrelay_deliveries_total{outcome=~"failed|expired"}[15m])) > 0',
        None, "warning"),
    "HookrelayQueueBacklogGrowing": (
        "deriv(hookrelay_queue_depth[15m]) > 0 and hookrelay_queue_depth > 1000", "15m", "warning"),
    "HookrelayOldestPendingTooOld": (
        "time() - hookrelay_oldest_pending_timestamp_seconds > 3600", "5m", "warning"),
    "HookrelayDeadLetters": ("hookrelay_dead_letters > 0", "5m", "info"),
    "HookrelayIngestBusy": (
        'rate(hookrelay_events_rejected_total{reason="busy"}[5m]) > 0', "5m", "critical"),
    "HookrelayConfigReloadFailed": (
        'increase(hookrelay_config_reloads_total{result="failure"}[15m]) > 0', None, "warning"),
}

SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}


class CheckError(Exception):
    pass


def check(cond: Any, msg: str) -> None:
    if not cond:
        raise CheckError(msg)


_step_no = 0


def step(title: str, fn: Callable[[], Any]) -> Any:
    global _step_no
    _step_no += 1
    start = time.monotonic()
    print(f"== [{_step_no}] {title}", flush=True)
    try:
        result = fn()
    except CheckError as e:
        print(f"FAILED: {e}", flush=True)
        sys.exit(1)
    print(f"== [{_step_no}] ok ({time.monotonic() - start:.1f}s)", flush=True)
    return result


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    check(isinstance(values, dict), f"{path}: not a mapping")
    return values


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

class Rendered:
    def __init__(self, label: str, manifest: str, notes: str):
        self.label = label
        self.manifest = manifest
        self.notes = notes
        self.objects = [o for o in yaml.safe_load_all(manifest) if o]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        check(len(found) == 1, f"{self.label}: expected one {kind}, found {len(found)}")
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") in ("Deployment", "StatefulSet")]


def render(chart_dir: Path, values: dict[str, Any], label: str, release: str = RELEASE) -> Rendered:
    with helm.Chart.load(chart_dir) as chart:
        # Install-time schema validation, as `helm install` / `helm template` do it.
        chart.validate_schema(values)
        # A client-only dry-run install is `helm template`: no cluster is contacted.
        cfg = helm.Config(storage_driver="memory")
        try:
            result = cfg.install(chart, release, values, dry_run="client", namespace=NAMESPACE)
        finally:
            cfg.close()
    return Rendered(label, result.get("manifest") or "", result.get("notes") or "")


def expect_render_failure(values: dict[str, Any], needle: str, what: str) -> None:
    try:
        render(CHART, values, what)
    except helm.HelmError as e:
        check(needle in str(e), f"{what}: failed, but not with {needle!r}: {e}")
        print(f"   refused as expected: {what}")
        return
    raise CheckError(f"{what}: rendered, but must be refused")


# --------------------------------------------------------------------------------------
# Assertions on rendered objects
# --------------------------------------------------------------------------------------

def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def hookrelay_container(spec: dict[str, Any], name: str = "hookrelay") -> tuple[str, dict[str, Any]]:
    found = [(where, c) for where in ("initContainers", "containers")
             for c in spec.get(where) or [] if c.get("name") == name]
    check(len(found) == 1, f"expected one container named {name}, found {len(found)}")
    return found[0]


def assert_sidecar(r: Rendered, workload: dict[str, Any], mode: str, persistence: bool,
                   cm_name: str, shared: bool = False) -> None:
    spec = pod_spec(workload)
    where, c = hookrelay_container(spec)
    if mode == "native":
        check(where == "initContainers", f"{r.label}: native mode must put hookrelay in initContainers, not {where}")
        check(c.get("restartPolicy") == "Always", f"{r.label}: native sidecar needs restartPolicy: Always")
        check(c.get("startupProbe"), f"{r.label}: native sidecar needs a startupProbe (gates the app's start)")
    else:
        check(where == "containers", f"{r.label}: container mode must put hookrelay in containers, not {where}")
        check("restartPolicy" not in c, f"{r.label}: restartPolicy is for native sidecars only")
        check(not any(i.get("name") == "hookrelay" for i in spec.get("initContainers") or []),
              f"{r.label}: hookrelay also in initContainers")

    sc = c.get("securityContext") or {}
    for key, want in SECURITY_CONTEXT.items():
        check(sc.get(key) == want, f"{r.label}: securityContext.{key} is {sc.get(key)!r}, want {want!r}")
    check((sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{r.label}: capabilities.drop must be [ALL]")
    check((sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{r.label}: seccompProfile RuntimeDefault")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
    check("hookrelay-ops" in ports, f"{r.label}: no hookrelay-ops port")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        p = c.get(probe)
        if p is None and probe == "startupProbe" and mode == "container":
            continue
        check(p and p.get("httpGet", {}).get("path") == path and p["httpGet"].get("port") == "hookrelay-ops",
              f"{r.label}: {probe} must GET {path} on hookrelay-ops, got {p}")
    check(c.get("args") == ["run", "--config", "/etc/hookrelay/config.yaml"], f"{r.label}: args {c.get('args')}")
    check(c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory"),
          f"{r.label}: hookrelay needs resource requests and a memory limit")

    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    cfg = mounts.get("hookrelay-config")
    check(cfg and cfg["mountPath"] == "/etc/hookrelay", f"{r.label}: config must be mounted at /etc/hookrelay")
    check("subPath" not in cfg and "subPathExpr" not in cfg,
          f"{r.label}: the ConfigMap must be mounted as a directory, without subPath (hot reload)")
    for m in c.get("volumeMounts") or []:
        check("subPath" not in m, f"{r.label}: mount {m['name']} uses subPath")
    if shared:
        check("hookrelay-data" not in mounts, f"{r.label}: sharedStore needs no data volume")
    else:
        check(mounts.get("hookrelay-data", {}).get("mountPath") == "/var/lib/hookrelay",
              f"{r.label}: data volume must be mounted at /var/lib/hookrelay")
    check(mounts.get("hookrelay-tmp", {}).get("mountPath") == "/tmp", f"{r.label}: /tmp volume missing")

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    check(volumes.get("hookrelay-config", {}).get("configMap", {}).get("name") == cm_name,
          f"{r.label}: hookrelay-config volume must use ConfigMap {cm_name}")
    if shared:
        check(workload["kind"] == "Deployment", f"{r.label}: sharedStore runs a Deployment")
        check("hookrelay-data" not in volumes, f"{r.label}: sharedStore needs no data volume")
        env = {e["name"]: e for e in c.get("env") or []}
        ref = env.get("HOOKRELAY_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") and ref.get("key"), f"{r.label}: HOOKRELAY_DATABASE_URL must come from a Secret")
    elif persistence:
        check(workload["kind"] == "StatefulSet", f"{r.label}: persistence needs a StatefulSet")
        vct = workload["spec"].get("volumeClaimTemplates") or []
        check([t["metadata"]["name"] for t in vct] == ["hookrelay-data"],
              f"{r.label}: volumeClaimTemplates must hold hookrelay-data, got {vct}")
        check(vct[0]["spec"]["resources"]["requests"]["storage"], f"{r.label}: claim size missing")
        check("hookrelay-data" not in volumes, f"{r.label}: hookrelay-data both a volume and a claim")
        check(workload["spec"].get("serviceName"), f"{r.label}: StatefulSet without serviceName")
    else:
        check(workload["kind"] == "Deployment", f"{r.label}: without persistence the workload is a Deployment")
        check("emptyDir" in volumes.get("hookrelay-data", {}), f"{r.label}: hookrelay-data must be an emptyDir")


def assert_configmap(r: Rendered, cm_name: str, shared: bool = False) -> dict[str, Any]:
    cms = [o for o in r.of_kind("ConfigMap") if o["metadata"]["name"] == cm_name]
    check(len(cms) == 1, f"{r.label}: ConfigMap {cm_name} missing")
    config = yaml.safe_load(cms[0]["data"]["config.yaml"])
    check(isinstance(config, dict), f"{r.label}: config.yaml is not a mapping")
    storage = config.get("storage", {})
    if shared:
        check(storage.get("postgres", {}).get("url") == "${HOOKRELAY_DATABASE_URL}",
              f"{r.label}: storage.postgres.url must be ${{HOOKRELAY_DATABASE_URL}}")
        check(not {"path", "sync", "max_size", "reserve", "memory"} & set(storage),
              f"{r.label}: the SQLite file's keys must go with sharedStore: {sorted(storage)}")
    else:
        check(storage.get("path") == "/var/lib/hookrelay/hookrelay.db",
              f"{r.label}: storage.path must be /var/lib/hookrelay/hookrelay.db")
    for key in ("app", "api", "ops"):
        check(config.get("listen", {}).get(key), f"{r.label}: listen.{key} missing")
    relay_check(r.label, cms[0]["data"]["config.yaml"])
    return config


def relay_check(label: str, text: str) -> None:
    """The relay itself validates the rendered config (`hookrelay check`), when HOOKRELAY_BIN
    names the binary; every ${VAR} gets a placeholder, as the Secrets would give it one."""
    binary = os.environ.get("HOOKRELAY_BIN")
    if not binary:
        return
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text):
        env[name] = ("postgres://relay:placeholder-secret@db.invalid:5432/app"
                     if name.endswith("DATABASE_URL") else "placeholder-secret")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        out = subprocess.run([binary, "check", "--config", f.name], capture_output=True, text=True, env=env)
    check(out.returncode == 0, f"{label}: hookrelay check refused the rendered config:\n{out.stdout}{out.stderr}")


def pod_labels(w: dict[str, Any]) -> dict[str, str]:
    return w["spec"]["template"]["metadata"].get("labels") or {}


def all_port_names(spec: dict[str, Any]) -> set[str]:
    return {p["name"] for where in ("initContainers", "containers") for c in spec.get(where) or []
            for p in c.get("ports") or [] if "name" in p}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def assert_crds(r: Rendered, pods: list[dict[str, Any]]) -> None:
    """Prometheus Operator objects: kubernetes-validate has no schema for them."""
    services = r.of_kind("Service")
    for o in r.objects:
        if o["kind"] not in CRD_KINDS:
            continue
        label = f"{r.label}: {o['kind']}/{o['metadata'].get('name')}"
        check(o.get("apiVersion") == "monitoring.coreos.com/v1", f"{label}: apiVersion {o.get('apiVersion')}")
        check(o["metadata"].get("name") and o["metadata"].get("namespace"), f"{label}: name/namespace")
        spec = o.get("spec") or {}
        if o["kind"] == "PodMonitor":
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            eps = spec.get("podMetricsEndpoints") or []
            check(sel and eps, f"{label}: needs spec.selector.matchLabels and podMetricsEndpoints")
            selected = [p for p in pods if matches(sel, p["labels"])]
            check(selected, f"{label}: selector {sel} matches no rendered pod template")
            for ep in eps:
                check(ep.get("path") == "/metrics", f"{label}: path must be /metrics")
                for p in selected:
                    check(ep.get("port") in p["ports"], f"{label}: port {ep.get('port')} not on pod {p['name']} ({sorted(p['ports'])})")
        elif o["kind"] == "ServiceMonitor":
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            eps = spec.get("endpoints") or []
            check(sel and eps, f"{label}: needs spec.selector.matchLabels and endpoints")
            selected = [s for s in services if matches(sel, s["metadata"].get("labels") or {})]
            check(len(selected) == 1, f"{label}: selector {sel} must match exactly one Service, matches {len(selected)}")
            svc_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
            for ep in eps:
                check(ep.get("port") in svc_ports, f"{label}: port {ep.get('port')} not on Service ({sorted(svc_ports)})")
                check(ep.get("path") == "/metrics", f"{label}: path must be /metrics")
        else:
            groups = spec.get("groups") or []
            check(groups, f"{label}: no rule groups")
            for g in groups:
                check(g.get("name") and g.get("rules"), f"{label}: group without name or rules")
                for rule in g["rules"]:
                    check(rule.get("expr") and (rule.get("alert") or rule.get("record")), f"{label}: rule {rule}")
            alerts = {rule["alert"] for g in groups for rule in g["rules"] if "alert" in rule}
            check(alerts == set(ALERTS), f"{label}: alerts {sorted(alerts)} != {sorted(ALERTS)}")


def assert_services(r: Rendered, pods: list[dict[str, Any]]) -> None:
    for s in r.of_kind("Service"):
        sel = s["spec"].get("selector") or {}
        selected = [p for p in pods if matches(sel, p["labels"])]
        check(selected, f"{r.label}: Service {s['metadata']['name']} selects no rendered pod ({sel})")
        for port in s["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                for p in selected:
                    check(target in p["ports"], f"{r.label}: Service {s['metadata']['name']} targetPort {target} not on pod")


def pods_of(r: Rendered) -> list[dict[str, Any]]:
    return [{"name": w["metadata"]["name"], "labels": pod_labels(w), "ports": all_port_names(pod_spec(w))}
            for w in r.workloads()]


# --------------------------------------------------------------------------------------
# kubernetes-validate
# --------------------------------------------------------------------------------------

def kube_validate(renders: list[Rendered], outdir: Path, versions: list[str]) -> None:
    files: list[Path] = []
    crd_files: set[str] = set()
    for r in renders:
        d = outdir / re.sub(r"[^A-Za-z0-9_.-]", "_", r.label)
        d.mkdir(parents=True, exist_ok=True)
        for i, o in enumerate(r.objects):
            f = d / f"{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
            f.write_text(yaml.safe_dump(o, sort_keys=False))
            files.append(f)
            if o["kind"] in CRD_KINDS:
                crd_files.add(str(f))
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    for v in versions:
        cmd += ["-k", v]
    print(f"   kubernetes-validate --strict {' '.join('-k ' + v for v in versions)} on {len(files)} objects")
    proc = subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    problems = []
    for line in out.splitlines():
        if line.startswith("WARN "):
            fname = line.split()[1]
            if fname in crd_files and "monitoring.coreos.com/v1" in line:
                continue  # no schema for the Prometheus Operator CRDs: checked in assert_crds
        problems.append(line)
    for line in problems:
        print("   " + line)
    check(proc.returncode == 0 and not problems,
          f"kubernetes-validate reported problems (exit {proc.returncode})")
    print(f"   {len(files)} objects valid ({len(crd_files)} Prometheus Operator objects checked by field)")


# --------------------------------------------------------------------------------------
# Alerts and dashboard
# --------------------------------------------------------------------------------------

def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(hookrelay_[a-z_]+)\b", expr))


def check_alert_file() -> None:
    path = CHART / "files" / "alerts.yaml"
    doc = yaml.safe_load(path.read_text())
    check(isinstance(doc, dict) and list(doc) == ["groups"], f"{path}: must be a rule file with only groups:")
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    check(set(rules) == set(ALERTS), f"alerts {sorted(rules)} != {sorted(ALERTS)}")
    for name, (expr, for_, severity) in ALERTS.items():
        rule = rules[name]
        check(" ".join(str(rule["expr"]).split()) == expr, f"{name}: expr {rule['expr']!r} != {expr!r}")
        check(rule.get("for") == for_, f"{name}: for {rule.get('for')!r} != {for_!r}")
        check(rule.get("labels", {}).get("severity") == severity, f"{name}: severity")
        ann = rule.get("annotations") or {}
        check(ann.get("summary") and ann.get("description"), f"{name}: needs summary and description")
        unknown = metric_names(rule["expr"]) - METRICS
        check(not unknown, f"{name}: unknown metrics {unknown}")
    promtool = shutil.which("promtool")
    if promtool:
        proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        print("   " + (proc.stdout + proc.stderr).strip().replace("\n", "\n   "))
        check(proc.returncode == 0, "promtool check rules failed")
    else:
        print("   promtool not installed: rule syntax left to the PrometheusRule's consumer")
    print(f"   {len(rules)} alerts with the documented expressions")


def check_dashboard() -> None:
    path = CHART / "dashboards" / "hookrelay.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckError(f"{path}: invalid JSON: {e}")
    check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, "schemaVersion")
    check(dash.get("uid") and dash.get("title"), "dashboard uid and title")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    check(ds and ds["type"] == "datasource" and ds["query"] == "prometheus", "datasource variable of type prometheus")
    sub = variables.get("subscription")
    check(sub and "label_values(hookrelay_queue_depth, subscription)" in json.dumps(sub.get("query")),
          "subscription variable from label_values(hookrelay_queue_depth, subscription)")
    ids: set[int] = set()
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            check(p.get("id") not in ids, f"duplicate panel id {p.get('id')}")
            ids.add(p["id"])
            check(all(k in p.get("gridPos", {}) for k in "hwxy"), f"panel {p.get('title')}: gridPos")
            if p.get("type") == "row":
                walk(p.get("panels") or [])
                continue
            check(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p.get('title')}: datasource")
            check(p.get("targets"), f"panel {p.get('title')}: no targets")
            for t in p["targets"]:
                check(t.get("expr"), f"panel {p.get('title')}: target without expr")
                check(t.get("datasource", {}).get("uid") == "${datasource}", f"panel {p.get('title')}: target datasource")
                exprs.append(t["expr"])

    walk(dash["panels"])
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = used - METRICS
    check(not unknown, f"dashboard uses unknown metrics {unknown}")
    joined = "\n".join(exprs)
    for needle in ("histogram_quantile(0.5,", "histogram_quantile(0.9,", "histogram_quantile(0.99,",
                   "hookrelay_delivery_duration_seconds_bucket", "hookrelay_queue_depth",
                   "hookrelay_dead_letters", "hookrelay_oldest_pending_timestamp_seconds",
                   "hookrelay_rate_limited_total", "hookrelay_config_reloads_total",
                   "hookrelay_config_last_reload_success_timestamp_seconds",
                   "hookrelay_events_received_total", "hookrelay_deliveries_total"):
        check(needle in joined, f"dashboard has no panel using {needle}")
    print(f"   {len(ids)} panels, {len(exprs)} queries, metrics: {len(used)} known")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def main() -> None:
    newest = kv_utils.latest_version()
    versions = [OLDEST_KUBE, newest]
    print(f"helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"kubernetes-validate {kv_utils.__version__}: Kubernetes {OLDEST_KUBE} and {newest}")

    ci_files = sorted((CHART / "ci").glob("*-values.yaml"))
    check(ci_files, "no helm/hookrelay/ci/*-values.yaml")
    value_sets: list[tuple[str, dict[str, Any]]] = [("default", {})]
    value_sets += [(f.name, load_values(f)) for f in ci_files]

    def lint_all() -> None:
        for label, values in value_sets:
            for kube in versions:
                report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}")
                msgs = report.get("messages") or []
                for m in msgs:
                    sev = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m.get("severity"), "UNKNOWN")
                    print(f"   [{label}, k8s {kube}] {sev} {m.get('path')}: {m.get('error')}")
                bad = [m for m in msgs if m.get("severity") != 1] + list(report.get("errors") or [])
                check(report.get("total_charts_linted") == 1 and not bad,
                      f"helm lint --strict ({label}, k8s {kube}) failed: {bad}")
            print(f"   lint --strict ok: {label}")

    step("helm lint --strict (default values and each ci/*-values.yaml; k8s " + " and ".join(versions) + ")", lint_all)

    renders: list[Rendered] = []

    def render_all() -> None:
        for label, values in value_sets:
            r = render(CHART, values, label)
            check(r.objects, f"{label}: rendered nothing")
            check(r.notes.strip(), f"{label}: empty NOTES.txt")
            renders.append(r)
            print(f"   {label}: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in r.objects))
        # Extra cases: config.reload.watch false, a release named like the chart.
        r = render(CHART, {"config": {"reload": {"watch": False}}}, "reload-watch-false")
        ann = r.one("Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
        check("checksum/config" in ann, "reload.watch false must add the checksum/config annotation")
        renders.append(r)
        r = render(CHART, {}, "release-hookrelay", release="hookrelay")
        check(r.one("Deployment")["metadata"]["name"] == "hookrelay", "fullname of release 'hookrelay'")
        renders.append(r)

    step("helm template (client-only dry-run install, schema validated)", render_all)

    def refusals() -> None:
        for values, needle, what in (
            ({"sidecar": {"mode": "sidecar"}}, "sidecar/mode", "sidecar.mode outside native|container"),
            ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy", "pullPolicy outside the enum"),
            ({"unknownKey": True}, "unknownKey", "unknown top-level key"),
            ({"config": "listen: {}"}, "/config", "config as a string"),
            ({"secretEnv": [{"name": "X", "value": "inline"}]}, "secretEnv", "secretEnv with an inlined value"),
            ({"persistence": {"enabled": "yes"}}, "persistence/enabled", "persistence.enabled not a boolean"),
            ({"service": {"enabled": True}}, "config.listen.api", "Service with a loopback listen.api"),
            ({"config": {"listen": {"api": "0.0.0.0:8788"}}}, "config.api.token", "non-loopback api without token"),
            ({"monitoring": {"serviceMonitor": {"enabled": True}}}, "needs service.enabled", "ServiceMonitor without Service"),
            ({"sharedStore": {"enabled": True, "urlSecret": {"name": "db", "key": "url"}}, "persistence": {"enabled": True}},
             "set persistence.enabled=false", "sharedStore with a data volume"),
            ({"sharedStore": {"enabled": True}}, "sharedStore.urlSecret.name", "sharedStore without the URL's Secret"),
            ({"sharedStore": {"enabled": True, "urlSecret": {"name": "db", "key": "url"}, "postgres": {"url": "postgres://u:p@h/d"}}},
             "sharedStore/postgres/url", "an inlined database URL"),
        ):
            expect_render_failure(values, needle, what)

    step("wrong values are refused at install time", refusals)

    def assertions() -> None:
        for r in renders:
            values = dict(value_sets).get(r.label, {})
            merged_mode = (values.get("sidecar") or {}).get("mode", "native")
            persistence = bool((values.get("persistence") or {}).get("enabled"))
            shared = bool((values.get("sharedStore") or {}).get("enabled"))
            fullname = "hookrelay" if r.label == "release-hookrelay" else f"{RELEASE}-hookrelay"
            cm_name = f"{fullname}-config"
            config = assert_configmap(r, cm_name, shared)
            workloads = r.workloads()
            check(len(workloads) == 1, f"{r.label}: expected one workload, found {len(workloads)}")
            w = workloads[0]
            assert_sidecar(r, w, merged_mode, persistence, cm_name, shared)
            check(w["spec"]["replicas"] == values.get("replicaCount", 1), f"{r.label}: replicas")
            pdbs = r.of_kind("PodDisruptionBudget")
            want_pdb = bool((values.get("podDisruptionBudget") or {}).get("enabled"))
            check(len(pdbs) == int(want_pdb), f"{r.label}: PodDisruptionBudget only when enabled")
            for pdb in pdbs:
                check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(w)),
                      f"{r.label}: the PodDisruptionBudget must select the pods")
            spec = pod_spec(w)
            check(spec.get("terminationGracePeriodSeconds") == 30, f"{r.label}: terminationGracePeriodSeconds 30")
            app = [c for c in spec["containers"] if c["name"] == "app"]
            check(len(app) == 1, f"{r.label}: app container missing")
            env = {e["name"]: e.get("value") for e in app[0].get("env") or []}
            check(env.get("HOOKRELAY_URL") == "http://127.0.0.1:8787", f"{r.label}: app's HOOKRELAY_URL")
            pod_ann = w["spec"]["template"]["metadata"].get("annotations") or {}
            scrape = (values.get("monitoring") or {}).get("scrapeAnnotations", {}).get("enabled", True)
            check((pod_ann.get("prometheus.io/scrape") == "true") == scrape, f"{r.label}: prometheus.io/scrape toggle")
            if scrape:
                check(pod_ann.get("prometheus.io/port") == "9464" and pod_ann.get("prometheus.io/path") == "/metrics",
                      f"{r.label}: scrape annotations")
            roll = values.get("rollOnConfigChange") or r.label == "reload-watch-false"
            check(("checksum/config" in pod_ann) == bool(roll), f"{r.label}: checksum/config only with rollOnConfigChange")
            sidecar_env = {e["name"]: e for e in hookrelay_container(spec)[1].get("env") or []}
            for se in values.get("secretEnv") or []:
                ref = sidecar_env.get(se["name"], {}).get("valueFrom", {}).get("secretKeyRef", {})
                check(ref.get("name") == se["secretName"] and ref.get("key") == se["key"],
                      f"{r.label}: secretEnv {se['name']} must come from Secret {se['secretName']}")
                check(f"${{{se['name']}}}" in json.dumps(config), f"{r.label}: {se['name']} unused by config")
            check(not r.of_kind("Secret"), f"{r.label}: the chart must not render Secrets")
            pods = pods_of(r)
            assert_services(r, pods)
            assert_crds(r, pods)
            kinds = sorted({o["kind"] for o in r.objects})
            print(f"   {r.label}: {w['kind']}, sidecar in {hookrelay_container(spec)[0]}, objects {kinds}")
        full = next((r for r in renders if r.label == "full-values.yaml"), None)
        check(full is not None, "ci/full-values.yaml missing")
        for kind in ("StatefulSet", "Service", "PodMonitor", "ServiceMonitor", "PrometheusRule"):
            check(full.of_kind(kind), f"full-values.yaml must render a {kind}")
        dash = [o for o in full.of_kind("ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        check(len(dash) == 1, "full-values.yaml: dashboard ConfigMap labelled grafana_dashboard: \"1\"")
        check(json.loads(dash[0]["data"]["hookrelay.json"])["uid"] == "hookrelay", "dashboard ConfigMap content")
        container = [r for r in renders if r.label == "container-values.yaml"]
        check(container, "ci/container-values.yaml missing")
        check(any(r.label == "shared-values.yaml" for r in renders), "ci/shared-values.yaml missing")

    step("chart assertions (sidecar placement, ConfigMap without subPath, securityContext, persistence, monitors)", assertions)

    def mode2() -> None:
        with tempfile.TemporaryDirectory(prefix="hookrelay-parent-") as tmp:
            parent = Path(tmp) / "parent-chart"
            shutil.copytree(EXAMPLE, parent)
            # What `helm dependency update` would unpack: the chart as packaged (.helmignore).
            shutil.copytree(CHART, parent / "charts" / "hookrelay",
                            ignore=shutil.ignore_patterns("examples", "ci"))
            deps = helm.dependency_list(parent)
            check(deps and all(d.get("status") in ("ok", "unpacked") for d in deps), f"dependencies: {deps}")
            for mode in ("native", "container"):
                values = {"hookrelay": {"sidecar": {"mode": mode}}}
                report = helm.lint(parent, values, strict=True, with_subcharts=True, kube_version=f"v{OLDEST_KUBE}")
                bad = [m for m in report.get("messages") or [] if m.get("severity") != 1] + list(report.get("errors") or [])
                check(not bad, f"example parent chart lint ({mode}): {bad}")
                r = render(parent, values, f"parent-chart-{mode}")
                check(not r.workloads() or all(w["metadata"]["name"] == f"{RELEASE}-my-app" for w in r.workloads()),
                      f"{r.label}: the hookrelay dependency must not render its own workload")
                w = r.one("Deployment")
                assert_configmap(r, f"{RELEASE}-hookrelay-config")
                assert_sidecar(r, w, mode, False, f"{RELEASE}-hookrelay-config")
                spec = pod_spec(w)
                check([c["name"] for c in spec["containers"]][0] == "my-app", f"{r.label}: app container first")
                pods = pods_of(r)
                assert_crds(r, pods)
                assert_services(r, pods)
                renders.append(r)
                print(f"   {r.label}: sidecar in {hookrelay_container(spec)[0]}, objects "
                      + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in r.objects))

    step("mode 2: examples/parent-chart includes the sidecar templates of the dependency", mode2)

    def validate() -> None:
        with tempfile.TemporaryDirectory(prefix="hookrelay-manifests-") as tmp:
            kube_validate(renders, Path(tmp), versions)

    step(f"kubernetes-validate --strict (Kubernetes {OLDEST_KUBE} and {newest})", validate)
    step("alerts: files/alerts.yaml", check_alert_file)
    step("Grafana dashboard: dashboards/hookrelay.json", check_dashboard)
    print("helm-check: all checks passed")


if __name__ == "__main__":
    main()
