#!/usr/bin/python3
"""The asymcache.v1.CacheDaemon API from Python (grpcio), against a real daemon.

Run by run_python_tests.sh, which generates the stubs, starts asymcache-daemon
(host backend, tiny model) and sets:
  ASYMCACHE_DAEMON_ADDRESS      host:port of the daemon
  ASYMCACHE_MAX_CONTEXT_TOKENS  the daemon's --max-context-tokens
  ASYMCACHE_POOL_BLOCKS         blocks in its pool
  PYTHONPATH                    the generated stubs

Every bad request must fail with the exact status code of cache_daemon.proto,
a message naming the offending field, and leave the daemon's stats unchanged.
Tests share one daemon; each uses its own salt and sequence ids.
"""

import os
import unittest

import grpc

from asymcache.v1 import cache_daemon_pb2 as pb
from asymcache.v1 import cache_daemon_pb2_grpc as pb_grpc
from asymcache.v1 import types_pb2

ADDRESS = os.environ["ASYMCACHE_DAEMON_ADDRESS"]
MAX_CONTEXT_TOKENS = int(os.environ["ASYMCACHE_MAX_CONTEXT_TOKENS"])
POOL_BLOCKS = int(os.environ["ASYMCACHE_POOL_BLOCKS"])
BLOCK_TOKENS = 16  # the tiny model
TIMEOUT = 5.0      # seconds, every unary call

# GetStatsResponse fields a failed request must not change (all but uptime).
STATE_FIELDS = (
    "capacity_blocks", "free_blocks", "writing_blocks", "sealed_blocks", "pinned_blocks",
    "in_transfer_blocks", "indexed_blocks", "evictions", "active_leases", "active_exports",
    "agent_pinned_blocks", "agent_pinned_jobs", "steps", "hit_tokens", "rebuild_tokens",
    "new_tokens", "last_event_sequence", "lease_extensions", "deferred_plans", "writing_pages")


VOCAB = 1024      # the tiny model's vocabulary: token ids must lie in [0, VOCAB)


def tokens(count, seed):
    """`count` token ids; different seeds (< VOCAB) differ in the first token."""
    return [(seed * 131 + i * 7) % VOCAB for i in range(count)]


class DaemonApiTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(ADDRESS)
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.stub = pb_grpc.CacheDaemonStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    # ------------------------------------------------------------ helpers

    def stats(self):
        return self.stub.GetStats(pb.GetStatsRequest(), timeout=TIMEOUT)

    def state(self):
        s = self.stats()
        return {field: getattr(s, field) for field in STATE_FIELDS}

    def plan(self, salt, sequence, toks, **fields):
        return self.stub.PlanStep(
            pb.PlanStepRequest(salt=salt, sequence_id=sequence, tokens=toks, **fields),
            timeout=TIMEOUT)

    def commit(self, lease_id):
        return self.stub.CommitStep(pb.CommitStepRequest(lease_id=lease_id), timeout=TIMEOUT)

    def release(self, lease_id):
        return self.stub.ReleaseStep(pb.ReleaseStepRequest(lease_id=lease_id), timeout=TIMEOUT)

    def assert_refused(self, call, code, field):
        """`call` fails with `code`, names `field`, and changes no stat."""
        before = self.state()
        with self.assertRaises(grpc.RpcError) as raised:
            call()
        self.assertEqual(raised.exception.code(), code, raised.exception.details())
        self.assertIn(field, raised.exception.details())
        self.assertEqual(self.state(), before)

    # ------------------------------------------------------------ happy paths

    def test_server_reflection_lists_the_services(self):
        from asymcache_test_reflection import reflection_pb2, reflection_pb2_grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="*")]), timeout=TIMEOUT))
        self.assertEqual(len(replies), 1)
        names = {s.name for s in replies[0].list_services_response.service}
        self.assertIn("asymcache.v1.CacheDaemon", names)
        self.assertIn("grpc.health.v1.Health", names)

    def test_get_stats_describes_the_daemon(self):
        s = self.stats()
        self.assertEqual(s.backend, "host")
        self.assertEqual(s.model.name, "tiny")
        self.assertEqual(s.model.block_tokens, BLOCK_TOKENS)
        self.assertEqual(s.policy, "asym")
        self.assertEqual(s.capacity_blocks, POOL_BLOCKS)
        self.assertEqual(
            s.free_blocks + s.writing_blocks + s.sealed_blocks + s.pinned_blocks
            + s.in_transfer_blocks, s.capacity_blocks)
        self.assertTrue(s.daemon_instance)
        self.assertGreater(s.uptime_s, 0)
        self.assertEqual(s.calibration.device, "cpu")

    def test_plan_commit_release_then_follow_up_hits(self):
        first = tokens(2 * BLOCK_TOKENS + 8, 1)  # 2 full blocks + 8 tokens
        reply = self.plan("py-steps", 11, first)
        plan = reply.plan
        self.assertNotEqual(reply.lease_id, 0)
        self.assertGreater(reply.lease_timeout_ms, 0)
        self.assertEqual(plan.sequence_id, 11)
        self.assertEqual(plan.context_tokens, len(first))
        self.assertEqual(plan.block_tokens, BLOCK_TOKENS)
        self.assertEqual(plan.hit_tokens, 0)
        self.assertEqual(plan.new_tokens, len(first))
        self.assertEqual(list(plan.page_lengths), [16, 16, 8])
        self.assertEqual(list(plan.page_positions), [0, 16, 32])
        self.assertEqual(list(plan.page_resident), [False, False, False])
        self.assertEqual(list(plan.allocated_pages), [0, 1, 2])
        self.assertEqual(list(plan.query_positions), list(range(len(first))))
        self.assertEqual([(s.begin, s.end, s.kind) for s in plan.segments],
                         [(0, len(first), pb.Segment.TAIL)])

        committed = self.commit(reply.lease_id)
        self.assertEqual(committed.sealed_blocks, 3)
        self.assertEqual(committed.duplicate_blocks, 0)
        released = self.release(reply.lease_id)
        self.assertFalse(released.HasField("pin"))

        # Follow-up turn: the committed full blocks are hit.
        second = first + [(500 + i) % VOCAB for i in range(16)]
        follow = self.plan("py-steps", 11, second)
        self.assertEqual(follow.plan.hit_tokens, 2 * BLOCK_TOKENS)
        self.assertEqual(follow.plan.contiguous_hit_tokens, 2 * BLOCK_TOKENS)
        self.assertEqual(list(follow.plan.page_resident), [True, True, False, False])
        self.assertEqual(list(follow.plan.page_ids[:2]), list(plan.page_ids[:2]))
        self.release(follow.lease_id)

        # Another salt shares nothing.
        other = self.plan("py-steps-other", 12, second)
        self.assertEqual(other.plan.hit_tokens, 0)
        self.release(other.lease_id)
        self.assertEqual(self.stats().active_leases, 0)

    def test_extend_lease_rolls_a_full_decode_page_over(self):
        context = tokens(2 * BLOCK_TOKENS + 5, 2)  # the third page is partial (5 tokens)
        reply = self.plan("py-extend", 13, context)
        try:
            committed = self.stub.CommitStep(
                pb.CommitStepRequest(lease_id=reply.lease_id, keep_partial_last_page=True),
                timeout=TIMEOUT)
            self.assertEqual(committed.private_blocks, 1)
            context += [(700 + i) % VOCAB for i in range(BLOCK_TOKENS - 5)]  # decode fills it
            page = context[2 * BLOCK_TOKENS:]
            before = self.stats()
            extended = self.stub.ExtendLease(
                pb.ExtendLeaseRequest(lease_id=reply.lease_id, position=2 * BLOCK_TOKENS,
                                      page_tokens=page), timeout=TIMEOUT)
            self.assertTrue(extended.sealed)
            self.assertEqual(extended.position, 3 * BLOCK_TOKENS)
            self.assertNotIn(extended.block_id, list(reply.plan.page_ids))
            self.assertGreater(extended.lease_timeout_ms, 0)
            self.assertFalse(extended.HasField("spare_block_id"))  # none asked for
            after = self.stats()
            self.assertEqual(after.lease_extensions, before.lease_extensions + 1)
            self.assertEqual(after.indexed_blocks, before.indexed_blocks + 1)
            self.assertEqual(after.steps, before.steps)  # no plan
            # With a spare: the next extension turns it into the private page.
            context += [(800 + i) % VOCAB for i in range(BLOCK_TOKENS)]
            spared = self.stub.ExtendLease(
                pb.ExtendLeaseRequest(lease_id=reply.lease_id, reserve_spare=True,
                                      position=3 * BLOCK_TOKENS,
                                      page_tokens=context[3 * BLOCK_TOKENS:]), timeout=TIMEOUT)
            self.assertEqual(spared.position, 4 * BLOCK_TOKENS)
            self.assertTrue(spared.HasField("spare_block_id"))
            context += [(900 + i) % VOCAB for i in range(BLOCK_TOKENS)]
            third = self.stub.ExtendLease(
                pb.ExtendLeaseRequest(lease_id=reply.lease_id, position=4 * BLOCK_TOKENS,
                                      page_tokens=context[4 * BLOCK_TOKENS:]), timeout=TIMEOUT)
            self.assertEqual(third.block_id, spared.spare_block_id)
            self.assertFalse(third.HasField("spare_block_id"))
            # Another request of that context hits the sealed pages.
            other = self.plan("py-extend", 14, context + [3])
            self.assertEqual(other.plan.hit_tokens, 5 * BLOCK_TOKENS)
            self.release(other.lease_id)
        finally:
            self.release(reply.lease_id)

    def test_extend_lease_refusals_change_nothing(self):
        extend = lambda lease, page, position=BLOCK_TOKENS: self.stub.ExtendLease(
            pb.ExtendLeaseRequest(lease_id=lease, position=position, page_tokens=page),
            timeout=TIMEOUT)
        context = tokens(BLOCK_TOKENS + 3, 9)
        page = context[BLOCK_TOKENS:] + tokens(BLOCK_TOKENS - 3, 10)  # the full second page
        self.assert_refused(lambda: extend(0xFFFFFFFF0001, page), grpc.StatusCode.NOT_FOUND,
                            "lease")
        reply = self.plan("py-bad", 35, context)
        try:
            self.assert_refused(lambda: extend(reply.lease_id, page),
                                grpc.StatusCode.FAILED_PRECONDITION, "not committed")
            self.stub.CommitStep(
                pb.CommitStepRequest(lease_id=reply.lease_id, keep_partial_last_page=True),
                timeout=TIMEOUT)
            self.assert_refused(lambda: extend(reply.lease_id, page[:-1]),
                                grpc.StatusCode.INVALID_ARGUMENT, "page_tokens")
            wrong = [(t + 1) % VOCAB for t in page]  # not the page's 3 planned tokens
            self.assert_refused(lambda: extend(reply.lease_id, wrong),
                                grpc.StatusCode.INVALID_ARGUMENT, "page_tokens")
            self.assert_refused(lambda: extend(reply.lease_id, page[:-1] + [VOCAB]),
                                grpc.StatusCode.INVALID_ARGUMENT, "page_tokens[15]")
            self.assert_refused(lambda: extend(reply.lease_id, page, 2 * BLOCK_TOKENS),
                                grpc.StatusCode.FAILED_PRECONDITION, "position")
            self.assert_refused(lambda: extend(reply.lease_id, page, MAX_CONTEXT_TOKENS),
                                grpc.StatusCode.INVALID_ARGUMENT, "max_context_tokens")
            self.assert_refused(lambda: extend(reply.lease_id, page, -BLOCK_TOKENS),
                                grpc.StatusCode.INVALID_ARGUMENT, "position -16")
        finally:
            self.release(reply.lease_id)

    def test_a_plan_of_pages_being_written_is_deferred_until_their_commit(self):
        document = tokens(6 * BLOCK_TOKENS, 11)
        writer = self.plan("py-defer", 41, document)
        try:
            self.assertEqual(self.stats().writing_pages, 6)
            question = document + tokens(5, 12)
            before = self.state()
            with self.assertRaises(grpc.RpcError) as raised:
                self.plan("py-defer", 42, question, defer_if_pending_tokens=BLOCK_TOKENS)
            self.assertEqual(raised.exception.code(), grpc.StatusCode.ABORTED,
                             raised.exception.details())
            self.assertIn("96 of the context's tokens are being written by lease %d"
                          % writer.lease_id, raised.exception.details())
            after = self.state()
            self.assertEqual(after.pop("deferred_plans"), before.pop("deferred_plans") + 1)
            self.assertEqual(after, before)  # nothing planned, pinned or allocated
            # 0 (the default) never defers: the plan computes its own copy.
            duplicate = self.plan("py-defer", 43, question)
            self.assertEqual(duplicate.plan.hit_tokens, 0)
            self.release(duplicate.lease_id)
            self.commit(writer.lease_id)
            self.assertEqual(self.stats().writing_pages, 0)
            reader = self.plan("py-defer", 42, question, defer_if_pending_tokens=BLOCK_TOKENS)
            self.assertEqual(reader.plan.hit_tokens, len(document))
            self.release(reader.lease_id)
        finally:
            self.release(writer.lease_id)

    def test_negative_defer_if_pending_tokens_is_invalid(self):
        self.assert_refused(
            lambda: self.plan("py-bad", 44, tokens(8, 1), defer_if_pending_tokens=-1),
            grpc.StatusCode.INVALID_ARGUMENT, "defer_if_pending_tokens")

    def test_watch_events_snapshot_matches_the_index(self):
        reply = self.plan("py-events", 21, tokens(3 * BLOCK_TOKENS, 2))
        self.commit(reply.lease_id)
        self.release(reply.lease_id)
        s = self.stats()

        call = self.stub.WatchEvents(pb.WatchEventsRequest(snapshot=True), timeout=10)
        snapshot = []
        try:
            first = True
            for batch in call:
                if first:
                    self.assertTrue(batch.snapshot_begin)
                    self.assertEqual(batch.daemon_instance, s.daemon_instance)
                    first = False
                for event in batch.events:
                    self.assertEqual(event.kind, pb.KvEvent.STORED)
                    self.assertEqual(event.sequence_number, 0)
                    snapshot.append(event)
                if batch.snapshot_end:
                    self.assertEqual(batch.sequence_number, s.last_event_sequence)
                    break
        finally:
            call.cancel()
        self.assertEqual(len(snapshot), s.indexed_blocks)
        positions = sorted(e.position for e in snapshot)
        self.assertTrue(set([0, 16, 32]).issubset(positions))
        # Every block hash appears once.
        self.assertEqual(len({(e.hash.lo, e.hash.hi) for e in snapshot}), len(snapshot))

    # ------------------------------------------------------------ bad input

    def test_empty_tokens_is_invalid(self):
        self.assert_refused(lambda: self.plan("py-bad", 31, []),
                            grpc.StatusCode.INVALID_ARGUMENT, "tokens")

    def test_token_outside_the_vocabulary_is_invalid(self):
        toks = tokens(40, 8)
        toks[17] = VOCAB
        self.assert_refused(lambda: self.plan("py-bad", 36, toks),
                            grpc.StatusCode.INVALID_ARGUMENT, "tokens[17]")

    def test_sequence_zero_is_invalid(self):
        self.assert_refused(lambda: self.plan("py-bad", 0, tokens(8, 3)),
                            grpc.StatusCode.INVALID_ARGUMENT, "sequence_id")

    def test_oversized_token_list_is_invalid(self):
        self.assert_refused(lambda: self.plan("py-bad", 32, tokens(MAX_CONTEXT_TOKENS + 1, 4)),
                            grpc.StatusCode.INVALID_ARGUMENT, "tokens")

    def test_mismatching_hashes_are_invalid(self):
        wrong = [types_pb2.BlockHash(lo=i + 1, hi=0xABCDEF) for i in range(3)]
        self.assert_refused(
            lambda: self.plan("py-bad", 33, tokens(40, 5), block_hashes=wrong),
            grpc.StatusCode.INVALID_ARGUMENT, "block_hashes")

    def test_unknown_lease_is_not_found(self):
        unknown = 0xFFFFFFFF0000
        self.assert_refused(lambda: self.commit(unknown), grpc.StatusCode.NOT_FOUND, "lease")
        self.assert_refused(lambda: self.release(unknown), grpc.StatusCode.NOT_FOUND, "lease")
        self.assert_refused(
            lambda: self.stub.RenewLease(pb.RenewLeaseRequest(lease_id=unknown), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, "lease")

    def test_double_commit_is_failed_precondition(self):
        reply = self.plan("py-bad", 34, tokens(40, 6))
        self.commit(reply.lease_id)
        try:
            self.assert_refused(lambda: self.commit(reply.lease_id),
                                grpc.StatusCode.FAILED_PRECONDITION, "lease")
        finally:
            self.release(reply.lease_id)

    def test_invalidate_beyond_the_pool_is_out_of_range(self):
        self.assert_refused(
            lambda: self.stub.InvalidateBlocks(
                pb.InvalidateBlocksRequest(block_ids=[POOL_BLOCKS]), timeout=TIMEOUT),
            grpc.StatusCode.OUT_OF_RANGE, "block_ids")

    def test_model_mismatch_is_failed_precondition(self):
        shape = types_pb2.ModelShape(name="llama-3-8b", num_layers=32, num_q_heads=32,
                                     num_kv_heads=8, head_dim=128, dtype_bytes=2,
                                     block_tokens=16)
        self.assert_refused(lambda: self.plan("py-bad", 35, tokens(8, 7), expected_model=shape),
                            grpc.StatusCode.FAILED_PRECONDITION, "expected_model")


if __name__ == "__main__":
    unittest.main()
