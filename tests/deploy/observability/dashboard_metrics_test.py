#!/usr/bin/python3
"""Keeps the Grafana dashboard and the Prometheus alert rules honest against
the real binaries.

Usage:
  dashboard_metrics_test.py --daemon BIN --coordinator BIN --worker BIN
                            [--prometheus PATH] [--promtool PATH] [--timeout S]
                            [--dashboard JSON] [--alerts YAML]
(--dashboard and --alerts default to deploy/grafana/asymcache.json and
deploy/prometheus/alerts.yaml.)

On 127.0.0.1, with ports chosen by the kernel (--listen=...:0, read back from
each binary's "READY grpc=<port> metrics=<port>" line):
  1. `promtool check rules` on every PromQL expression of
     deploy/grafana/asymcache.json (Grafana variables substituted): it parses;
  2. starts an asymcache-coordinator, two asymcache-daemons (host pools; roles
     prefill and decode) and an asymcache-worker beside each (tiny model, CPU
     backend), all registered with the coordinator, and a real Prometheus
     scraping the five /metrics endpoints every second with
     deploy/prometheus/alerts.yaml loaded (jobs named as in
     deploy/prometheus/prometheus.yml);
  3. runs Generate calls through the coordinator (Python stubs generated here
     from proto/asymcache/v1 with grpc_tools): split prefill -> decode; one
     warm-up call, then (once Prometheus has stored the series it created)
     the same prompt twice (the second hits the cache) and another;
  4. scrapes every /metrics endpoint and checks that EVERY metric name read by
     a dashboard query, a dashboard variable or a rule (as Prometheus parsed
     it, from /api/v1/rules) is a sample name in some exposition (histograms
     are exposed as NAME_bucket/_sum/_count only: a bare histogram name, or
     _bucket of a non-histogram, is an error), a series Prometheus makes
     itself (up, scrape_*) or a recording rule of alerts.yaml; and that every
     label a selector matches on exists on that metric (job and instance are
     target labels);
  5. evaluates every dashboard query in Prometheus: no error, at least one
     series, at least one finite value (the panel would show data);
  6. waits until every rule has been evaluated: health ok, and no alert
     pending or firing on this healthy cluster; then SIGKILLs the decode
     daemon and waits for AsymCacheDaemonDown to go pending for it.
Exit 0 "PASS", 1 "FAIL: ..." with every problem found and the tails of the
logs, 77 "SKIP: ..." when prometheus or promtool is not installed, 2 for bad
usage. Everything is bounded by --timeout (default 100 s); children die with
this script (PR_SET_PDEATHSIG) and are stopped on every exit path.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "services"))
import promql_names  # noqa: E402
from prometheus_scrape import (  # noqa: E402  (process and HTTP helpers)
    CheckFailed, Child, EXIT_SKIPPED, free_port, http_get, tail, wait_until)

DASHBOARD = os.path.join(REPO, "deploy", "grafana", "asymcache.json")
ALERTS = os.path.join(REPO, "deploy", "prometheus", "alerts.yaml")

# Job names of deploy/prometheus/prometheus.yml (the alert rules select on them).
JOB_COORDINATOR = "asymcache-coordinator"
JOB_DAEMON = "asymcache-daemon"
JOB_WORKER = "asymcache-worker"

# Series Prometheus writes itself for every target or rule.
SYNTHETIC_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                    "scrape_samples_post_metric_relabeling", "scrape_series_added",
                    "ALERTS", "ALERTS_FOR_STATE"}
TARGET_LABELS = {"job", "instance"}
# $__rate_interval in the dashboard: every Generate of this test falls inside it.
RATE_WINDOW = "30s"
READY_LINE = re.compile(r"READY grpc=(\d+) metrics=(\d+)")
PROMPT_TOKENS = 200      # 12.5 blocks of the tiny model: full blocks to hit, a partial tail
MAX_NEW_TOKENS = 8
SCRAPES_SETTLE_S = 2.5   # two and a half scrape intervals (1 s)


class Cluster:
    """The processes of the test, stopped in reverse order of start."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.children = []
        self.shm_names = []

    def start(self, name, argv):
        child = Child(name, argv, os.path.join(self.workdir, f"{name}.log"))
        self.children.append(child)
        return child

    def ready_ports(self, child, deadline):
        """(grpc port, metrics port) from the child's READY line."""
        def attempt():
            child.check_running()
            with open(child.log_path, errors="replace") as f:
                match = READY_LINE.search(f.read())
            return (int(match.group(1)), int(match.group(2))) if match else None
        return wait_until(deadline, f"{child.name} to print its READY line", 0.05, attempt)

    def stop_all(self):
        for child in reversed(self.children):
            child.stop(grace_s=5.0)
        for name in self.shm_names:  # a SIGKILLed daemon leaves its pool behind
            try:
                os.unlink("/dev/shm" + name)
            except FileNotFoundError:
                pass


def supports_flag(binary, flag):
    """Whether BINARY's --help lists FLAG (transport security flags arrive with
    issue #9's --plaintext; the test runs on builds with and without them)."""
    result = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=10)
    return flag.lstrip("-") in result.stdout.decode(errors="replace")


# ---- 1. the dashboard's expressions parse -----------------------------------
def check_dashboard_syntax(promtool, dashboard, workdir):
    expressions = promql_names.dashboard_expressions(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_expression_{i}",
         "expr": promql_names.substitute_grafana_variables(expr, RATE_WINDOW)}
        for i, (_, expr) in enumerate(expressions)]}]}
    path = os.path.join(workdir, "dashboard_rules.json")  # JSON is YAML
    with open(path, "w") as f:
        json.dump(rules, f)
    result = subprocess.run([promtool, "check", "rules", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=30)
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")
        where = "\n".join(f"  dashboard_expression_{i} = {w}: {e}"
                          for i, (w, e) in enumerate(expressions))
        raise CheckFailed(f"promtool rejects a dashboard expression:\n{output}\n{where}")
    print(f"dashboard: {len(expressions)} expressions parse (promtool check rules)", flush=True)
    return expressions


# ---- 3. Generate through the coordinator ------------------------------------
def generate_stubs(workdir):
    out = os.path.join(workdir, "gen")
    os.makedirs(out)
    protos = [os.path.join(REPO, "proto", "asymcache", "v1", name) for name in ("types.proto", "worker.proto")]
    result = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.join(REPO, 'proto')}",
                             f"--python_out={out}", f"--grpc_python_out={out}", *protos],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if result.returncode != 0:
        raise CheckFailed(f"grpc_tools.protoc failed:\n{result.stdout.decode(errors='replace')}")
    sys.path.insert(0, out)


def run_generates(coordinator_address, deadline):
    import grpc
    from asymcache.v1 import worker_pb2, worker_pb2_grpc

    channel = grpc.insecure_channel(coordinator_address)
    stub = worker_pb2_grpc.WorkerStub(channel)

    def generate(prompt):
        request = worker_pb2.GenerateRequest(prompt_tokens=prompt, max_new_tokens=MAX_NEW_TOKENS,
                                             salt="observability-test")
        tokens, stats = [], None
        for reply in stub.Generate(request, timeout=30):
            tokens.extend(reply.tokens)
            if reply.finish_reason:
                stats = reply.stats
        return tokens, stats

    shared = [(7 * i + 3) % 500 + 1 for i in range(PROMPT_TOKENS)]
    other = [(11 * i + 5) % 500 + 1 for i in range(PROMPT_TOKENS)]
    warm_up = [(13 * i + 1) % 500 + 1 for i in range(PROMPT_TOKENS)]

    def call(prompt):
        try:
            return generate(prompt)
        except grpc.RpcError as e:
            raise CheckFailed(f"Generate through the coordinator: {e.code().name}: {e.details()}")

    # Members register within a heartbeat: UNAVAILABLE (no worker on the
    # routed daemon yet) is retried until the deadline.
    def first():
        try:
            return generate(warm_up)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise CheckFailed(f"Generate through the coordinator: {e.code().name}: {e.details()}")
    wait_until(deadline, "a Generate through the coordinator to succeed", 0.2, first)
    # Labeled series (an RPC method's histogram, a route reason) appear at
    # their first event. Let Prometheus store them before the measured
    # requests: a series first scraped with its final value has no increase
    # in any window, and rate() of it is 0.
    time.sleep(SCRAPES_SETTLE_S)
    tokens1, _ = call(shared)
    tokens2, stats2 = call(shared)
    call(other)
    channel.close()
    if len(tokens1) != MAX_NEW_TOKENS or tokens1 != tokens2:
        raise CheckFailed(f"Generate: {tokens1} then {tokens2} for the same prompt")
    if stats2.hit_tokens <= 0:
        raise CheckFailed(f"the repeated prompt hit no cached tokens: {stats2}")
    print(f"generate: 4 requests through the coordinator; the repeated prompt hit "
          f"{stats2.hit_tokens} of {stats2.prompt_tokens} tokens", flush=True)


# ---- 4. every name exists ---------------------------------------------------
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')


class Exposition:
    """Sample names (with their label names) and metric families of /metrics bodies."""

    def __init__(self):
        self.labels = {}       # sample name -> set of label names seen
        self.types = {}        # family name -> TYPE
        self.sources = {}      # sample name -> endpoints exposing it

    def add(self, source, body):
        for line in body.splitlines():
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split(None, 3)
                self.types[family] = kind.strip()
                continue
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if not match:
                raise CheckFailed(f"{source}: unparsable exposition line: {line}")
            name = match.group(1)
            labels = set(_LABEL.findall(match.group(3) or ""))
            self.labels.setdefault(name, set()).update(labels)
            self.sources.setdefault(name, set()).add(source)

    def problem(self, name, matchers):
        """None when NAME (with these matchers) can return data, else why not."""
        if name not in self.labels:
            family = self.types.get(name)
            if family == "histogram":
                return (f"{name} is a histogram: Prometheus stores only {name}_bucket, "
                        f"{name}_sum and {name}_count")
            return f"{name} is not exposed by any endpoint"
        for suffix in ("_bucket",):
            if name.endswith(suffix) and self.types.get(name[:-len(suffix)]) != "histogram":
                return f"{name}: {name[:-len(suffix)]} is not a histogram"
        for label, _, _ in matchers:
            if label not in TARGET_LABELS and label != "__name__" and label not in self.labels[name]:
                return (f"{name} has no label '{label}' (it has: "
                        f"{', '.join(sorted(self.labels[name])) or 'none'})")
        return None


def check_names(where_exprs, exposition, recorded):
    problems = []
    checked = set()
    for where, expr in where_exprs:
        for selector in promql_names.selectors(expr):
            if selector.name is None:
                problems.append(f"{where}: a selector without a metric name: {expr}")
                continue
            if selector.name in SYNTHETIC_SERIES or selector.name in recorded:
                continue
            checked.add(selector.name)
            why = exposition.problem(selector.name, selector.matchers)
            if why:
                problems.append(f"{where}: {why}")
    return checked, problems


# ---- 5./6. Prometheus -------------------------------------------------------
class PrometheusApi:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, body = http_get(url, timeout=5)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise CheckFailed(f"GET {path} {params}: HTTP {status}: {body[:500]}")
        return reply["data"]


def write_prometheus_config(workdir, targets, alerts):
    path = os.path.join(workdir, "prometheus.yml")
    with open(path, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {json.dumps(os.path.abspath(alerts))}\n"
                "scrape_configs:\n")
        for job, addresses in targets.items():
            f.write(f"  - job_name: {job}\n    static_configs:\n"
                    f"      - targets: {json.dumps(addresses)}\n")
    return path


def wait_targets_up(api, expected, deadline):
    state = [""]

    def attempt():
        active = api.get("/api/v1/targets")["activeTargets"]
        state[0] = "; ".join(f"{t['labels']['job']} {t['scrapeUrl']} {t['health']} {t['lastError']!r}"
                             for t in active)
        up = sorted(t["labels"]["instance"] for t in active if t["health"] == "up")
        return up if up == sorted(expected) else None
    try:
        wait_until(deadline, "Prometheus to scrape every target", 0.2, attempt)
    except CheckFailed as e:
        raise CheckFailed(f"{e}; targets: {state[0]}")


def evaluate_dashboard(api, expressions):
    problems = []
    for where, expr in expressions:
        query = promql_names.substitute_grafana_variables(expr, RATE_WINDOW)
        try:
            result = api.get("/api/v1/query", query=query)["result"]
        except CheckFailed as e:
            problems.append(f"{where}: {e}")
            continue
        values = [float(series["value"][1]) for series in result]
        if not values:
            problems.append(f"{where}: no series for {query}")
        elif not any(math.isfinite(v) for v in values):
            problems.append(f"{where}: no finite value ({values}) for {query}")
    return problems


def rules_of(api):
    return [rule for group in api.get("/api/v1/rules")["groups"] for rule in group["rules"]]


def wait_rules_evaluated(api, deadline):
    def attempt():
        rules = rules_of(api)
        pending = [r["name"] for r in rules if r.get("lastEvaluation", "").startswith("0001-")]
        return None if pending or not rules else rules
    return wait_until(deadline, "every rule to be evaluated", 0.2, attempt)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon", required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    parser.add_argument("--promtool", default="/usr/bin/promtool")
    parser.add_argument("--timeout", type=float, default=100.0)
    parser.add_argument("--dashboard", default=DASHBOARD)
    parser.add_argument("--alerts", default=ALERTS)
    args = parser.parse_args()
    for binary in (args.daemon, args.coordinator, args.worker):
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            parser.error(f"{binary} is not an executable file")
    for tool in (args.prometheus, args.promtool):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            print(f"SKIP: {tool} is not an executable file (Debian package prometheus)", flush=True)
            return EXIT_SKIPPED

    def on_signal(signum, _frame):
        raise CheckFailed(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workdir = tempfile.mkdtemp(prefix="asymcache_observability_")
    cluster = Cluster(workdir)
    failure = None
    try:
        run(args, workdir, cluster)
    except CheckFailed as e:
        failure = str(e)
    except Exception as e:  # a bug here must still clean up and fail clearly
        failure = f"{type(e).__name__}: {e}"
    finally:
        try:
            cluster.stop_all()
        except CheckFailed as e:  # a signal during cleanup: keep cleaning
            failure = failure or str(e)
            cluster.stop_all()
        if failure is not None:
            for child in cluster.children:
                sys.stdout.write(f"--- {child.name} log (tail) ---\n{tail(child.log_path, 15)}")
        shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        print(f"FAIL: {failure}", flush=True)
        return 1
    print("PASS: every metric the dashboard and the alert rules read is exposed, every dashboard "
          "query returns data, the rules evaluate and AsymCacheDaemonDown goes pending on a kill",
          flush=True)
    return 0


def run(args, workdir, cluster):
    deadline = time.monotonic() + args.timeout
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    expressions = check_dashboard_syntax(args.promtool, dashboard, workdir)
    generate_stubs(workdir)

    security = ["--plaintext"] if supports_flag(args.daemon, "--plaintext") else []
    loopback = ["--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0"]
    coordinator = cluster.start("coordinator", [args.coordinator, *security, *loopback,
                                                "--shutdown-grace=2s"])
    coordinator_grpc, coordinator_metrics = cluster.ready_ports(coordinator, deadline)
    coordinator_address = f"127.0.0.1:{coordinator_grpc}"

    metrics = {JOB_COORDINATOR: [f"127.0.0.1:{coordinator_metrics}"], JOB_DAEMON: [], JOB_WORKER: []}
    daemons = {}
    for member, role in (("daemon-a", "prefill"), ("daemon-b", "decode")):
        shm = f"/asymcache-observability-{os.getpid()}-{member}"
        cluster.shm_names.append(shm)
        daemon = cluster.start(member, [
            args.daemon, *security, *loopback, "--backend=host", "--pool-bytes=16MiB",
            f"--shm-name={shm}", f"--member-id={member}", f"--role={role}",
            f"--coordinators={coordinator_address}", "--shutdown-grace=2s"])
        grpc_port, metrics_port = cluster.ready_ports(daemon, deadline)
        daemons[member] = (daemon, grpc_port, f"127.0.0.1:{metrics_port}")
        metrics[JOB_DAEMON].append(f"127.0.0.1:{metrics_port}")
    for member, daemon_member, role in (("worker-a", "daemon-a", "prefill"),
                                        ("worker-b", "daemon-b", "decode")):
        worker = cluster.start(member, [
            args.worker, *security, *loopback, f"--daemon=127.0.0.1:{daemons[daemon_member][1]}",
            "--cpu-threads=1", f"--role={role}", f"--member-id={member}",
            f"--daemon-member-id={daemon_member}", f"--coordinators={coordinator_address}",
            "--shutdown-grace=2s"])
        _, metrics_port = cluster.ready_ports(worker, deadline)
        metrics[JOB_WORKER].append(f"127.0.0.1:{metrics_port}")

    web_port = free_port()
    prometheus = cluster.start("prometheus", [
        args.prometheus, f"--config.file={write_prometheus_config(workdir, metrics, args.alerts)}",
        f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"])
    api = PrometheusApi(web_port)
    all_targets = [address for addresses in metrics.values() for address in addresses]
    wait_until(deadline, "Prometheus to answer", 0.1,
               lambda: prometheus.check_running() or api.get("/api/v1/status/buildinfo"))
    wait_targets_up(api, all_targets, deadline)
    print(f"prometheus: {len(all_targets)} targets up", flush=True)

    run_generates(coordinator_address, deadline)

    exposition = Exposition()
    for job, addresses in metrics.items():
        for address in addresses:
            status, body = http_get(f"http://{address}/metrics", timeout=5)
            if status != 200:
                raise CheckFailed(f"{job} {address}/metrics answered HTTP {status}")
            exposition.add(f"{job} {address}", body)

    # Every counter increase of the Generate calls is stored.
    time.sleep(SCRAPES_SETTLE_S)
    rules = wait_rules_evaluated(api, deadline)
    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    rule_exprs = [(f"{rule['type']} rule {rule['name']}", rule["query"]) for rule in rules]
    checked, problems = check_names(expressions + rule_exprs, exposition, recorded)
    print(f"names: {len(checked)} metric names read by {len(expressions)} dashboard and "
          f"{len(rule_exprs)} rule expressions, checked against "
          f"{len(exposition.labels)} exposed sample names", flush=True)

    problems += evaluate_dashboard(api, expressions)

    for rule in rules:
        if rule.get("health") != "ok":
            problems.append(f"{rule['type']} rule {rule['name']}: health {rule.get('health')}: "
                            f"{rule.get('lastError')}")
        if rule["type"] == "alerting" and rule.get("state") != "inactive":
            problems.append(f"alert {rule['name']} is {rule.get('state')} on a healthy cluster: "
                            f"{json.dumps(rule.get('alerts'))}")
    if problems:
        raise CheckFailed(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    print(f"prometheus: {len(expressions)} dashboard queries return data; {len(rules)} rules "
          f"evaluate, no alert pending on the healthy cluster", flush=True)

    # A daemon dies: its alert must notice.
    decode_daemon, _, decode_metrics = daemons["daemon-b"]
    decode_daemon.process.kill()
    decode_daemon.process.wait()

    def daemon_down_pending():
        for rule in rules_of(api):
            if rule["name"] == "AsymCacheDaemonDown":
                for alert in rule.get("alerts", []):
                    if alert["labels"].get("instance") == decode_metrics and alert["state"] == "pending":
                        return alert
        return None
    wait_until(deadline, "AsymCacheDaemonDown to go pending for the killed daemon", 0.2,
               daemon_down_pending)
    print(f"alerts: AsymCacheDaemonDown pending for {decode_metrics} after SIGKILL", flush=True)


if __name__ == "__main__":
    sys.exit(main())
