#!/usr/bin/python3
"""The asymcache.v1.Coordinator API from Python (grpcio), against a real
asymcache-coordinator and a real asymcache-daemon.

Run by run_python_tests.sh --coordinator, which generates the stubs, starts
both binaries on 127.0.0.1 (ephemeral ports) and sets:
  ASYMCACHE_COORDINATOR_ADDRESS  host:port of the coordinator
  ASYMCACHE_DAEMON_ADDRESS       host:port of the daemon (tiny model)
  ASYMCACHE_MAX_ROUTE_TOKENS     the coordinator's --max-route-tokens
  PYTHONPATH                     the generated stubs

The daemon is registered the way its registrar would (model, calibration and
instance from its GetStats); a second daemon member is registered at an
address where nothing listens, so routing has a choice. Every bad request
must fail with the exact status code of coordinator.proto and a message
naming the offending field.

Generate through the coordinator (its asymcache.v1.Worker service) is read as
a stream from Python, proxied to a scripted worker served by this test (a
grpcio server registered as the daemon's WORKER member): the tokens, times
and stats the worker streams come through, its errors keep their code.
"""

import os
import threading
import time
import unittest
from concurrent import futures

import grpc

from asymcache.v1 import cache_daemon_pb2 as daemon_pb
from asymcache.v1 import cache_daemon_pb2_grpc as daemon_grpc
from asymcache.v1 import coordinator_pb2 as pb
from asymcache.v1 import coordinator_pb2_grpc as pb_grpc
from asymcache.v1 import types_pb2
from asymcache.v1 import worker_pb2
from asymcache.v1 import worker_pb2_grpc

COORDINATOR = os.environ["ASYMCACHE_COORDINATOR_ADDRESS"]
DAEMON = os.environ["ASYMCACHE_DAEMON_ADDRESS"]
MAX_ROUTE_TOKENS = int(os.environ["ASYMCACHE_MAX_ROUTE_TOKENS"])
BLOCK_TOKENS = 16  # the tiny model
VOCAB = 1024       # the tiny model's vocabulary
TIMEOUT = 5.0      # seconds, every unary call


def tokens(count, seed):
    """`count` token ids; different seeds (< VOCAB) differ in the first token."""
    return [(seed * 131 + i * 7) % VOCAB for i in range(count)]


class ScriptedWorker(worker_pb2_grpc.WorkerServicer):
    """A worker whose answer is a function of the request: token i is
    (sum(prompt) + i) % VOCAB, one message each, then the finish message.
    max_new_tokens == 99 is refused with INVALID_ARGUMENT naming top_p."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []

    @staticmethod
    def answer(prompt, count):
        return [(sum(prompt) + i) % VOCAB for i in range(count)]

    def Generate(self, request, context):
        with self.lock:
            self.requests.append(request)
        if request.max_new_tokens == 99:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p: 99 is outside (0, 1]")
        tokens = self.answer(request.prompt_tokens, request.max_new_tokens)
        for i, token in enumerate(tokens):
            yield worker_pb2.GenerateResponse(tokens=[token], token_times_us=[1000 * (i + 1)])
        yield worker_pb2.GenerateResponse(
            finish_reason="length",
            stats=worker_pb2.RequestStats(prompt_tokens=len(request.prompt_tokens),
                                          computed_prompt_tokens=len(request.prompt_tokens),
                                          ttft_seconds=0.001, steps=len(tokens)))


class CoordinatorApiTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(COORDINATOR)
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.stub = pb_grpc.CoordinatorStub(cls.channel)
        cls.daemon_channel = grpc.insecure_channel(DAEMON)
        grpc.channel_ready_future(cls.daemon_channel).result(timeout=10)
        cls.daemon = daemon_grpc.CacheDaemonStub(cls.daemon_channel)

        # Before any daemon registered, nothing can be routed.
        try:
            cls.stub.Route(pb.RouteRequest(salt="s", token_ids=[1, 2, 3]), timeout=TIMEOUT)
            cls.early_route_code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            cls.early_route_code = e.code()

        stats = cls.daemon.GetStats(daemon_pb.GetStatsRequest(), timeout=TIMEOUT)
        cls.model = stats.model
        cls.calibration = stats.calibration
        cls.registered = cls.stub.Register(pb.RegisterRequest(
            member_id="py-daemon", kind=pb.MEMBER_KIND_DAEMON, address=DAEMON, gpu=-1,
            role=pb.ROLE_BOTH, model=stats.model, calibration=stats.calibration,
            instance=stats.daemon_instance), timeout=TIMEOUT)
        cls.stub.Register(pb.RegisterRequest(
            member_id="py-idle", kind=pb.MEMBER_KIND_DAEMON, address="127.0.0.1:1", gpu=0,
            role=pb.ROLE_BOTH, model=stats.model, calibration=stats.calibration,
            instance="idle"), timeout=TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.daemon_channel.close()

    # ------------------------------------------------------------ helpers

    def members(self):
        listing = self.stub.ListMembers(pb.ListMembersRequest(), timeout=TIMEOUT)
        return {m.member_id: m for m in listing.members}

    def commit(self, salt, sequence, toks):
        plan = self.daemon.PlanStep(
            daemon_pb.PlanStepRequest(salt=salt, sequence_id=sequence, tokens=toks),
            timeout=TIMEOUT)
        self.daemon.CommitStep(daemon_pb.CommitStepRequest(lease_id=plan.lease_id),
                               timeout=TIMEOUT)
        self.daemon.ReleaseStep(daemon_pb.ReleaseStepRequest(lease_id=plan.lease_id),
                                timeout=TIMEOUT)

    def wait_caught_up(self):
        """Until the coordinator applied every KV event of the daemon (10 s bound)."""
        deadline = time.monotonic() + 10
        while True:
            last = self.daemon.GetStats(daemon_pb.GetStatsRequest(),
                                        timeout=TIMEOUT).last_event_sequence
            m = self.members()["py-daemon"]
            if m.events_connected and m.applied_event_sequence == last:
                return
            if time.monotonic() > deadline:
                self.fail("coordinator did not catch up: applied %d of %d"
                          % (m.applied_event_sequence, last))
            time.sleep(0.02)

    def assert_refused(self, call, code, field):
        with self.assertRaises(grpc.RpcError) as raised:
            call()
        self.assertEqual(raised.exception.code(), code, raised.exception.details())
        self.assertIn(field, raised.exception.details())

    # ------------------------------------------------------------ happy paths

    def test_health_and_reflection(self):
        from asymcache_test_health import health_pb2, health_pb2_grpc
        from asymcache_test_reflection import reflection_pb2, reflection_pb2_grpc
        health = health_pb2_grpc.HealthStub(self.channel)
        self.assertEqual(health.Check(health_pb2.HealthCheckRequest(service=""),
                                      timeout=TIMEOUT).status,
                         health_pb2.HealthCheckResponse.SERVING)
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="*")]), timeout=TIMEOUT))
        names = {s.name for s in replies[0].list_services_response.service}
        self.assertIn("asymcache.v1.Coordinator", names)
        self.assertIn("asymcache.v1.Worker", names)  # Generate, proxied

    def test_register_answers_the_intervals(self):
        self.assertGreater(self.registered.heartbeat_interval_s, 0)
        self.assertGreater(self.registered.member_timeout_s,
                           self.registered.heartbeat_interval_s)
        self.assertTrue(self.registered.coordinator_instance)
        listing = self.stub.ListMembers(pb.ListMembersRequest(), timeout=TIMEOUT)
        self.assertEqual(listing.coordinator_instance, self.registered.coordinator_instance)
        self.assertEqual(listing.model.block_tokens, BLOCK_TOKENS)
        self.assertEqual(listing.routing_mode, "hole-aware")

    def test_route_goes_to_the_daemon_holding_the_context(self):
        context = tokens(10 * BLOCK_TOKENS + 7, 3)
        self.commit("py-route", 1, context)
        self.wait_caught_up()
        # Heartbeats (as the registrars send them) clear the work other tests'
        # routes charged to the members, so only the cache tells them apart.
        for member in ("py-daemon", "py-idle"):
            self.stub.Heartbeat(pb.HeartbeatRequest(member_id=member, load=pb.MemberLoad()),
                                timeout=TIMEOUT)
        r = self.stub.Route(pb.RouteRequest(salt="py-route", token_ids=context, explain=True),
                            timeout=TIMEOUT)
        self.assertEqual(r.prefill.daemon_id, "py-daemon")
        self.assertEqual(r.prefill.daemon_address, DAEMON)
        self.assertEqual(r.reason, "best_predicted_ttft")
        self.assertFalse(r.split)
        self.assertNotEqual(r.route_id, 0)
        self.assertEqual(r.prediction.hit_tokens, len(context))
        self.assertEqual({c.daemon_id for c in r.candidates}, {"py-daemon", "py-idle"})
        # Report the TTFT the request got.
        report = self.stub.ReportTtft(
            pb.ReportTtftRequest(route_id=r.route_id, ttft_s=4 * r.prediction.predicted_ttft_s),
            timeout=TIMEOUT)
        self.assertAlmostEqual(report.predicted_ttft_s, r.prediction.predicted_ttft_s)
        self.assertAlmostEqual(report.relative_error, 0.75)

    def test_generate_through_the_coordinator(self):
        proxy = worker_pb2_grpc.WorkerStub(self.channel)
        # The coordinator is no worker: its stats are the workers'.
        self.assert_refused(lambda: proxy.GetWorkerStats(worker_pb2.GetWorkerStatsRequest(),
                                                         timeout=TIMEOUT),
                            grpc.StatusCode.UNIMPLEMENTED, "ask a worker")
        generate = lambda request: list(proxy.Generate(request, timeout=TIMEOUT))
        self.assert_refused(lambda: generate(worker_pb2.GenerateRequest(max_new_tokens=3)),
                            grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens")

        context = tokens(4 * BLOCK_TOKENS + 5, 11)
        self.commit("py-generate", 1, context)
        self.wait_caught_up()
        request = worker_pb2.GenerateRequest(prompt_tokens=context, max_new_tokens=5,
                                             salt="py-generate")
        # The context's daemon has no worker yet (and the other none either).
        for member in ("py-daemon", "py-idle"):
            self.stub.Heartbeat(pb.HeartbeatRequest(member_id=member, load=pb.MemberLoad()),
                                timeout=TIMEOUT)
        self.assert_refused(lambda: generate(request), grpc.StatusCode.UNAVAILABLE,
                            "no worker is registered on daemon 'py-daemon'")

        scripted = ScriptedWorker()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        worker_pb2_grpc.add_WorkerServicer_to_server(scripted, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            self.stub.Register(pb.RegisterRequest(
                member_id="py-worker", kind=pb.MEMBER_KIND_WORKER,
                address="127.0.0.1:%d" % port, gpu=-1, role=pb.ROLE_BOTH,
                daemon_id="py-daemon"), timeout=TIMEOUT)
            for member in ("py-daemon", "py-idle"):
                self.stub.Heartbeat(pb.HeartbeatRequest(member_id=member, load=pb.MemberLoad()),
                                    timeout=TIMEOUT)
            started = time.monotonic()
            messages = generate(request)
            elapsed_us = (time.monotonic() - started) * 1e6
            got = [t for m in messages for t in m.tokens]
            times = [t for m in messages for t in m.token_times_us]
            self.assertEqual(got, ScriptedWorker.answer(context, 5))
            self.assertEqual(len(times), 5)
            self.assertEqual(times, sorted(times))
            # The worker's times, counted from the coordinator's arrival.
            self.assertGreaterEqual(times[0], 1000)
            self.assertLessEqual(times[0], 1000 + elapsed_us)
            self.assertEqual(messages[-1].finish_reason, "length")
            self.assertEqual(messages[-1].stats.prompt_tokens, len(context))
            self.assertEqual(messages[-1].stats.steps, 5)
            self.assertGreater(messages[-1].stats.ttft_seconds, 0)
            self.assertEqual([list(r.prompt_tokens) for r in scripted.requests], [context])
            self.assertEqual(scripted.requests[0].salt, "py-generate")

            # The worker's error passes through with its code, naming the worker.
            bad = worker_pb2.GenerateRequest()
            bad.CopyFrom(request)
            bad.max_new_tokens = 99
            self.assert_refused(lambda: generate(bad), grpc.StatusCode.INVALID_ARGUMENT,
                                "worker 'py-worker'")
        finally:
            self.stub.Deregister(pb.DeregisterRequest(member_id="py-worker"), timeout=TIMEOUT)
            server.stop(grace=None)

    # ------------------------------------------------------------ bad input

    def test_route_before_any_daemon_was_unavailable(self):
        self.assertEqual(self.early_route_code, grpc.StatusCode.UNAVAILABLE)

    def test_bad_registrations(self):
        good = dict(member_id="py-x", kind=pb.MEMBER_KIND_DAEMON, address="127.0.0.1:2", gpu=0,
                    role=pb.ROLE_BOTH, model=self.model, calibration=self.calibration)
        cases = [
            (dict(member_id=""), grpc.StatusCode.INVALID_ARGUMENT, "member_id"),
            (dict(member_id="a b"), grpc.StatusCode.INVALID_ARGUMENT, "member_id"),
            (dict(kind=pb.MEMBER_KIND_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT, "kind"),
            (dict(address=""), grpc.StatusCode.INVALID_ARGUMENT, "address"),
            (dict(address="nohost"), grpc.StatusCode.INVALID_ARGUMENT, "address"),
            (dict(model=None), grpc.StatusCode.INVALID_ARGUMENT, "model"),
            (dict(calibration=None), grpc.StatusCode.INVALID_ARGUMENT, "calibration"),
        ]
        for change, code, field in cases:
            fields = dict(good)
            fields.update(change)
            fields = {k: v for k, v in fields.items() if v is not None}
            self.assert_refused(lambda: self.stub.Register(pb.RegisterRequest(**fields),
                                                           timeout=TIMEOUT), code, field)
        other = types_pb2.ModelShape()
        other.CopyFrom(self.model)
        other.block_tokens = 32
        fields = dict(good, model=other)
        self.assert_refused(lambda: self.stub.Register(pb.RegisterRequest(**fields),
                                                       timeout=TIMEOUT),
                            grpc.StatusCode.FAILED_PRECONDITION, "block_tokens")
        self.assertNotIn("py-x", self.members())

    def test_unknown_members_are_not_found(self):
        self.assert_refused(lambda: self.stub.Heartbeat(
            pb.HeartbeatRequest(member_id="nobody"), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, "nobody")
        self.assert_refused(lambda: self.stub.Deregister(
            pb.DeregisterRequest(member_id="nobody"), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, "nobody")
        self.assert_refused(lambda: self.stub.Heartbeat(
            pb.HeartbeatRequest(member_id="py-daemon",
                                load=pb.MemberLoad(queued_prefill_tokens=-1)), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "queued_prefill_tokens")

    def test_bad_routes(self):
        route = lambda **f: self.stub.Route(pb.RouteRequest(**f), timeout=TIMEOUT)
        self.assert_refused(lambda: route(salt="s"), grpc.StatusCode.INVALID_ARGUMENT,
                            "token_ids and block_hashes are both empty")
        self.assert_refused(lambda: route(token_ids=[1, -2, 3]),
                            grpc.StatusCode.INVALID_ARGUMENT, "token_ids[1]")
        self.assert_refused(lambda: route(token_ids=[1, VOCAB]),
                            grpc.StatusCode.INVALID_ARGUMENT, "token_ids[1]")
        self.assert_refused(lambda: route(token_ids=tokens(MAX_ROUTE_TOKENS + 1, 1)),
                            grpc.StatusCode.INVALID_ARGUMENT, "max_route_tokens")
        hashes = [types_pb2.BlockHash(lo=i + 1, hi=7) for i in range(2)]
        self.assert_refused(lambda: route(block_hashes=hashes, num_tokens=3 * BLOCK_TOKENS),
                            grpc.StatusCode.INVALID_ARGUMENT, "block_hashes")
        self.assert_refused(lambda: route(block_hashes=hashes),
                            grpc.StatusCode.INVALID_ARGUMENT, "num_tokens")
        self.assert_refused(lambda: route(token_ids=[1, 2],
                                          agent=types_pb2.AgentJob(tool="search")),
                            grpc.StatusCode.INVALID_ARGUMENT, "agent.job_id")
        ok = route(block_hashes=hashes, num_tokens=2 * BLOCK_TOKENS - 1)
        self.assertNotEqual(ok.route_id, 0)

    def test_bad_ttft_reports(self):
        r = self.stub.Route(pb.RouteRequest(salt="s", token_ids=tokens(20, 9)), timeout=TIMEOUT)
        report = lambda route_id, ttft: self.stub.ReportTtft(
            pb.ReportTtftRequest(route_id=route_id, ttft_s=ttft), timeout=TIMEOUT)
        self.assert_refused(lambda: report(0, 0.1), grpc.StatusCode.INVALID_ARGUMENT, "route_id")
        self.assert_refused(lambda: report(r.route_id, 0), grpc.StatusCode.INVALID_ARGUMENT,
                            "ttft_s")
        self.assert_refused(lambda: report(r.route_id ^ 1, 0.1), grpc.StatusCode.NOT_FOUND,
                            "route_id")
        report(r.route_id, 0.1)
        self.assert_refused(lambda: report(r.route_id, 0.1), grpc.StatusCode.NOT_FOUND,
                            "already reported")


if __name__ == "__main__":
    unittest.main()
