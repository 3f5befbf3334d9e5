#!/usr/bin/python3
"""Static checks of deploy/compose.yaml and deploy/prometheus/prometheus.yml
against the real binaries, for CI machines that cannot run Docker
(deploy/test_compose.sh runs the cluster itself where Docker works):

  - every flag a compose service passes to an AsymCache binary is one that
    binary's --help lists (dashes and underscores alike);
  - each service's ASYMCACHE_HEALTH_PORT (the image's HEALTHCHECK) is the
    port of its --listen flag;
  - a worker shares the IPC namespace of the daemon it connects to (the pool
    is POSIX shared memory) and names that daemon's member id, and the
    daemon's /dev/shm (shm_size) is larger than its --pool-bytes;
  - every --coordinators / --daemon address names a compose service at the
    port that service listens on;
  - prometheus.yml scrapes exactly the AsymCache services, each at its
    --metrics-port, under the job names the alert rules select.

Usage: compose_consistency_test.py --bin asymcache-daemon=PATH
           --bin asymcache-coordinator=PATH --bin asymcache-worker=PATH
Exit 0 PASS, 1 FAIL (every problem listed), 2 usage; 77 SKIP when Python's
yaml module (Debian package python3-yaml) is missing.
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
COMPOSE = os.path.join(REPO, "deploy", "compose.yaml")
PROMETHEUS = os.path.join(REPO, "deploy", "prometheus", "prometheus.yml")
EXIT_SKIPPED = 77
JOB_OF_BINARY = {"asymcache-daemon": "asymcache-daemon", "asymcache-coordinator": "asymcache-coordinator",
                 "asymcache-worker": "asymcache-worker"}
_SIZE = re.compile(r"^(\d+)\s*([kmgKMG]i?[bB]?|[bB])?$")


def size_bytes(text):
    """'512m' (compose), '256MiB' (AsymCache flags) -> bytes."""
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"not a size: {text}")
    unit = (match.group(2) or "b").lower()[0]
    return int(match.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def help_flags(binary):
    output = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=10).stdout.decode(errors="replace")
    return {flag.replace("_", "-") for flag in re.findall(r"--([a-z][a-z0-9_-]*)", output)}


def flags_of(command):
    """--name=value / --name arguments of a command list -> {name: value or True}."""
    flags = {}
    for argument in command[1:]:
        if argument.startswith("--"):
            name, _, value = argument[2:].partition("=")
            flags[name.replace("_", "-")] = value if _ else True
    return flags


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check(binaries):
    import yaml

    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    with open(PROMETHEUS) as f:
        prometheus = yaml.safe_load(f)
    services = compose["services"]
    problems = []
    known_flags = {name: help_flags(path) for name, path in binaries.items()}

    asymcache = {}  # service -> (binary, flags)
    for name, service in services.items():
        command = service.get("command") or []
        if command and command[0] in binaries:
            asymcache[name] = (command[0], flags_of(command))
    if not asymcache:
        problems.append("compose.yaml runs no AsymCache binary")

    for name, (binary, flags) in asymcache.items():
        service = services[name]
        for flag in flags:
            if flag not in known_flags[binary]:
                problems.append(f"{name}: {binary} has no flag --{flag} (not in its --help)")
        listen = flags.get("listen")
        health = (service.get("environment") or {}).get("ASYMCACHE_HEALTH_PORT")
        if not isinstance(listen, str):
            problems.append(f"{name}: no --listen=HOST:PORT")
        elif str(health) != str(port_of(listen)):
            problems.append(f"{name}: ASYMCACHE_HEALTH_PORT={health} but --listen={listen}")
        for key in ("coordinators", "daemon"):
            for address in (flags.get(key) or "").split(",") if isinstance(flags.get(key), str) else []:
                host, port = address.rsplit(":", 1)
                target = asymcache.get(host)
                if target is None:
                    problems.append(f"{name}: --{key} names {host}, not an AsymCache service")
                elif port_of(target[1].get("listen", ":0")) != int(port):
                    problems.append(f"{name}: --{key}={address} but {host} listens on "
                                    f"{target[1].get('listen')}")
        if binary == "asymcache-daemon":
            pool = flags.get("pool-bytes")
            shm = service.get("shm_size")
            if flags.get("backend", "host") == "host":
                if pool is None or shm is None:
                    problems.append(f"{name}: a host pool needs --pool-bytes and shm_size")
                elif size_bytes(shm) <= size_bytes(pool):
                    problems.append(f"{name}: shm_size {shm} does not hold --pool-bytes={pool}")
                if service.get("ipc") != "shareable":
                    problems.append(f"{name}: ipc must be shareable (its worker maps the pool)")
        if binary == "asymcache-worker":
            daemon_service = str(flags.get("daemon", "")).rsplit(":", 1)[0]
            if service.get("ipc") != f"service:{daemon_service}":
                problems.append(f"{name}: ipc is {service.get('ipc')!r}, want 'service:{daemon_service}' "
                                f"(the daemon it connects to)")
            daemon_flags = asymcache.get(daemon_service, (None, {}))[1]
            if flags.get("daemon-member-id") != daemon_flags.get("member-id"):
                problems.append(f"{name}: --daemon-member-id={flags.get('daemon-member-id')} but "
                                f"{daemon_service} has --member-id={daemon_flags.get('member-id')}")

    # prometheus.yml: every AsymCache service scraped once, at its metrics port, in its job.
    scraped = {}
    for job in prometheus.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, port = target.rsplit(":", 1)
                scraped[host] = (job["job_name"], int(port))
    for name, (binary, flags) in asymcache.items():
        want = (JOB_OF_BINARY[binary], int(flags.get("metrics-port", -1)))
        if scraped.get(name) != want:
            problems.append(f"prometheus.yml scrapes {name} as {scraped.get(name)}, want job "
                            f"{want[0]} at port {want[1]}")
    for host in scraped:
        if host not in asymcache:
            problems.append(f"prometheus.yml scrapes {host}, not an AsymCache service of compose.yaml")
    return problems, len(asymcache)


def main():
    parser = argparse.ArgumentParser(description="compose.yaml / prometheus.yml against the binaries")
    parser.add_argument("--bin", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    binaries = {}
    for entry in args.bin:
        name, _, path = entry.partition("=")
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            parser.error(f"--bin {entry}: not an executable file")
        binaries[name] = path
    if set(binaries) != set(JOB_OF_BINARY):
        parser.error(f"give --bin for each of {', '.join(sorted(JOB_OF_BINARY))}")
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("SKIP: Python's yaml module is missing (Debian package python3-yaml)")
        return EXIT_SKIPPED
    problems, count = check(binaries)
    if problems:
        print(f"FAIL: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        return 1
    print(f"PASS: {count} AsymCache services of compose.yaml agree with the binaries' flags, "
          f"each other and prometheus.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
