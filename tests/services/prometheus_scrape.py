#!/usr/bin/python3
"""End-to-end check that a real Prometheus server can scrape a metrics endpoint.

Usage:
  prometheus_scrape.py --metric NAME [--timeout S] [--prometheus PATH]
                       [--promtool PATH] -- COMMAND ARGS...

COMMAND is started with every "{metrics_port}" in its arguments replaced by a
free TCP port picked here (and "{grpc_port}" by another one, if present). The
script then
  1. waits until http://127.0.0.1:{metrics_port}/metrics answers 200 and runs
     `promtool check metrics` on that body (any output line is a failure: it
     is a lint problem or a parse error);
  2. writes a prometheus.yml scraping 127.0.0.1:{metrics_port} every 1 s and
     starts PATH (default /usr/bin/prometheus) with a temporary
     --storage.tsdb.path and --web.listen-address=127.0.0.1:<free port>;
  3. polls /api/v1/query?query=NAME until the result is non-empty;
  4. stops Prometheus and COMMAND (SIGTERM, then SIGKILL after 5 s), also on
     failure, timeout or interruption, and removes the temporary directory.
Everything (waits included) is bounded by --timeout (default 30 s). Exit 0
with "PASS: ..." or 1 with "FAIL: <what went wrong>" and the tails of the
child logs; 77 ("SKIP: ...") when prometheus or promtool is not installed;
2 for bad usage. Children die with the script (PR_SET_PDEATHSIG), so a ctest
timeout does not leave them behind.
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

PR_SET_PDEATHSIG = 1
EXIT_SKIPPED = 77  # Prometheus or promtool not installed (ctest SKIP_RETURN_CODE)


class CheckFailed(Exception):
    pass


def free_port():
    """A TCP port free on 127.0.0.1 right now (the kernel's ephemeral pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when this script dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def tail(path, lines=30):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


# Loopback only: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url, timeout):
    with _OPENER.open(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", errors="replace")


class Child:
    """A started process with its output in a log file."""

    def __init__(self, name, argv, log_path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log = open(log_path, "wb")
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent, start_new_session=True)
        except OSError as e:
            raise CheckFailed(f"cannot start {name} ({argv[0]}): {e}")
        finally:
            log.close()

    def check_running(self):
        code = self.process.poll()
        if code is not None:
            raise CheckFailed(f"{self.name} exited with status {code} before the check finished")

    def stop(self, grace_s=5.0):
        """SIGTERM (the whole process group), SIGKILL after grace_s. Returns the exit code."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
                return None  # did not stop on SIGTERM
        return self.process.returncode


def wait_until(deadline, what, poll_s, attempt):
    """Calls attempt() until it returns a non-None value or the deadline passes."""
    last = None
    while True:
        try:
            value = attempt()
            if value is not None:
                return value
            last = "no result yet"
        except CheckFailed:
            raise
        except Exception as e:  # connection refused, HTTP errors, bad JSON: retry
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out waiting for {what} (last attempt: {last})")
        time.sleep(poll_s)


def promtool_check(promtool, text):
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or output:
        raise CheckFailed(f"promtool check metrics (exit {result.returncode}) reports:\n{output}")


def run_check(args, workdir, children):
    metrics_port = free_port()
    grpc_port = free_port()
    while grpc_port == metrics_port:
        grpc_port = free_port()
    command = [a.replace("{metrics_port}", str(metrics_port)).replace("{grpc_port}", str(grpc_port))
               for a in args.command]
    deadline = time.monotonic() + args.timeout
    target = f"127.0.0.1:{metrics_port}"

    print(f"starting: {' '.join(command)}", flush=True)
    exporter = Child("COMMAND", command, os.path.join(workdir, "command.log"))
    children.append(exporter)

    def scrape_directly():
        exporter.check_running()
        status, body = http_get(f"http://{target}/metrics", timeout=2)
        return body if status == 200 else None

    body = wait_until(deadline, f"http://{target}/metrics to answer", 0.1, scrape_directly)
    promtool_check(args.promtool, body)
    print(f"promtool check metrics: clean ({len(body.splitlines())} lines)", flush=True)

    config_path = os.path.join(workdir, "prometheus.yml")
    with open(config_path, "w") as f:
        f.write("global:\n"
                "  scrape_interval: 1s\n"
                "  scrape_timeout: 1s\n"
                "  evaluation_interval: 1s\n"
                "scrape_configs:\n"
                "  - job_name: asymcache\n"
                "    static_configs:\n"
                f"      - targets: ['{target}']\n")
    web_port = free_port()
    while web_port in (metrics_port, grpc_port):
        web_port = free_port()
    prometheus = Child("prometheus", [
        args.prometheus,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{web_port}",
        "--log.level=warn",
    ], os.path.join(workdir, "prometheus.log"))
    children.append(prometheus)

    query_url = (f"http://127.0.0.1:{web_port}/api/v1/query?"
                 + urllib.parse.urlencode({"query": args.metric}))

    state = [""]

    def query():
        exporter.check_running()
        prometheus.check_running()
        status, body = http_get(query_url, timeout=2)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            return None
        result = reply["data"]["result"]
        if not result:
            # Say whether Prometheus scrapes the target at all.
            _, targets = http_get(f"http://127.0.0.1:{web_port}/api/v1/targets", timeout=2)
            active = json.loads(targets)["data"]["activeTargets"]
            state[0] = "; ".join(f"target {t.get('scrapeUrl')} health={t.get('health')}"
                                 f" lastError={t.get('lastError')!r}" for t in active)
            return None
        return result

    try:
        result = wait_until(deadline, f"Prometheus to return a sample of {args.metric}", 0.25, query)
    except CheckFailed as e:
        raise CheckFailed(f"{e}; {state[0]}" if state[0] else str(e))
    print(f"Prometheus query {args.metric}: {json.dumps(result)}", flush=True)
    return command


def main():
    parser = argparse.ArgumentParser(
        description="Check that a real Prometheus server scrapes METRIC from COMMAND.",
        usage="%(prog)s --metric NAME [options] -- COMMAND ARGS...")
    parser.add_argument("--metric", required=True, help="metric name (PromQL) that must appear")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="bound on all waiting, seconds (default 30)")
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    parser.add_argument("--promtool", default="/usr/bin/promtool")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("missing COMMAND after --")
    if not any("{metrics_port}" in a for a in args.command):
        parser.error("COMMAND must take the port to serve metrics on as {metrics_port}")
    for tool in (args.prometheus, args.promtool):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            print(f"SKIP: {tool} is not an executable file (Debian package prometheus)", flush=True)
            return EXIT_SKIPPED

    # SIGTERM (e.g. from a test runner) unwinds through the cleanup below.
    def on_signal(signum, _frame):
        raise CheckFailed(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workdir = tempfile.mkdtemp(prefix="asymcache_prometheus_")
    children = []
    failure = None
    command = args.command
    try:
        command = run_check(args, workdir, children)
    except CheckFailed as e:
        failure = str(e)
    except Exception as e:  # a bug here must still clean up and fail clearly
        failure = f"{type(e).__name__}: {e}"
    finally:
        codes = {}
        for child in reversed(children):
            try:
                codes[child.name] = child.stop()
            except CheckFailed as e:  # a signal during cleanup: keep cleaning
                failure = failure or str(e)
                codes[child.name] = child.stop()
        if failure is None and "COMMAND" in codes and codes["COMMAND"] is None:
            failure = "COMMAND did not exit within 5 s of SIGTERM"
        if failure is not None:
            for child in children:
                sys.stdout.write(f"--- {child.name} log (tail) ---\n{tail(child.log_path)}")
        shutil.rmtree(workdir, ignore_errors=True)

    if failure is not None:
        print(f"FAIL: {failure}", flush=True)
        return 1
    print(f"PASS: Prometheus scraped {args.metric} from {' '.join(command)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
