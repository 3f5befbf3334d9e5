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
"""

import os
import time
import unittest

import grpc

from asymcache.v1 import cache_daemon_pb2 as daemon_pb
from asymcache.v1 import cache_daemon_pb2_grpc as daemon_grpc
from asymcache.v1 import coordinator_pb2 as pb
from asymcache.v1 import coordinator_pb2_grpc as pb_grpc
from asymcache.v1 import types_pb2

COORDINATOR = os.environ["ASYMCACHE_COORDINATOR_ADDRESS"]
DAEMON = os.environ["ASYMCACHE_DAEMON_ADDRESS"]
MAX_ROUTE_TOKENS = int(os.environ["ASYMCACHE_MAX_ROUTE_TOKENS"])
BLOCK_TOKENS = 16  # the tiny model
VOCAB = 1024       # the tiny model's vocabulary
TIMEOUT = 5.0      # seconds, every unary call


def tokens(count, seed):
    """`count` token ids; different seeds (< VOCAB) differ in the first token."""
    return [(seed * 131 + i * 7) % VOCAB for i in range(count)]


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
