// Block transfer between cache daemons, end to end: real gRPC on 127.0.0.1
// (ephemeral ports) and real UCX reads between the daemons' host pools.
//
//   - Two in-process daemons: A is filled through PlanStep / write random KV
//     bytes into A's pool / CommitStep / ReleaseStep; B imports 1,000 blocks
//     of several contexts from A (ImportBlocks). Every layer piece of every
//     imported block is compared byte for byte, B's plans hit, both caches
//     stay consistent, A's exports are released.
//   - Bad ImportBlocks requests get a precise code and message and change
//     nothing on the importer.
//   - The exporter is a separate asymcache-daemon PROCESS (found by
//     tests/services/test_binaries.h) that is SIGKILLed while B reads from
//     it: the import fails
//     and B indexes nothing of it, leaks nothing, stays consistent.
//
// No fixed sleeps: waits poll a condition with a bound that only caps the
// run time of a failing test.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "cachecore/block_hash.h"
#include "cachecore/kv_cache.h"
#include "cachecore/model_config.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/common/proto_convert.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_options.h"
#include "services/daemon/daemon_state.h"
#include "services/daemon/pool_layout.h"
#include "tests/services/child_process.h"
#include "tests/services/test_binaries.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

constexpr char kSalt[] = "tenant-a";

ModelConfig Tiny() { return ModelConfig::Named("tiny").value(); }

DaemonOptions TransferDaemonOptions(int64_t pool_blocks, const ModelConfig& model = Tiny()) {
  DaemonOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_port = -1;
  options.backend = "host";
  options.model = model;
  options.pool_bytes = pool_blocks * model.KvBytesPerBlock();
  options.pool_fraction = 0;
  options.calibrate_on_start = false;
  options.maintenance_interval = absl::Milliseconds(20);
  options.shutdown_grace = absl::Seconds(2);
  return options;
}

std::unique_ptr<CacheDaemon> StartDaemon(const DaemonOptions& options) {
  absl::StatusOr<std::unique_ptr<CacheDaemon>> daemon = CacheDaemon::Start(options);
  if (!daemon.ok()) {
    ADD_FAILURE() << daemon.status();
    return nullptr;
  }
  return *std::move(daemon);
}

std::unique_ptr<v1::CacheDaemon::Stub> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return v1::CacheDaemon::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

std::unique_ptr<grpc::ClientContext> Deadline(absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return ctx;
}

std::string Describe(const grpc::Status& s) {
  return absl::StrCat("code ", s.error_code(), ": ", s.error_message());
}

// A context of `length` tokens, all in the tiny vocabulary, whose first token
// is `first` (contexts with different first tokens share no block).
std::vector<TokenId> Context(int first, int length) {
  std::vector<TokenId> tokens(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) {
    tokens[static_cast<size_t>(i)] = static_cast<TokenId>((first + i * 13 + (i * i) % 7) % 1024);
  }
  tokens[0] = first;
  return tokens;
}

void AddHashes(const std::vector<BlockHash>& hashes, v1::ImportBlocksRequest* request) {
  for (const BlockHash& h : hashes) ToProto(h, request->add_hashes());
}

// Everything an import that fails must leave unchanged on the importer.
std::string ImporterState(CacheDaemon& daemon) {
  const KvCache::Stats s = daemon.state().cache().GetStats();
  return absl::StrCat("free=", s.pool.free, " writing=", s.pool.writing,
                      " evictable=", s.pool.sealed_evictable, " pinned=", s.pool.pinned,
                      " in_transfer=", s.pool.in_transfer, " indexed=", s.indexed_blocks,
                      " evictions=", s.pool.evictions, " leases=", s.active_leases,
                      " exports=", daemon.state().transfer().active_exports(),
                      " last_event=", daemon.state().events().last_sequence());
}

#define EXPECT_CONSISTENT(daemon)                                            \
  do {                                                                       \
    const absl::Status _consistent = (daemon).state().cache().CheckConsistency(); \
    EXPECT_TRUE(_consistent.ok()) << _consistent;                            \
  } while (0)

// PlanStep -> random bytes into every allocated block's layer pieces through
// the daemon's pool mapping -> CommitStep -> ReleaseStep, over gRPC.
// Returns the number of blocks written.
int64_t FillContext(CacheDaemon& daemon, v1::CacheDaemon::Stub& stub, SequenceId sequence,
                    const std::vector<TokenId>& tokens, std::mt19937_64& rng) {
  v1::PlanStepRequest plan_request;
  plan_request.set_salt(kSalt);
  plan_request.set_sequence_id(sequence);
  for (TokenId t : tokens) plan_request.add_tokens(t);
  v1::PlanStepResponse plan;
  const grpc::Status planned = stub.PlanStep(Deadline(absl::Seconds(10)).get(), plan_request, &plan);
  EXPECT_TRUE(planned.ok()) << Describe(planned);
  if (!planned.ok()) return 0;

  const daemon::PoolLayout& layout = daemon.state().pool().layout();
  uint8_t* base = static_cast<uint8_t*>(daemon.state().pool().base());
  int64_t written = 0;
  for (int i = 0; i < plan.plan().page_ids_size(); ++i) {
    if (plan.plan().page_resident(i)) continue;
    const int32_t block = plan.plan().page_ids(i);
    for (int32_t l = 0; l < layout.num_layers; ++l) {
      uint8_t* piece = base + layout.PieceOffset(l, block);
      for (int64_t off = 0; off + 8 <= layout.piece_bytes(); off += 8) {
        const uint64_t word = rng();
        std::memcpy(piece + off, &word, 8);
      }
    }
    ++written;
  }
  v1::CommitStepRequest commit;
  commit.set_lease_id(plan.lease_id());
  v1::CommitStepResponse committed;
  const grpc::Status c = stub.CommitStep(Deadline(absl::Seconds(10)).get(), commit, &committed);
  EXPECT_TRUE(c.ok()) << Describe(c);
  EXPECT_EQ(committed.sealed_blocks(), written);
  EXPECT_EQ(committed.duplicate_blocks(), 0);
  v1::ReleaseStepRequest release;
  release.set_lease_id(plan.lease_id());
  v1::ReleaseStepResponse released;
  const grpc::Status r = stub.ReleaseStep(Deadline(absl::Seconds(10)).get(), release, &released);
  EXPECT_TRUE(r.ok()) << Describe(r);
  return written;
}

// Compares every layer piece of `hash`'s block in `from` and `to`, and the
// identity the importer sealed it with. Returns false (with a failure) on
// the first difference.
bool SameBlock(CacheDaemon& from, CacheDaemon& to, const BlockHash& hash) {
  const std::optional<PrefixIndex::Entry> a = from.state().cache().index().Lookup(hash);
  const std::optional<PrefixIndex::Entry> b = to.state().cache().index().Lookup(hash);
  if (!a.has_value() || !b.has_value()) {
    ADD_FAILURE() << "block " << hash.ToHex() << " indexed on exporter: " << a.has_value()
                  << ", on importer: " << b.has_value();
    return false;
  }
  const std::optional<IndexedBlockInfo> ai = from.state().cache().pool().sealed_info(a->id);
  const std::optional<IndexedBlockInfo> bi = to.state().cache().pool().sealed_info(b->id);
  if (!ai.has_value() || !bi.has_value()) {
    ADD_FAILURE() << "block " << hash.ToHex() << " is not sealed on both daemons";
    return false;
  }
  EXPECT_EQ(bi->position, ai->position) << hash.ToHex();
  EXPECT_EQ(bi->tokens, ai->tokens) << hash.ToHex();
  EXPECT_EQ(bi->parent_hash, ai->parent_hash) << hash.ToHex();
  EXPECT_EQ(b->position, ai->position) << hash.ToHex();
  const daemon::PoolLayout& la = from.state().pool().layout();
  const daemon::PoolLayout& lb = to.state().pool().layout();
  const uint8_t* base_a = static_cast<const uint8_t*>(from.state().pool().base());
  const uint8_t* base_b = static_cast<const uint8_t*>(to.state().pool().base());
  for (int32_t l = 0; l < la.num_layers; ++l) {
    if (std::memcmp(base_a + la.PieceOffset(l, a->id), base_b + lb.PieceOffset(l, b->id),
                    static_cast<size_t>(la.piece_bytes())) != 0) {
      ADD_FAILURE() << "block " << hash.ToHex() << " layer " << l << ": exporter block "
                    << a->id << " and importer block " << b->id << " differ";
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Two in-process daemons.

TEST(BlockTransferTest, ThousandBlocksOfSeveralContextsArriveIntactAndHit) {
  // 8 contexts x 125 blocks; odd contexts end in a partial block (11 tokens).
  constexpr int kContexts = 8;
  constexpr int kBlocksPerContext = 125;
  std::unique_ptr<CacheDaemon> a = StartDaemon(TransferDaemonOptions(1100));
  std::unique_ptr<CacheDaemon> b = StartDaemon(TransferDaemonOptions(1100));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto stub_a = Connect(a->local_address());
  auto stub_b = Connect(b->local_address());

  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(absl::StrCat("byte seed ", seed));
  std::mt19937_64 rng(seed);
  std::vector<std::vector<TokenId>> contexts;
  std::vector<BlockHash> all;
  int64_t written = 0;
  for (int c = 0; c < kContexts; ++c) {
    const int length = kBlocksPerContext * 16 - (c % 2 == 1 ? 5 : 0);
    contexts.push_back(Context(/*first=*/100 + c, length));
    written += FillContext(*a, *stub_a, /*sequence=*/c + 1, contexts.back(), rng);
    for (const BlockHash& h : ChainHashes(kSalt, contexts.back(), 16)) all.push_back(h);
  }
  ASSERT_EQ(written, 1000);
  ASSERT_EQ(all.size(), 1000u);
  ASSERT_EQ(a->state().cache().GetStats().indexed_blocks, 1000);
  const uint64_t events_before = b->state().events().last_sequence();

  v1::ImportBlocksRequest request;
  request.set_peer(a->local_address());
  AddHashes(all, &request);
  v1::ImportBlocksResponse response;
  const grpc::Status imported =
      stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), request, &response);
  ASSERT_TRUE(imported.ok()) << Describe(imported);
  EXPECT_EQ(response.imported(), 1000);
  EXPECT_EQ(response.already_resident(), 0);
  EXPECT_EQ(response.not_on_peer(), 0);
  EXPECT_EQ(response.bytes(), 1000 * Tiny().KvBytesPerBlock());
  EXPECT_GT(response.transfer_seconds(), 0.0);
  std::printf("[ info ] imported 1000 tiny blocks (%lld bytes) in %.3f s\n",
              static_cast<long long>(response.bytes()), response.transfer_seconds());

  // Every layer piece of every block, byte for byte.
  int64_t same = 0;
  for (const BlockHash& h : all) {
    if (!SameBlock(*a, *b, h)) break;
    ++same;
  }
  EXPECT_EQ(same, 1000);

  // Importer state: 1000 indexed, evictable (import pins dropped), 1000 stored
  // events, nothing in transfer; the exporter released its export pins.
  KvCache::Stats sb = b->state().cache().GetStats();
  EXPECT_EQ(sb.indexed_blocks, 1000);
  EXPECT_EQ(sb.pool.in_transfer, 0);
  EXPECT_EQ(sb.pool.pinned, 0);
  EXPECT_EQ(sb.pool.sealed_evictable, 1000);
  EXPECT_EQ(sb.pool.free, 100);
  EXPECT_EQ(b->state().events().last_sequence(), events_before + 1000);
  EXPECT_EQ(a->state().transfer().active_exports(), 0);
  EXPECT_EQ(a->state().cache().GetStats().pool.pinned, 0);
  EXPECT_CONSISTENT(*a);
  EXPECT_CONSISTENT(*b);

  // B's plans on the same contexts now hit every page.
  for (int c = 0; c < kContexts; ++c) {
    SCOPED_TRACE(absl::StrCat("context ", c));
    v1::PlanStepRequest plan_request;
    plan_request.set_salt(kSalt);
    plan_request.set_sequence_id(1000 + c);
    for (TokenId t : contexts[static_cast<size_t>(c)]) plan_request.add_tokens(t);
    v1::PlanStepResponse plan;
    const grpc::Status p =
        stub_b->PlanStep(Deadline(absl::Seconds(10)).get(), plan_request, &plan);
    ASSERT_TRUE(p.ok()) << Describe(p);
    EXPECT_EQ(plan.plan().hit_tokens(), static_cast<int64_t>(contexts[static_cast<size_t>(c)].size()));
    EXPECT_EQ(plan.plan().new_tokens(), 0);
    EXPECT_EQ(plan.plan().allocated_pages_size(), 0);
    v1::ReleaseStepRequest release;
    release.set_lease_id(plan.lease_id());
    v1::ReleaseStepResponse released;
    ASSERT_TRUE(stub_b->ReleaseStep(Deadline(absl::Seconds(10)).get(), release, &released).ok());
  }

  // Importing the same hashes again moves nothing.
  v1::ImportBlocksResponse again;
  const grpc::Status second =
      stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), request, &again);
  ASSERT_TRUE(second.ok()) << Describe(second);
  EXPECT_EQ(again.imported(), 0);
  EXPECT_EQ(again.already_resident(), 1000);
  EXPECT_EQ(again.not_on_peer(), 0);
  EXPECT_EQ(again.bytes(), 0);
  EXPECT_EQ(b->state().cache().GetStats().indexed_blocks, 1000);
  EXPECT_EQ(a->state().transfer().active_exports(), 0);

  // A mixed request: 10 new blocks, 10 resident here, 3 the peer never held.
  const std::vector<TokenId> extra = Context(/*first=*/900, 160);
  FillContext(*a, *stub_a, /*sequence=*/99, extra, rng);
  const std::vector<BlockHash> extra_hashes = ChainHashes(kSalt, extra, 16);
  ASSERT_EQ(extra_hashes.size(), 10u);
  v1::ImportBlocksRequest mixed;
  mixed.set_peer(a->local_address());
  AddHashes(extra_hashes, &mixed);
  AddHashes(std::vector<BlockHash>(all.begin(), all.begin() + 10), &mixed);
  AddHashes({BlockHash{1, 2}, BlockHash{3, 4}, BlockHash{5, 6}}, &mixed);
  v1::ImportBlocksResponse mixed_response;
  const grpc::Status m =
      stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), mixed, &mixed_response);
  ASSERT_TRUE(m.ok()) << Describe(m);
  EXPECT_EQ(mixed_response.imported(), 10);
  EXPECT_EQ(mixed_response.already_resident(), 10);
  EXPECT_EQ(mixed_response.not_on_peer(), 3);
  EXPECT_EQ(mixed_response.bytes(), 10 * Tiny().KvBytesPerBlock());
  for (const BlockHash& h : extra_hashes) EXPECT_TRUE(SameBlock(*a, *b, h));
  EXPECT_EQ(b->state().cache().GetStats().indexed_blocks, 1010);
  EXPECT_EQ(a->state().transfer().active_exports(), 0);
  EXPECT_EQ(a->state().cache().GetStats().pool.pinned, 0);
  EXPECT_EQ(b->state().cache().GetStats().pool.in_transfer, 0);
  EXPECT_CONSISTENT(*a);
  EXPECT_CONSISTENT(*b);
}

// A port nothing listens on: bind an ephemeral port, then close it.
int ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

TEST(BlockTransferTest, BadImportRequestsGetPreciseCodesAndChangeNothing) {
  DaemonOptions importer_options = TransferDaemonOptions(64);
  importer_options.max_transfer_blocks = 32;
  std::unique_ptr<CacheDaemon> a = StartDaemon(TransferDaemonOptions(64));
  std::unique_ptr<CacheDaemon> b = StartDaemon(importer_options);
  // A daemon serving another shape (3 layers instead of 2).
  ModelConfig other = Tiny();
  other.name = "tiny-3-layers";
  other.num_layers = 3;
  std::unique_ptr<CacheDaemon> c = StartDaemon(TransferDaemonOptions(64, other));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  auto stub_a = Connect(a->local_address());
  auto stub_b = Connect(b->local_address());
  auto stub_c = Connect(c->local_address());
  std::mt19937_64 rng(7);
  const std::vector<TokenId> context = Context(/*first=*/5, 64);
  ASSERT_EQ(FillContext(*a, *stub_a, 1, context, rng), 4);
  ASSERT_EQ(FillContext(*c, *stub_c, 1, context, rng), 4);
  const std::vector<BlockHash> hashes = ChainHashes(kSalt, context, 16);
  // B holds something already, so "unchanged" is not trivially "empty".
  {
    v1::ImportBlocksRequest seed;
    seed.set_peer(a->local_address());
    AddHashes({hashes[0]}, &seed);
    v1::ImportBlocksResponse seeded;
    const grpc::Status s = stub_b->ImportBlocks(Deadline(absl::Seconds(10)).get(), seed, &seeded);
    ASSERT_TRUE(s.ok()) << Describe(s);
    ASSERT_EQ(seeded.imported(), 1);
  }
  const std::string before = ImporterState(*b);
  const int closed = ClosedPort();
  ASSERT_GT(closed, 0);

  struct Case {
    const char* what;
    std::string peer;
    int hash_count;  // taken cyclically from `hashes`
    grpc::StatusCode code;
    std::vector<std::string> message;
  };
  const Case cases[] = {
      {"empty peer", "", 3, grpc::StatusCode::INVALID_ARGUMENT, {"peer is empty"}},
      {"no hashes", a->local_address(), 0, grpc::StatusCode::INVALID_ARGUMENT,
       {"hashes is empty"}},
      {"too many hashes", a->local_address(), 33, grpc::StatusCode::INVALID_ARGUMENT,
       {"33 hashes", "limit of 32"}},
      {"unreachable peer", absl::StrCat("127.0.0.1:", closed), 3, grpc::StatusCode::UNAVAILABLE,
       {"ImportBlocks", absl::StrCat("127.0.0.1:", closed)}},
      {"peer of another model", c->local_address(), 3, grpc::StatusCode::FAILED_PRECONDITION,
       {"ImportBlocks", "num_layers"}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    v1::ImportBlocksRequest request;
    request.set_peer(k.peer);
    for (int i = 0; i < k.hash_count; ++i) {
      ToProto(hashes[static_cast<size_t>(i) % hashes.size()], request.add_hashes());
    }
    v1::ImportBlocksResponse response;
    const grpc::Status s =
        stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), request, &response);
    EXPECT_EQ(s.error_code(), k.code) << Describe(s);
    for (const std::string& part : k.message) {
      EXPECT_THAT(s.error_message(), HasSubstr(part));
    }
    std::printf("[ info ] %s: %s\n", k.what, Describe(s).c_str());
    EXPECT_EQ(ImporterState(*b), before);
    EXPECT_EQ(a->state().transfer().active_exports(), 0);
    EXPECT_EQ(c->state().transfer().active_exports(), 0);
  }
  EXPECT_EQ(a->state().cache().GetStats().pool.pinned, 0);
  EXPECT_EQ(c->state().cache().GetStats().pool.pinned, 0);
  EXPECT_CONSISTENT(*a);
  EXPECT_CONSISTENT(*b);
  EXPECT_CONSISTENT(*c);

  // The same request against the right peer still works afterwards.
  v1::ImportBlocksRequest good;
  good.set_peer(a->local_address());
  AddHashes(hashes, &good);
  v1::ImportBlocksResponse done;
  const grpc::Status s = stub_b->ImportBlocks(Deadline(absl::Seconds(10)).get(), good, &done);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(done.imported(), 3);
  EXPECT_EQ(done.already_resident(), 1);
  for (const BlockHash& h : hashes) EXPECT_TRUE(SameBlock(*a, *b, h));
  EXPECT_CONSISTENT(*b);
}

TEST(BlockTransferTest, ImportLargerThanThePoolIsResourceExhaustedAndReleasesTheExport) {
  std::unique_ptr<CacheDaemon> a = StartDaemon(TransferDaemonOptions(64));
  std::unique_ptr<CacheDaemon> small = StartDaemon(TransferDaemonOptions(3));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(small, nullptr);
  auto stub_a = Connect(a->local_address());
  auto stub_small = Connect(small->local_address());
  std::mt19937_64 rng(11);
  const std::vector<TokenId> context = Context(/*first=*/77, 64);
  ASSERT_EQ(FillContext(*a, *stub_a, 1, context, rng), 4);
  // One block held by a lease on the importer: 2 of its 3 blocks can be had.
  v1::PlanStepRequest plan_request;
  plan_request.set_salt(kSalt);
  plan_request.set_sequence_id(5);
  for (TokenId t : Context(/*first=*/78, 16)) plan_request.add_tokens(t);
  v1::PlanStepResponse plan;
  ASSERT_TRUE(stub_small->PlanStep(Deadline(absl::Seconds(10)).get(), plan_request, &plan).ok());
  const std::string before = ImporterState(*small);

  v1::ImportBlocksRequest request;
  request.set_peer(a->local_address());
  AddHashes(ChainHashes(kSalt, context, 16), &request);
  v1::ImportBlocksResponse response;
  const grpc::Status s =
      stub_small->ImportBlocks(Deadline(absl::Seconds(10)).get(), request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("AllocateForImport"));
  EXPECT_EQ(ImporterState(*small), before);
  EXPECT_EQ(a->state().transfer().active_exports(), 0);
  EXPECT_EQ(a->state().cache().GetStats().pool.pinned, 0);
  EXPECT_CONSISTENT(*a);
  EXPECT_CONSISTENT(*small);
}

// ---------------------------------------------------------------------------
// The exporter as a separate process, killed mid-transfer.

// The exporter process is a testing::ChildProcess (tests/services/child_process.h):
// SIGKILLed and reaped by its destructor unless already killed, with
// PR_SET_PDEATHSIG so a crashing test never leaks it.
using testing::ChildProcess;

// Plan + commit + release over gRPC; returns the context's chain hashes.
std::vector<BlockHash> FillRemote(v1::CacheDaemon::Stub& stub, SequenceId sequence,
                                  const std::vector<TokenId>& tokens) {
  v1::PlanStepRequest plan_request;
  plan_request.set_salt(kSalt);
  plan_request.set_sequence_id(sequence);
  for (TokenId t : tokens) plan_request.add_tokens(t);
  v1::PlanStepResponse plan;
  const grpc::Status p = stub.PlanStep(Deadline(absl::Seconds(10)).get(), plan_request, &plan);
  EXPECT_TRUE(p.ok()) << Describe(p);
  v1::CommitStepRequest commit;
  commit.set_lease_id(plan.lease_id());
  v1::CommitStepResponse committed;
  const grpc::Status c = stub.CommitStep(Deadline(absl::Seconds(10)).get(), commit, &committed);
  EXPECT_TRUE(c.ok()) << Describe(c);
  v1::ReleaseStepRequest release;
  release.set_lease_id(plan.lease_id());
  v1::ReleaseStepResponse released;
  const grpc::Status r = stub.ReleaseStep(Deadline(absl::Seconds(10)).get(), release, &released);
  EXPECT_TRUE(r.ok()) << Describe(r);
  return ChainHashes(kSalt, tokens, 16);
}

// Every byte of the child's host pool := kPoison, through its shared memory
// (AttachPool names it), so that arriving bytes are visible on the importer.
constexpr uint8_t kPoison = 0xA5;
// A killed daemon cannot unlink its host pool: the pool's shared-memory name
// is unlinked once the child is dead (its on-kill hook).
bool PoisonRemotePool(v1::CacheDaemon::Stub& stub, ChildProcess& process) {
  v1::AttachPoolResponse pool;
  const grpc::Status s = stub.AttachPool(Deadline(absl::Seconds(10)).get(), {}, &pool);
  if (!s.ok() || pool.backend() != "host" || pool.shm_name().empty()) {
    ADD_FAILURE() << "AttachPool: " << Describe(s) << " backend " << pool.backend();
    return false;
  }
  process.set_on_kill([shm_name = pool.shm_name()] { ::shm_unlink(shm_name.c_str()); });
  const int fd = ::shm_open(pool.shm_name().c_str(), O_RDWR, 0);
  if (fd < 0) {
    ADD_FAILURE() << "shm_open(" << pool.shm_name() << "): " << std::strerror(errno);
    return false;
  }
  void* base = ::mmap(nullptr, pool.pool_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) {
    ADD_FAILURE() << "mmap(" << pool.shm_name() << "): " << std::strerror(errno);
    return false;
  }
  std::memset(base, kPoison, pool.pool_bytes());
  ::munmap(base, pool.pool_bytes());
  return true;
}

TEST(BlockTransferProcessTest, ExporterKilledMidTransferLeavesImporterClean) {
  const std::string binary_path = testing::DaemonBinary();
  if (binary_path.empty()) {
    GTEST_SKIP() << "no asymcache-daemon binary (tests/services/test_binaries.h): the exporter "
                    "must be a separate process to be killed";
  }
  const char* binary = binary_path.c_str();
  // The exporter is killed as soon as the importer (B, in-process) holds
  // in-transfer blocks (allocated after the exporter's ExportBlocks
  // answered): mid-read. A transfer that completes first is retried larger
  // (fresh daemons).
  const int64_t kAttempts[] = {4096, 8192, 16384};
  constexpr int64_t kBaselineBlocks = 16;
  const int64_t block_bytes = Tiny().KvBytesPerBlock();

  std::unique_ptr<CacheDaemon> b;
  std::unique_ptr<v1::CacheDaemon::Stub> stub_b;
  bool caught = false;
  for (int attempt = 0; attempt < 3 && !caught; ++attempt) {
    const int64_t blocks = kAttempts[attempt];
    SCOPED_TRACE(absl::StrCat(blocks, " blocks"));
    stub_b.reset();
    b.reset();
    // Over UCX's tcp transport: on shared memory the importer maps the
    // exporter's staged copy, which stays readable (and complete) after the
    // exporter dies, so the import legitimately succeeds there. tcp is where
    // a dead exporter cuts a read short.
    DaemonOptions importer_options = TransferDaemonOptions(blocks + 2 * kBaselineBlocks + 64);
    importer_options.ucx_transports = "tcp";
    b = StartDaemon(importer_options);
    ASSERT_NE(b, nullptr);
    stub_b = Connect(b->local_address());
    const int64_t pool_mib = ((blocks + kBaselineBlocks) * block_bytes >> 20) + 1;
    testing::ChildProcessOptions exporter_options;
    exporter_options.name = "asymcache-daemon";
    exporter_options.binary = binary;
    exporter_options.flags = {"--plaintext", "--listen=127.0.0.1:0", "--metrics-port=-1",
                              "--backend=host",
                              "--model=tiny", absl::StrCat("--pool-bytes=", pool_mib, "MiB"),
                              "--export-timeout=60s", "--ucx-transports=tcp"};
    absl::StatusOr<std::unique_ptr<ChildProcess>> spawned = ChildProcess::Start(exporter_options);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    std::unique_ptr<ChildProcess> exporter = *std::move(spawned);
    auto stub_x = Connect(exporter->address());
    ASSERT_TRUE(PoisonRemotePool(*stub_x, *exporter));

    // A small import that succeeds first, so B holds blocks of this peer.
    const std::vector<BlockHash> baseline =
        FillRemote(*stub_x, 1, Context(/*first=*/10 + 2 * attempt, kBaselineBlocks * 16));
    {
      v1::ImportBlocksRequest request;
      request.set_peer(exporter->address());
      AddHashes(baseline, &request);
      v1::ImportBlocksResponse response;
      const grpc::Status s =
          stub_b->ImportBlocks(Deadline(absl::Seconds(10)).get(), request, &response);
      ASSERT_TRUE(s.ok()) << Describe(s);
      ASSERT_EQ(response.imported(), kBaselineBlocks);
    }
    const std::vector<BlockHash> big =
        FillRemote(*stub_x, 2, Context(/*first=*/11 + 2 * attempt, static_cast<int>(blocks * 16)));
    {
      v1::GetStatsResponse stats;
      ASSERT_TRUE(stub_x->GetStats(Deadline(absl::Seconds(10)).get(), {}, &stats).ok());
      ASSERT_EQ(stats.indexed_blocks(), blocks + kBaselineBlocks);
    }
    const std::string before = ImporterState(*b);
    const KvCache::Stats stats_before = b->state().cache().GetStats();

    v1::ImportBlocksRequest request;
    request.set_peer(exporter->address());
    AddHashes(big, &request);
    grpc::Status status;
    v1::ImportBlocksResponse response;
    std::atomic<bool> finished{false};
    const absl::Time started = absl::Now();
    std::thread importer([&] {
      // The importer's UCX read_timeout is 10 s: a failed transfer must end
      // well within this deadline.
      status = stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), request, &response);
      finished = true;
    });
    // The kill comes as soon as B holds in-transfer blocks: the exporter has
    // answered ExportBlocks and B is reading (into its staging buffer, then
    // its pool), so the kill lands mid-transfer unless the read is faster
    // than the kill (then the transfer is retried larger).
    const absl::Time give_up = absl::Now() + absl::Seconds(15);
    bool reading = false;
    while (!finished && absl::Now() < give_up) {
      if (b->state().cache().GetStats().pool.in_transfer > 0) {
        reading = true;
        break;
      }
      absl::SleepFor(absl::Microseconds(20));
    }
    std::vector<BlockId> receiving;  // B's in-transfer blocks at the kill
    {
      const BlockPool& pool = b->state().cache().pool();
      for (BlockId id = 0; id < pool.capacity(); ++id) {
        if (pool.state(id) == BlockState::kInTransfer) receiving.push_back(id);
      }
    }
    const absl::Time killed_at = absl::Now();
    exporter->Kill();
    importer.join();
    const absl::Duration fail_took = absl::Now() - killed_at;
    if (!reading || status.ok()) {
      std::printf("[ info ] %lld blocks: finished before the kill (%s, %s); retrying larger\n",
                  static_cast<long long>(blocks), Describe(status).c_str(),
                  absl::FormatDuration(absl::Now() - started).c_str());
      continue;
    }
    caught = true;
    // A client deadline does not stop the handler: wait (bounded) for B to
    // let go of the in-transfer blocks. If it never does, B cannot shut down
    // (its handler is stuck in the read): leak it so the test ends, failed.
    const bool released = [&] {
      const absl::Time bound = absl::Now() + absl::Seconds(3);
      while (b->state().cache().GetStats().pool.in_transfer > 0) {
        if (absl::Now() >= bound) return false;
        absl::SleepFor(absl::Milliseconds(10));
      }
      return true;
    }();
    if (!released) {
      ADD_FAILURE() << "B still holds " << b->state().cache().GetStats().pool.in_transfer
                    << " in-transfer blocks " << absl::FormatDuration(absl::Now() - killed_at)
                    << " after the exporter was killed (ImportBlocks: " << Describe(status)
                    << "): the import never ended; leaking B (it cannot shut down)";
      ::shm_unlink(b->state().pool().Describe().shm_name.c_str());
      (void)stub_b.release();
      (void)b.release();
      return;
    }
    std::printf("[ info ] %lld blocks: exporter killed mid-read; ImportBlocks failed %s after "
                "the kill: %s\n",
                static_cast<long long>(blocks), absl::FormatDuration(fail_took).c_str(),
                Describe(status).c_str());
    EXPECT_TRUE(status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        << Describe(status);
    EXPECT_THAT(status.error_message(), HasSubstr("ImportBlocks"));
    // Nothing of the failed transfer indexed (not even the blocks whose bytes
    // arrived), nothing leaked.
    EXPECT_EQ(ImporterState(*b), before);
    const KvCache::Stats after = b->state().cache().GetStats();
    EXPECT_EQ(after.indexed_blocks, stats_before.indexed_blocks);
    EXPECT_EQ(after.pool.in_transfer, 0);
    EXPECT_EQ(after.pool.free, stats_before.pool.free);
    int64_t resident = 0;
    for (int64_t position : b->state().cache().LookupPositions(big)) resident += position >= 0;
    EXPECT_EQ(resident, 0);
    int64_t freed = 0;
    for (BlockId id : receiving) freed += b->state().cache().pool().state(id) == BlockState::kFree;
    EXPECT_EQ(freed, static_cast<int64_t>(receiving.size()));
    for (int64_t position : b->state().cache().LookupPositions(baseline)) EXPECT_GE(position, 0);
    EXPECT_CONSISTENT(*b);
  }
  ASSERT_TRUE(caught) << "every transfer finished before the exporter was killed";

  // B's transport dropped the dead peer; a live one still serves it (within
  // the transport's 10 s read timeout, so a wedged transport reports itself).
  std::unique_ptr<CacheDaemon> live = StartDaemon(TransferDaemonOptions(64));
  ASSERT_NE(live, nullptr);
  auto stub_live = Connect(live->local_address());
  std::mt19937_64 rng(3);
  const std::vector<TokenId> context = Context(/*first=*/500, 64);
  ASSERT_EQ(FillContext(*live, *stub_live, 1, context, rng), 4);
  v1::ImportBlocksRequest request;
  request.set_peer(live->local_address());
  AddHashes(ChainHashes(kSalt, context, 16), &request);
  v1::ImportBlocksResponse response;
  const grpc::Status s = stub_b->ImportBlocks(Deadline(absl::Seconds(15)).get(), request, &response);
  ASSERT_TRUE(s.ok()) << "after the failed transfer, B cannot read from a live peer: "
                      << Describe(s);
  EXPECT_EQ(response.imported(), 4);
  for (const BlockHash& h : ChainHashes(kSalt, context, 16)) EXPECT_TRUE(SameBlock(*live, *b, h));
  EXPECT_CONSISTENT(*b);
}

}  // namespace
}  // namespace asymcache
