#!/usr/bin/env python3
"""Checks of the Helm chart helm/asymcache, one case per ctest test.

  lint_default, lint_split          helm lint --strict, default values / the
                                    multi-GPU split values (ci/multi-gpu-split-values.yaml);
                                    lint_default also checks that every field of
                                    values.yaml has a comment above it
  template_default, template_split  helm template, every manifest validated
                                    (validate_manifests.mjs: Kubernetes schemas,
                                    unknown fields, API-server rules, references),
                                    then what the chart promises for those values
  values_schema_rejects             bad values: values.schema.json (or the
                                    templates) make helm lint / helm template fail,
                                    naming the value
  validator_rejects                 broken renders: the validator finds each fault
  rendered_cluster                  the default render's config files and container
                                    arguments run by the real binaries on 127.0.0.1
                                    (ports moved to free ones, coordinator addresses
                                    to the local replicas): every coordinator replica
                                    sees the pod's daemon and worker register, each
                                    process answers the rendered gRPC health probe
                                    SERVING, a Generate through each replica returns
                                    the same tokens (the second hitting the first's
                                    blocks), and all stop cleanly on SIGTERM

helm and the schema packages are the ones fetch_tools.sh put under
BUILD_DIR/tools. The chart is copied into a scratch directory first; its
dashboards/asymcache.json, when the chart lacks one, is taken from
deploy/grafana/asymcache.json (what packaging the chart must do) or, while that
does not exist yet, is a minimal stand-in (said so on stderr).
Exit status 0 = pass, 1 = a check failed (each failure printed).
"""

import argparse
import copy
import filecmp
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HELM_DIR = "helm-3.17.2"
RELEASE = "asymcache"
NAMESPACE = "serving"
SPLIT_VALUES = "ci/multi-gpu-split-values.yaml"
HERE = os.path.dirname(os.path.abspath(__file__))


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


class Chart:
    """A scratch copy of the chart plus the tools that lint, render and validate it."""

    def __init__(self, build_dir, chart_src, repo_root, scratch):
        tools = os.path.join(build_dir, "tools")
        self.helm = os.path.join(tools, HELM_DIR, "helm")
        check(os.access(self.helm, os.X_OK), f"{self.helm} missing: run fetch_tools.sh first")
        node_dir = os.path.join(tools, "node")
        check(os.path.isdir(os.path.join(node_dir, "node_modules")),
              f"{node_dir}/node_modules missing: run fetch_tools.sh first")
        # The validator resolves its packages from its own directory. Replaced
        # atomically: cases running in parallel may be reading the previous copy.
        self.validator = os.path.join(node_dir, "validate_manifests.mjs")
        staged = f"{self.validator}.{os.getpid()}"
        shutil.copyfile(os.path.join(HERE, "validate_manifests.mjs"), staged)
        os.replace(staged, self.validator)
        self.scratch = scratch
        self.path = os.path.join(scratch, "asymcache")
        shutil.copytree(chart_src, self.path, symlinks=False)
        dashboard = os.path.join(self.path, "dashboards", "asymcache.json")
        source = os.path.join(repo_root, "deploy", "grafana", "asymcache.json")
        # A chart copy of the dashboard must not drift from its source.
        self.dashboard_drift = (os.path.exists(dashboard) and os.path.exists(source)
                                and not filecmp.cmp(dashboard, source, shallow=False))
        if not os.path.exists(dashboard):
            os.makedirs(os.path.dirname(dashboard), exist_ok=True)
            if os.path.exists(source):
                shutil.copyfile(source, dashboard)
            else:
                print("note: neither the chart nor deploy/grafana has asymcache.json yet; "
                      "a minimal stand-in dashboard is used", file=sys.stderr)
                with open(dashboard, "w") as f:
                    json.dump({"title": "AsymCache (stand-in)", "panels": []}, f)

    def helm_run(self, args):
        return subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=120)

    def value_args(self, values_files=(), sets=()):
        args = []
        for v in values_files:
            args += ["-f", os.path.join(self.path, v)]
        for s in sets:
            args += ["--set", s]
        return args

    def lint(self, values_files=(), sets=()):
        return self.helm_run(["lint", "--strict", self.path, *self.value_args(values_files, sets)])

    def template(self, values_files=(), sets=(), release=RELEASE):
        return self.helm_run(["template", release, self.path, "--namespace", NAMESPACE,
                              *self.value_args(values_files, sets)])

    def validate(self, path, dump_json=None):
        args = ["node", self.validator]
        if dump_json:
            args += ["--dump-json", dump_json]
        return subprocess.run(args + [path], capture_output=True, text=True, timeout=120)

    def render_validated(self, name, values_files=(), sets=(), release=RELEASE):
        """helm template + validation; the documents as parsed JSON."""
        result = self.template(values_files, sets, release)
        check(result.returncode == 0, f"helm template failed:\n{result.stderr}")
        rendered = os.path.join(self.scratch, f"{name}.yaml")
        with open(rendered, "w") as f:
            f.write(result.stdout)
        dump = os.path.join(self.scratch, f"{name}.json")
        validation = self.validate(rendered, dump)
        print(validation.stdout, end="")
        check(validation.returncode == 0, f"{rendered}: manifests invalid:\n{validation.stderr}")
        with open(dump) as f:
            return json.load(f)


# --- helpers over rendered documents ------------------------------------------

def find(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise CheckFailed(f"{kind}/{name} is not rendered (have: "
                      + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs) + ")")


def containers_of(sts):
    spec = sts["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def config_file(docs, key):
    return find(docs, "ConfigMap", f"{RELEASE}-config")["data"][key]


def yaml_list(text, key):
    """The items of a top-level `key:` block sequence in a flat YAML file."""
    lines = text.splitlines()
    start = lines.index(f"{key}:")
    items = []
    for line in lines[start + 1:]:
        if not line.startswith("- "):
            break
        items.append(line[2:].strip())
    return items


def flag(container, name):
    """The value of --name=VALUE in a container's args (None when absent)."""
    for a in container.get("args", []):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def expected_coordinators(docs, replicas):
    sts = find(docs, "StatefulSet", f"{RELEASE}-coordinator")
    check(sts["spec"]["replicas"] == replicas, f"coordinator replicas {sts['spec']['replicas']}, want {replicas}")
    peers = sts["spec"]["serviceName"]
    port = containers_of(sts)["coordinator"]["ports"][0]["containerPort"]
    return [f"{RELEASE}-coordinator-{i}.{peers}.{NAMESPACE}.svc.cluster.local:{port}" for i in range(replicas)]


def check_worker_pods(docs, role, replicas, cuda, tls, coordinators):
    name = f"{RELEASE}-worker-{role}"
    sts = find(docs, "StatefulSet", name)
    spec = sts["spec"]
    check(spec["replicas"] == replicas, f"{name}: replicas {spec['replicas']}, want {replicas}")
    pod = spec["template"]["spec"]
    containers = containers_of(sts)
    daemon, worker = containers["daemon"], containers["worker"]
    check(daemon.get("restartPolicy") == "Always" and daemon in pod["initContainers"],
          f"{name}: the daemon is not a native sidecar")
    service = find(docs, "Service", spec["serviceName"])
    check(service["spec"].get("clusterIP") == "None", f"{name}: governing Service is not headless")
    domain = f"$(POD_NAME).{spec['serviceName']}.{NAMESPACE}.svc.cluster.local"
    check(flag(daemon, "advertise-address") == f"{domain}:{daemon['ports'][0]['containerPort']}",
          f"{name}: daemon advertises {flag(daemon, 'advertise-address')}, not its pod DNS name")
    check(flag(worker, "advertise-address") == f"{domain}:{worker['ports'][0]['containerPort']}",
          f"{name}: worker advertises {flag(worker, 'advertise-address')}, not its pod DNS name")
    check(flag(daemon, "role") == role and flag(worker, "role") == role, f"{name}: --role is not {role}")
    check(flag(worker, "daemon-member-id") == flag(daemon, "member-id") == "$(POD_NAME)",
          f"{name}: the worker does not name its own daemon's member id")
    # Both containers map the pool: one /dev/shm (cpu), one GPU claim and PID namespace (cuda).
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in (daemon, worker):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        check(volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir", {}).get("medium") == "Memory",
              f"{name}/{c['name']}: /dev/shm is not the pod's memory emptyDir")
        claims = [x["name"] for x in c.get("resources", {}).get("claims", [])]
        check((claims == ["gpu"]) == cuda, f"{name}/{c['name']}: GPU claims {claims} with cuda={cuda}")
        args = c["args"]
        check(("--plaintext" in args) != tls, f"{name}/{c['name']}: --plaintext with tls={tls}")
        check(any(a.startswith("--tls-cert=") for a in args) == tls, f"{name}/{c['name']}: TLS flags with tls={tls}")
        # Workers (not daemons) trust the coordinator's forwarded salt: --trusted-peers with TLS.
        trusted = [a for a in args if a.startswith("--trusted-peers=")]
        want_trusted = ["--trusted-peers=asymcache-component"] if tls and c is worker else []
        check(trusted == want_trusted, f"{name}/{c['name']}: {trusted}, want {want_trusted}")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            if tls:
                command = probe.get("exec", {}).get("command", [])
                want = ["asymcachectl", "health", "--tls-cert=", "--tls-key=", "--tls-ca="]
                check(command[:2] == want[:2] and
                      all(any(a.startswith(w) for a in command) for w in want[2:]) and
                      any(a.startswith("--target=127.0.0.1:") for a in command),
                      f"{name}/{c['name']}: {kind} with TLS is not asymcachectl health over TLS: {probe}")
            else:
                check("grpc" in probe, f"{name}/{c['name']}: {kind} {probe}")
        check(c["securityContext"].get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: may escalate")
    check(pod["securityContext"].get("runAsNonRoot") is True, f"{name}: pod may run as root")
    check(bool(pod.get("shareProcessNamespace")) == cuda, f"{name}: shareProcessNamespace with cuda={cuda}")
    for key in ("daemon.yaml", "worker.yaml"):
        listed = yaml_list(config_file(docs, key), "coordinators")
        check(listed == coordinators, f"{key}: coordinators {listed}, want {coordinators}")
    find(docs, "PodDisruptionBudget", name)


# --- cases --------------------------------------------------------------------

def undocumented_values(values_path):
    """Keys of values.yaml with no comment line right above them (the quantities
    under a resources.requests / resources.limits block excepted)."""
    with open(values_path) as f:
        lines = f.read().splitlines()
    stack, missing = [], []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        keys = [k for _, k in stack] + [m.group(2)]
        stack.append((indent, m.group(2)))
        if len(keys) >= 3 and keys[-3] == "resources" and keys[-2] in ("requests", "limits"):
            continue
        if i == 0 or not lines[i - 1].strip().startswith("#"):
            missing.append(".".join(keys))
    return missing


def case_lint_default(chart, _):
    result = chart.lint()
    print(result.stdout, result.stderr, sep="")
    check(result.returncode == 0, "helm lint --strict failed with the default values")
    missing = undocumented_values(os.path.join(chart.path, "values.yaml"))
    check(not missing, "values.yaml fields without a comment above them: " + ", ".join(missing))


def case_lint_split(chart, _):
    result = chart.lint([SPLIT_VALUES])
    print(result.stdout, result.stderr, sep="")
    check(result.returncode == 0, f"helm lint --strict failed with {SPLIT_VALUES}")


def case_template_default(chart, _):
    docs = chart.render_validated("default")
    kinds = sorted(d["kind"] for d in docs)
    check("ResourceClaimTemplate" not in kinds and "ServiceMonitor" not in kinds,
          f"optional objects rendered by default: {kinds}")
    coordinators = expected_coordinators(docs, 2)
    check_worker_pods(docs, "both", 2, cuda=False, tls=False, coordinators=coordinators)
    for role in ("prefill", "decode"):
        check(not any(d["metadata"]["name"] == f"{RELEASE}-worker-{role}" for d in docs),
              f"role {role} rendered while disabled")
    daemon_yaml = config_file(docs, "daemon.yaml")
    for line in ("backend: host", "model: tiny", "policy: asym", "pool-bytes: 1GiB"):
        check(line in daemon_yaml.splitlines(), f"daemon.yaml lacks '{line}':\n{daemon_yaml}")
    check("backend: cpu" in config_file(docs, "worker.yaml").splitlines(), "worker.yaml: backend is not cpu")
    find(docs, "PodDisruptionBudget", f"{RELEASE}-coordinator")
    find(docs, "Service", f"{RELEASE}-coordinator")
    # The longest release name helm allows (53) still gives valid object names, every role on.
    long_release = "a-release-name-of-fifty-three-characters-for-a-charts"
    check(len(long_release) == 53, "long_release must be 53 characters")
    long_docs = chart.render_validated("long-release", sets=["roles.prefill.enabled=true", "roles.decode.enabled=true"],
                                       release=long_release)
    names = sorted(d["metadata"]["name"] for d in long_docs if d["kind"] == "StatefulSet")
    check(len(names) == 4, f"StatefulSets with every role on: {names}")


def case_template_split(chart, _):
    docs = chart.render_validated("split", [SPLIT_VALUES])
    coordinators = expected_coordinators(docs, 3)
    for role in ("prefill", "decode"):
        check_worker_pods(docs, role, 4, cuda=True, tls=True, coordinators=coordinators)
    check(not any(d["metadata"]["name"] == f"{RELEASE}-worker-both" for d in docs), "role both rendered")
    claim = find(docs, "ResourceClaimTemplate", f"{RELEASE}-gpu")
    request = claim["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    check(request["deviceClassName"] == "gpu.nvidia.com" and request["count"] == 1, f"GPU request {request}")
    monitor = find(docs, "ServiceMonitor", RELEASE)
    ports = sorted(e["port"] for e in monitor["spec"]["endpoints"])
    check(ports == ["daemon-metrics", "metrics", "worker-metrics"], f"ServiceMonitor endpoints {ports}")
    dashboard = find(docs, "ConfigMap", f"{RELEASE}-dashboard")
    json.loads(dashboard["data"]["asymcache.json"])
    check(not chart.dashboard_drift,
          "helm/asymcache/dashboards/asymcache.json differs from deploy/grafana/asymcache.json: copy it again")
    coordinator = containers_of(find(docs, "StatefulSet", f"{RELEASE}-coordinator"))["coordinator"]
    volumes = {v["name"]: v for v in find(docs, "StatefulSet", f"{RELEASE}-coordinator")["spec"]["template"]["spec"]["volumes"]}
    check(volumes["tls"]["secret"]["secretName"] == "asymcache-tls", "TLS secret not mounted")
    check("--tls-ca=/etc/asymcache/tls/ca.crt" in coordinator["args"], "coordinator lacks --tls-ca")
    check("--trusted-peers=asymcache-component" in coordinator["args"],
          "coordinator lacks --trusted-peers (it refuses to start with TLS without them)")
    grpc_port = next(p["containerPort"] for p in coordinator["ports"] if p["name"] == "grpc")
    check(coordinator["readinessProbe"].get("exec", {}).get("command") ==
          ["asymcachectl", "health", f"--target=127.0.0.1:{grpc_port}", "--timeout=2s",
           "--tls-cert=/etc/asymcache/tls/tls.crt", "--tls-key=/etc/asymcache/tls/tls.key",
           "--tls-ca=/etc/asymcache/tls/ca.crt"],
          f"coordinator readiness probe with TLS: {coordinator['readinessProbe']}")
    daemon_yaml = config_file(docs, "daemon.yaml").splitlines()
    for line in ("backend: cuda", "model: llama-3-8b", "pool-bytes: 48GiB"):
        check(line in daemon_yaml, f"daemon.yaml lacks '{line}'")


# (values, --set arguments, text the failure must contain)
BAD_VALUES = [
    ([], ["coordinator.replicas=-1"], "coordinator.replicas: Must be greater than or equal to 1"),
    ([], ["roles.both.replicas=-3"], "roles.both.replicas: Must be greater than or equal to 0"),
    ([], ["backend=tpu"], 'backend must be one of the following: "cpu", "cuda"'),
    ([], ["policy=random"], "policy must be one of the following"),
    ([], ["pool.bytes=lots"], "pool.bytes: Does not match pattern"),
    ([], ["sharedMemory.sizeLimit=big"], "sharedMemory.sizeLimit: Does not match pattern"),
    ([], ["roles.prefill.enabled=true"], "roles.decode.enabled does not match: true"),
    ([], ["roles.both.enabled=false"], "roles.both.enabled does not match: true"),
    ([], ["tls.enabled=true"], "tls.existingSecret: String length must be greater than or equal to 1"),
    ([], ["tls.enabled=true", "tls.existingSecret=s", "tls.trustedPeers[0]=a\\,b"],
     "tls.trustedPeers.0: Does not match pattern"),
    ([], ["daemon.config.listen=0.0.0.0:1"], 'daemon.config: Property name of "listen" does not match'),
    ([], ["worker.config.max_running=4"], 'worker.config: Property name of "max_running" does not match'),
    ([], ["coordinatr.replicas=3"], "Additional property coordinatr is not allowed"),
    ([], ["model.name=gpt-5"], 'model.name must be one of the following: "tiny"'),
    ([], ["model.dir=/models/x"], "model.shape: num_layers is required"),
    ([], ["ports.daemon.grpc=70000"], "ports.daemon.grpc: Must be less than or equal to 65535"),
    ([], ["image.pullPolicy=Sometimes"], "image.pullPolicy must be one of the following"),
    ([SPLIT_VALUES], ["coordinator.extraArgs={plaintext}"], "coordinator.extraArgs.0: Does not match pattern"),
]


def case_values_schema_rejects(chart, _):
    failures = []
    for values, sets, expected in BAD_VALUES:
        for command in (chart.lint, chart.template):
            result = command(values, sets)
            output = result.stdout + result.stderr
            if result.returncode == 0 or expected not in output:
                failures.append(f"{command.__name__} {values} --set {sets}: exit {result.returncode}, "
                                f"wanted a failure saying '{expected}'; got:\n{output}")
    # The dashboard ConfigMap needs the dashboard file inside the chart.
    os.remove(os.path.join(chart.path, "dashboards", "asymcache.json"))
    result = chart.template(sets=["grafana.dashboard.enabled=true"])
    if result.returncode == 0 or "the chart has no dashboards/asymcache.json" not in result.stderr:
        failures.append(f"dashboard without its file: exit {result.returncode}:\n{result.stderr}")
    with open(os.path.join(chart.path, "dashboards", "asymcache.json"), "w") as f:
        f.write("{not json")
    result = chart.template(sets=["grafana.dashboard.enabled=true"])
    if result.returncode == 0 or "dashboards/asymcache.json is not valid JSON" not in result.stderr:
        failures.append(f"dashboard with bad JSON: exit {result.returncode}:\n{result.stderr}")
    # And values that are fine pass (the cases above fail for their own reason).
    good = chart.lint(sets=["roles.prefill.enabled=true", "roles.decode.enabled=true",
                            "tls.enabled=true", "tls.existingSecret=s", "pool.fraction=0.5"])
    if good.returncode != 0:
        failures.append(f"valid values refused:\n{good.stdout}{good.stderr}")
    check(not failures, "\n\n".join(failures))
    print(f"{len(BAD_VALUES)} bad values refused by helm lint and helm template; dashboard faults refused")


def _mutations():
    """(description, mutate(docs), text the validator must print)."""

    def sts(docs, role="both"):
        return find(docs, "StatefulSet", f"{RELEASE}-worker-{role}")

    def worker(docs):
        return containers_of(sts(docs))["worker"]

    def m_unknown_field(docs):
        c = worker(docs)
        c["readinesProbe"] = c.pop("readinessProbe")

    def m_wrong_type(docs):
        worker(docs)["ports"][0]["containerPort"] = "50071"

    def m_missing_required(docs):
        del find(docs, "Service", f"{RELEASE}-coordinator")["spec"]["ports"][0]["port"]

    def m_unknown_kind(docs):
        docs.append({"apiVersion": "asymcache.io/v1", "kind": "CacheTier", "metadata": {"name": "x"}})

    def m_long_port_name(docs):
        worker(docs)["ports"][0]["name"] = "worker-grpc-endpoint"

    def m_selector(docs):
        sts(docs)["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "worker"

    def m_env_ref(docs):
        worker(docs)["args"].append("--member-id=$(POD_NAM)")

    def m_mount(docs):
        worker(docs)["volumeMounts"].append({"name": "weights", "mountPath": "/w"})

    def m_service_selector(docs):
        find(docs, "Service", f"{RELEASE}-coordinator")["spec"]["selector"]["app.kubernetes.io/component"] = "coord"

    def m_target_port(docs):
        find(docs, "Service", f"{RELEASE}-worker-both")["spec"]["ports"][0]["targetPort"] = "daemon-rpc"

    def m_service_name(docs):
        sts(docs)["spec"]["serviceName"] = f"{RELEASE}-workers"

    def m_configmap(docs):
        docs.remove(find(docs, "ConfigMap", f"{RELEASE}-config"))

    def m_label(docs):
        sts(docs)["metadata"]["labels"]["asymcache/role"] = "both/prefill"

    def m_pdb(docs):
        find(docs, "PodDisruptionBudget", f"{RELEASE}-coordinator")["spec"]["selector"]["matchLabels"]["x"] = "y"

    return [
        ("unknown field", m_unknown_field, "readinesProbe: unknown field"),
        ("wrong type", m_wrong_type, "containerPort must be integer"),
        ("missing required field", m_missing_required, "must have required property port"),
        ("unknown kind", m_unknown_kind, "unknown kind: no schema for asymcache.io/v1 CacheTier"),
        ("port name too long", m_long_port_name, "'worker-grpc-endpoint' is not a valid port name"),
        ("selector off the template", m_selector, "spec.selector: does not match the template's labels"),
        ("$(VAR) not in env", m_env_ref, "refers to $(POD_NAM), which is not in env"),
        ("mount of no volume", m_mount, "volume 'weights' is not defined"),
        ("Service selecting nothing", m_service_selector, "spec.selector: selects no rendered pod template"),
        ("Service targetPort of no container", m_target_port, "targetPort 'daemon-rpc' is no container port"),
        ("StatefulSet serviceName not rendered", m_service_name, f"Service '{RELEASE}-workers' is not rendered"),
        ("ConfigMap volume not rendered", m_configmap, f"ConfigMap '{RELEASE}-config' is not rendered"),
        ("bad label value", m_label, "bad label value 'both/prefill'"),
        ("PDB selecting nothing", m_pdb, "spec.selector: selects no rendered pod template"),
    ]


def case_validator_rejects(chart, _):
    docs = chart.render_validated("default-for-mutation")
    mutations = _mutations()
    paths = []
    for i, (_, mutate, _) in enumerate(mutations):
        broken = copy.deepcopy(docs)
        mutate(broken)
        # One JSON document per object (JSON is YAML), separated as helm separates them.
        paths.append(os.path.join(chart.scratch, f"broken-{i}.yaml"))
        with open(paths[-1], "w") as f:
            f.write("\n---\n".join(json.dumps(d) for d in broken))
    # One validator run, each file validated as a render of its own.
    result = subprocess.run(["node", chart.validator, "--each", *paths], capture_output=True, text=True, timeout=120)
    check(result.returncode == 1, f"validator exit {result.returncode} on broken renders:\n{result.stdout}{result.stderr}")
    failures = []
    for path, (what, _, expected) in zip(paths, mutations):
        found = [line for line in result.stdout.splitlines() if line.startswith(path + " ")]
        if not any(expected in line for line in found):
            failures.append(f"{what}: wanted '{expected}'; the validator said:\n" + "\n".join(found))
    check(not failures, "\n\n".join(failures))
    print(f"{len(mutations)} broken renders rejected by the validator")


# --- rendered_cluster -----------------------------------------------------------

class Process:
    """A binary started with its rendered arguments; READY line parsed."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        print(f"start {name}: {' '.join(argv)}", flush=True)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.grpc_port = None
        self.metrics_port = None

    def wait_ready(self, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"READY grpc=(\d+) metrics=(\d+)", line)
            if m:
                self.grpc_port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
        self.proc.kill()
        self.proc.wait()
        raise CheckFailed(f"{self.name} did not become ready (exit {self.proc.returncode}):\n{self.stderr()}")

    def stderr(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self, timeout_s=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise CheckFailed(f"{self.name} did not stop within {timeout_s}s of SIGTERM:\n{self.stderr()}")
        check(code == 0, f"{self.name} exited {code} after SIGTERM:\n{self.stderr()}")


def local_argv(binary, container, config_dir, pod_name, overrides):
    """The container's command line as run here: $(POD_NAME) expanded, the config
    file taken from config_dir, then the local overrides (later flags win)."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    help_text = help_text.stdout + help_text.stderr
    env = {e["name"]: pod_name for e in container.get("env", []) if e["name"] == "POD_NAME"}
    args = []
    for a in container["args"]:
        a = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
        a = a.replace("--config=/etc/asymcache/config/", f"--config={config_dir}/")
        if a == "--plaintext" and "plaintext" not in help_text:
            print(f"note: {os.path.basename(binary)} has no --plaintext flag yet (the TLS work adds it); "
                  "running without it", flush=True)
            continue
        args.append(a)
    return [binary, *args, *overrides]


def metric_value(port, name, labels):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = line[len(name) + 1:line.index("}")]
            if sorted(found.split(",")) == sorted(want.split(",")):
                return float(line.rsplit(" ", 1)[1])
    return None


def kill_all(processes):
    """SIGKILL (and reap) every process still running."""
    for p in processes:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def wait_for_pod_members(coordinator, daemon, worker, timeout_s=30):
    """Until `coordinator` counts the pod's daemon and worker as members (role both)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = [metric_value(coordinator.metrics_port, "asymcache_coordinator_members",
                               {"kind": k, "role": "both"}) for k in ("daemon", "worker")]
        if counts == [1.0, 1.0]:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"{coordinator.name}: members (daemon, worker) = {counts}, want (1, 1)\n"
                              f"coordinator:\n{coordinator.stderr()}\ndaemon:\n{daemon.stderr()}\n"
                              f"worker:\n{worker.stderr()}")
        time.sleep(0.2)


def python_stubs(repo_root, scratch):
    """Generated Python modules for asymcache.v1.Worker and grpc.health.v1 (the
    latter under another file path, so it does not shadow the installed grpc
    package), importable from the returned directory. Debian's grpc_tools.protoc
    first; protoc + grpc_python_plugin when its output does not load."""
    gen = os.path.join(scratch, "gen")
    health_dir = os.path.join(scratch, "proto", "asymcache_test_health")
    os.makedirs(health_dir)
    shutil.copyfile(os.path.join(repo_root, "tests", "services", "protos", "health.proto"),
                    os.path.join(health_dir, "health.proto"))
    sources = [os.path.join(repo_root, "proto", "asymcache", "v1", p) for p in ("types.proto", "worker.proto")]
    sources.append(os.path.join(health_dir, "health.proto"))
    includes = ["-I", os.path.join(repo_root, "proto"), "-I", os.path.join(scratch, "proto")]
    loads = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from asymcache.v1 import worker_pb2, worker_pb2_grpc; "
             "from asymcache_test_health import health_pb2, health_pb2_grpc")
    attempts = [
        [sys.executable, "-m", "grpc_tools.protoc", *includes, f"--python_out={gen}", f"--grpc_python_out={gen}"],
        ["protoc", *includes, f"--python_out={gen}", f"--grpc_out={gen}",
         "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin"],
    ]
    errors = []
    for command in attempts:
        shutil.rmtree(gen, ignore_errors=True)
        os.makedirs(gen)
        made = subprocess.run(command + sources, capture_output=True, text=True, timeout=60)
        if made.returncode == 0:
            made = subprocess.run([sys.executable, "-c", loads, gen], capture_output=True, text=True, timeout=60)
            if made.returncode == 0:
                sys.path.insert(0, gen)
                return
        errors.append(f"{command[0]}: {made.stderr}")
    raise CheckFailed("cannot generate Python stubs:\n" + "\n".join(errors))


def health_status(port, service):
    import grpc
    from asymcache_test_health import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def generate(port, prompt, max_new_tokens):
    """Worker/Generate on 127.0.0.1:port: (tokens, last message)."""
    import grpc
    from asymcache.v1 import worker_pb2, worker_pb2_grpc
    tokens, last = [], None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = worker_pb2.GenerateRequest(prompt_tokens=prompt, max_new_tokens=max_new_tokens)
        for message in worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=60):
            tokens.extend(message.tokens)
            last = message
    return tokens, last


def case_rendered_cluster(chart, args):
    check(args.daemon and args.coordinator and args.worker, "rendered_cluster needs --daemon, --coordinator, --worker")
    docs = chart.render_validated("cluster")
    config_dir = os.path.join(chart.scratch, "config")
    os.makedirs(config_dir)
    for key, text in find(docs, "ConfigMap", f"{RELEASE}-config")["data"].items():
        with open(os.path.join(config_dir, key), "w") as f:
            f.write(text)
    coordinator_sts = find(docs, "StatefulSet", f"{RELEASE}-coordinator")
    worker_sts = find(docs, "StatefulSet", f"{RELEASE}-worker-both")
    pods = containers_of(worker_sts)
    local = ["--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0"]
    started = []
    try:
        coordinators = []
        for i in range(coordinator_sts["spec"]["replicas"]):
            p = Process(f"coordinator-{i}", local_argv(args.coordinator, containers_of(coordinator_sts)["coordinator"],
                                                       config_dir, f"{RELEASE}-coordinator-{i}", local), chart.scratch)
            started.append(p)
            p.wait_ready()
            coordinators.append(p)
        addresses = ",".join(f"127.0.0.1:{p.grpc_port}" for p in coordinators)
        pod = f"{RELEASE}-worker-both-0"
        daemon = Process("daemon", local_argv(args.daemon, pods["daemon"], config_dir, pod,
                                              local + ["--advertise-address=", f"--coordinators={addresses}"]),
                         chart.scratch)
        started.append(daemon)
        daemon.wait_ready()
        worker = Process("worker", local_argv(args.worker, pods["worker"], config_dir, pod,
                                              local + ["--advertise-address=", f"--coordinators={addresses}",
                                                       f"--daemon=127.0.0.1:{daemon.grpc_port}", "--cpu-threads=1"]),
                         chart.scratch)
        started.append(worker)
        worker.wait_ready()
        # Every replica must see the pod's daemon and worker, registered with the role.
        for p in coordinators:
            wait_for_pod_members(p, daemon, worker)
        print(f"{len(coordinators)} coordinator replicas see the daemon and the worker of {pod}", flush=True)
        # What the kubelet's probes ask (grpc.health.v1 with the rendered service name) answers SERVING.
        python_stubs(args.repo_root, chart.scratch)
        probed = [(p, containers_of(coordinator_sts)["coordinator"]) for p in coordinators]
        probed += [(daemon, pods["daemon"]), (worker, pods["worker"])]
        for p, container in probed:
            service = container["readinessProbe"]["grpc"]["service"]
            status = health_status(p.grpc_port, service)
            check(status == "SERVING", f"{p.name}: health of service '{service}' is {status}")
        # A frontend's request through each replica: routed to the worker, served from the daemon's pool.
        prompt = list(range(1, 41))  # 2 full 16-token blocks and a partial one
        answers = [generate(p.grpc_port, prompt, 4) for p in coordinators]
        for (tokens, last), p in zip(answers, coordinators):
            check(len(tokens) == 4 and last.finish_reason == "length",
                  f"Generate through {p.name}: tokens {tokens}, finish '{last.finish_reason if last else None}'")
            check(tokens == answers[0][0], f"Generate through {p.name}: {tokens}, through the first replica {answers[0][0]}")
        hits = answers[-1][1].stats.hit_tokens
        check(hits >= 32, f"the repeated prompt hit {hits} cached tokens, want at least its 2 full blocks (32)")
        print(f"Generate through each replica: tokens {answers[0][0]}; the repeat hit {hits} cached tokens", flush=True)
        # Stop in the pod's order: the worker drains first, then its daemon (a sidecar), then the coordinators.
        for p in [worker, daemon, *coordinators]:
            p.stop()
            started.remove(p)
    finally:
        kill_all(started)


def case_rendered_cluster_tls(chart, args):
    """tls.enabled: the rendered TLS arguments on real binaries (certificates from
    scripts/make_certs.sh under the Secret's file names), each container's exec probe run
    as the kubelet would, and a tenant's Generate through the coordinator."""
    check(args.daemon and args.coordinator and args.worker and args.ctl,
          "rendered_cluster_tls needs --daemon, --coordinator, --worker, --ctl")
    docs = chart.render_validated("cluster_tls", sets=["tls.enabled=true",
                                                       "tls.existingSecret=asymcache-tls",
                                                       "coordinator.replicas=1"])
    config_dir = os.path.join(chart.scratch, "config")
    os.makedirs(config_dir)
    for key, text in find(docs, "ConfigMap", f"{RELEASE}-config")["data"].items():
        with open(os.path.join(config_dir, key), "w") as f:
            f.write(text)
    certs = os.path.join(chart.scratch, "certs")
    made = subprocess.run(["bash", os.path.join(args.repo_root, "scripts/make_certs.sh"), certs, "2"],
                          capture_output=True, text=True, timeout=60)
    check(made.returncode == 0, f"make_certs.sh failed:\n{made.stdout}{made.stderr}")
    secret = os.path.join(chart.scratch, "secret")  # the Secret's keys as mounted
    os.makedirs(secret)
    for src, dst in (("component.pem", "tls.crt"), ("component.key", "tls.key"), ("ca.pem", "ca.crt")):
        shutil.copy(os.path.join(certs, src), os.path.join(secret, dst))
    mount = "/etc/asymcache/tls"

    def here(container):
        """The container with the Secret's mount path pointing at the local copy."""
        c = json.loads(json.dumps(container))
        c["args"] = [a.replace(mount + "/", secret + "/") for a in c["args"]]
        return c

    coordinator_c = containers_of(find(docs, "StatefulSet", f"{RELEASE}-coordinator"))["coordinator"]
    pods = containers_of(find(docs, "StatefulSet", f"{RELEASE}-worker-both"))
    local = ["--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0"]
    pod = f"{RELEASE}-worker-both-0"
    started = []
    try:
        coordinator = Process("coordinator-0", local_argv(args.coordinator, here(coordinator_c), config_dir,
                                                          f"{RELEASE}-coordinator-0", local), chart.scratch)
        started.append(coordinator)
        coordinator.wait_ready()
        to_coordinator = [f"--coordinators=127.0.0.1:{coordinator.grpc_port}", "--advertise-address="]
        daemon = Process("daemon", local_argv(args.daemon, here(pods["daemon"]), config_dir, pod,
                                              local + to_coordinator), chart.scratch)
        started.append(daemon)
        daemon.wait_ready()
        worker = Process("worker", local_argv(args.worker, here(pods["worker"]), config_dir, pod,
                                              local + to_coordinator +
                                              [f"--daemon=127.0.0.1:{daemon.grpc_port}", "--cpu-threads=1"]),
                         chart.scratch)
        started.append(worker)
        worker.wait_ready()
        # Both register over mutual TLS with the component certificate (a trusted peer).
        wait_for_pod_members(coordinator, daemon, worker)
        # Each container's readiness probe, as the kubelet runs it (in the pod: 127.0.0.1 and the
        # container port; here the process's port and the local Secret copy).
        for p, container in ((coordinator, coordinator_c), (daemon, pods["daemon"]), (worker, pods["worker"])):
            command = container["readinessProbe"]["exec"]["command"]
            command = [args.ctl if a == "asymcachectl" else
                       re.sub(r"^--target=127\.0\.0\.1:\d+$", f"--target=127.0.0.1:{p.grpc_port}",
                              a.replace(mount + "/", secret + "/")) for a in command]
            probe = subprocess.run(command, capture_output=True, text=True, timeout=30)
            check(probe.returncode == 0 and probe.stdout.strip() == "SERVING",
                  f"{p.name}: probe {command} exit {probe.returncode}: {probe.stdout}{probe.stderr}")
            plain = [a for a in command if not a.startswith("--tls-")]
            refused = subprocess.run(plain, capture_output=True, text=True, timeout=30)
            check(refused.returncode == 1, f"{p.name}: a plaintext probe got exit {refused.returncode}")
        print("every container's TLS exec probe answers SERVING; plaintext is refused", flush=True)
        # A tenant's frontend (its own certificate) generates through the coordinator.
        generated = subprocess.run(
            [args.ctl, "generate", f"--target=127.0.0.1:{coordinator.grpc_port}", "--random-tokens=40",
             "--max-new-tokens=4", f"--tls-cert={certs}/tenant-a.pem", f"--tls-key={certs}/tenant-a.key",
             f"--tls-ca={certs}/ca.pem", "--timeout=60s"], capture_output=True, text=True, timeout=90)
        check(generated.returncode == 0 and "tokens:" in generated.stdout,
              f"generate as tenant-a: exit {generated.returncode}: {generated.stdout}{generated.stderr}\n"
              f"worker:\n{worker.stderr()}")
        print(f"tenant-a generated through the coordinator: {generated.stdout.strip()}", flush=True)
        for p in [worker, daemon, coordinator]:
            p.stop()
            started.remove(p)
    finally:
        kill_all(started)


CASES = {
    "lint_default": case_lint_default,
    "lint_split": case_lint_split,
    "template_default": case_template_default,
    "template_split": case_template_split,
    "values_schema_rejects": case_values_schema_rejects,
    "validator_rejects": case_validator_rejects,
    "rendered_cluster": case_rendered_cluster,
    "rendered_cluster_tls": case_rendered_cluster_tls,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", required=True, help="where fetch_tools.sh put tools/")
    parser.add_argument("--chart", required=True, help="the chart directory (helm/asymcache)")
    parser.add_argument("--repo-root", required=True, help="the repository (for deploy/grafana)")
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--daemon", help="asymcache-daemon binary (rendered_cluster)")
    parser.add_argument("--coordinator", help="asymcache-coordinator binary (rendered_cluster)")
    parser.add_argument("--worker", help="asymcache-worker binary (rendered_cluster)")
    parser.add_argument("--ctl", help="asymcachectl binary (rendered_cluster_tls)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"helm-{args.case}-", dir=args.build_dir) as scratch:
        try:
            chart = Chart(args.build_dir, args.chart, args.repo_root, scratch)
            CASES[args.case](chart, args)
        except CheckFailed as e:
            print(f"FAILED {args.case}: {e}", flush=True)
            return 1
    print(f"PASSED {args.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
