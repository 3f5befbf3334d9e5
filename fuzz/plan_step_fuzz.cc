// Fuzz target: the cache daemon's PlanStep request, from wire bytes to a plan.
//
// Input: bytes parsed as an asymcache.v1.PlanStepRequest (bytes that do not
// parse are skipped: gRPC refuses them before any handler runs).
//
// Path: the real CacheDaemonService over a real CacheDaemonState (host pool of
// kPoolBlocks blocks of the tiny model, asym policy, built-in CPU
// calibration, a clock that never moves), called through an in-process gRPC
// channel: the handler's validation, the proto -> core conversion, KvCache
// planning, and the plan's conversion back, as a network client reaches them.
//
// Invariants checked (beyond "no crash, no sanitizer report"):
//   - the validator against the rules cache_daemon.proto states for
//     PlanStepRequest, checked here independently: a request that breaks one
//     is refused with that rule's code (INVALID_ARGUMENT "PlanStep: ..." or
//     FAILED_PRECONDITION for another model shape); one that breaks none is
//     planned, or RESOURCE_EXHAUSTED exactly when its pages exceed the pool;
//   - a refusal leaves the cache untouched (no lease, no block used);
//   - an accepted plan converts back (FromProto) and passes ValidateStepPlan
//     with the request's chain hashes; on an empty cache it is all tail;
//   - commit, then the same request again: every page resident, in the same
//     blocks; invalidate one block: exactly that page is rebuilt (a hole, or
//     the tail when it is the last page);
//   - decode rollover (ExtendLease): committed with keep_partial_last_page,
//     a context whose last page is partial rolls that page over once full
//     (tokens of the request, then filler): sealed under the extended
//     context's chain hash, the next page at the right position, a spare
//     when asked; a page whose planned tokens differ is INVALID_ARGUMENT and
//     a block-aligned context (no private page) FAILED_PRECONDITION, both
//     changing nothing;
//   - afterwards (release, invalidate) the pool is empty again: nothing
//     leaked, and KvCache::CheckConsistency() holds.
// Every input starts from an empty cache, so a crash reproduces from its
// input alone.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "cachecore/block_hash.h"
#include "cachecore/clock.h"
#include "cachecore/kv_cache.h"
#include "cachecore/model_config.h"
#include "cachecore/step_plan.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"
#include "services/daemon/cache_daemon_service.h"
#include "services/daemon/daemon_options.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {
namespace {

// Pool and context limits: a context of up to kMaxContextTokens passes the
// length check, but only kPoolBlocks pages fit the pool, so both refusals
// (INVALID_ARGUMENT for length, RESOURCE_EXHAUSTED for room) are reachable
// with inputs of a few kilobytes.
constexpr int64_t kPoolBlocks = 32;
constexpr int64_t kMaxContextTokens = 1024;

// The codes the rules of PlanStepRequest allow for a request, found without
// the daemon's code: cache_daemon.proto's comments, restated.
struct Expected {
  bool invalid_argument = false;     // a rule on sequence_id, tokens or block_hashes broken
  bool failed_precondition = false;  // expected_model given and not the daemon's shape
  std::string why;                   // the first rule broken (for failure messages)

  bool refused() const { return invalid_argument || failed_precondition; }
  void Break(bool* flag, absl::string_view rule) {
    if (why.empty()) why = std::string(rule);
    *flag = true;
  }
};

Expected ExpectedRefusal(const v1::PlanStepRequest& request, const ModelConfig& model) {
  Expected e;
  if (request.sequence_id() == 0) e.Break(&e.invalid_argument, "sequence_id is 0");
  if (request.tokens().empty()) e.Break(&e.invalid_argument, "tokens is empty");
  if (request.tokens_size() > kMaxContextTokens) {
    e.Break(&e.invalid_argument, "more tokens than max_context_tokens");
  }
  for (int32_t token : request.tokens()) {
    if (token < 0 || token >= model.vocab_size) {
      e.Break(&e.invalid_argument, "a token outside the vocabulary");
      break;
    }
  }
  // proto3 cannot tell an empty message from an absent one: empty = not given.
  const v1::ModelShape& shape = request.expected_model();
  if (shape.ByteSizeLong() > 0 &&
      (shape.num_layers() != model.num_layers || shape.num_q_heads() != model.num_q_heads ||
       shape.num_kv_heads() != model.num_kv_heads || shape.head_dim() != model.head_dim ||
       shape.dtype_bytes() != model.dtype_bytes || shape.block_tokens() != model.block_tokens)) {
    e.Break(&e.failed_precondition, "expected_model differs from the daemon's shape");
  }
  if (!request.block_hashes().empty()) {
    const std::vector<BlockHash> ours =
        ChainHashes(request.salt(),
                    absl::MakeConstSpan(request.tokens().data(), request.tokens().size()),
                    model.block_tokens);
    bool equal = static_cast<size_t>(request.block_hashes_size()) == ours.size();
    for (size_t i = 0; equal && i < ours.size(); ++i) {
      equal = FromProto(request.block_hashes(static_cast<int>(i))) == ours[i];
    }
    if (!equal) e.Break(&e.invalid_argument, "block_hashes differ from the tokens' chain hashes");
  }
  return e;
}

class PlanStepHarness {
 public:
  static PlanStepHarness& Get() {
    static PlanStepHarness* harness = new PlanStepHarness();  // lives for the whole run
    return *harness;
  }

  void Run(const v1::PlanStepRequest& request);

 private:
  PlanStepHarness();

  KvCache& cache() { return state_->cache(); }
  const ModelConfig& model() const { return state_->model(); }

  grpc::Status Plan(const v1::PlanStepRequest& request, v1::PlanStepResponse* response);
  void Commit(uint64_t lease_id, int64_t expected_sealed);
  void Release(uint64_t lease_id);
  void Invalidate(absl::Span<const int32_t> block_ids);
  // Step 5 of Run: plan, commit keeping the partial page, ExtendLease.
  void RollOver(const v1::PlanStepRequest& request);
  // The accepted plan against the request: geometry, residency per page
  // (`resident`), the counters and the ids.
  void CheckPlan(const v1::PlanStepRequest& request, const v1::PlanStepResponse& response,
                 const std::vector<bool>& resident);
  // Nothing held, nothing cached, the index consistent with the pool.
  void CheckEmpty(absl::string_view when);

  FakeClock clock_;
  std::unique_ptr<CacheDaemonState> state_;
  std::unique_ptr<CacheDaemonService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::CacheDaemon::Stub> stub_;
};

PlanStepHarness::PlanStepHarness() {
  DaemonOptions options;
  options.metrics_port = -1;
  options.backend = "host";
  options.model = ModelConfig::Named("tiny").value();
  options.pool_bytes = kPoolBlocks * options.model.KvBytesPerBlock();
  options.pool_fraction = 0;
  options.calibrate_on_start = false;
  options.max_context_tokens = kMaxContextTokens;
  options.clock = &clock_;
  absl::StatusOr<std::unique_ptr<CacheDaemonState>> state = CacheDaemonState::Create(options);
  FUZZ_CHECK(state.ok(), "cannot build the daemon state: ", state.status().ToString());
  state_ = *std::move(state);
  FUZZ_CHECK(cache().pool().capacity() == kPoolBlocks, "pool of ", cache().pool().capacity(),
             " blocks, wanted ", kPoolBlocks);
  // Peer channels serve ImportBlocks only, which no input reaches.
  service_ = std::make_unique<CacheDaemonService>(state_.get(), grpc::InsecureChannelCredentials());
  grpc::ServerBuilder builder;  // no listening port: in-process channel only
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  FUZZ_CHECK(server_ != nullptr, "cannot start the in-process gRPC server");
  stub_ = v1::CacheDaemon::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
}

grpc::Status PlanStepHarness::Plan(const v1::PlanStepRequest& request,
                                   v1::PlanStepResponse* response) {
  grpc::ClientContext ctx;
  return stub_->PlanStep(&ctx, request, response);
}

void PlanStepHarness::Commit(uint64_t lease_id, int64_t expected_sealed) {
  grpc::ClientContext ctx;
  v1::CommitStepRequest request;
  request.set_lease_id(lease_id);
  v1::CommitStepResponse response;
  const grpc::Status s = stub_->CommitStep(&ctx, request, &response);
  FUZZ_CHECK(s.ok(), "CommitStep: ", s.error_message());
  FUZZ_CHECK(response.sealed_blocks() == expected_sealed && response.duplicate_blocks() == 0 &&
                 response.private_blocks() == 0,
             "CommitStep sealed ", response.sealed_blocks(), " (duplicates ",
             response.duplicate_blocks(), ", private ", response.private_blocks(), "), wanted ",
             expected_sealed);
}

void PlanStepHarness::Release(uint64_t lease_id) {
  grpc::ClientContext ctx;
  v1::ReleaseStepRequest request;
  request.set_lease_id(lease_id);
  v1::ReleaseStepResponse response;
  const grpc::Status s = stub_->ReleaseStep(&ctx, request, &response);
  FUZZ_CHECK(s.ok(), "ReleaseStep: ", s.error_message());
}

void PlanStepHarness::Invalidate(absl::Span<const int32_t> block_ids) {
  grpc::ClientContext ctx;
  v1::InvalidateBlocksRequest request;
  request.mutable_block_ids()->Assign(block_ids.begin(), block_ids.end());
  v1::InvalidateBlocksResponse response;
  const grpc::Status s = stub_->InvalidateBlocks(&ctx, request, &response);
  FUZZ_CHECK(s.ok(), "InvalidateBlocks: ", s.error_message());
  FUZZ_CHECK(response.invalidated() == static_cast<int64_t>(block_ids.size()), "invalidated ",
             response.invalidated(), " of ", block_ids.size(), " blocks");
}

void PlanStepHarness::CheckPlan(const v1::PlanStepRequest& request,
                                const v1::PlanStepResponse& response,
                                const std::vector<bool>& resident) {
  const v1::StepPlan& wire = response.plan();
  const int64_t n = request.tokens_size();
  const int block = model().block_tokens;
  const int64_t pages = static_cast<int64_t>(resident.size());
  FUZZ_CHECK(response.lease_id() != 0, "lease id 0");
  FUZZ_CHECK(wire.sequence_id() == request.sequence_id() && wire.context_tokens() == n &&
                 wire.block_tokens() == block,
             "plan header: sequence ", wire.sequence_id(), ", ", wire.context_tokens(),
             " tokens, block ", wire.block_tokens(), " for sequence ", request.sequence_id(), ", ",
             n, " tokens, block ", block);

  absl::StatusOr<StepPlan> plan = FromProto(wire);
  FUZZ_CHECK(plan.ok(), "the daemon's own plan does not convert back: ", plan.status().ToString());
  plan->hashes = ChainHashes(request.salt(),
                             absl::MakeConstSpan(request.tokens().data(), request.tokens().size()),
                             block);
  const absl::Status valid = ValidateStepPlan(*plan);
  FUZZ_CHECK(valid.ok(), "ValidateStepPlan: ", valid.ToString());
  FUZZ_CHECK(static_cast<int64_t>(plan->page_ids.size()) == pages, plan->page_ids.size(),
             " pages, wanted ", pages);

  int64_t hit = 0;
  int64_t contiguous_hit = 0;
  bool prefix = true;
  std::vector<bool> seen(static_cast<size_t>(kPoolBlocks), false);
  for (int64_t k = 0; k < pages; ++k) {
    const BlockId id = plan->page_ids[k];
    FUZZ_CHECK(id >= 0 && id < kPoolBlocks && !seen[id], "page ", k, ": block ", id,
               " outside the pool or used twice");
    seen[id] = true;
    FUZZ_CHECK((plan->page_resident[k] != 0) == resident[k], "page ", k, " resident=",
               static_cast<int>(plan->page_resident[k]), ", wanted ", resident[k]);
    if (resident[k]) {
      hit += plan->page_lengths[k];
      if (prefix) contiguous_hit += plan->page_lengths[k];
    } else {
      prefix = false;
    }
  }
  FUZZ_CHECK(plan->hit_tokens == hit && wire.contiguous_hit_tokens() == contiguous_hit,
             "hit tokens ", plan->hit_tokens, " (contiguous ", wire.contiguous_hit_tokens(),
             "), wanted ", hit, " (", contiguous_hit, ")");
}

void PlanStepHarness::CheckEmpty(absl::string_view when) {
  const KvCache::Stats stats = cache().GetStats();
  FUZZ_CHECK(stats.pool.free == stats.pool.capacity && stats.indexed_blocks == 0 &&
                 stats.active_leases == 0,
             when, ": free ", stats.pool.free, " of ", stats.pool.capacity, ", indexed ",
             stats.indexed_blocks, ", leases ", stats.active_leases, ", writing ",
             stats.pool.writing, ", sealed ", stats.pool.sealed_evictable, ", pinned ",
             stats.pool.pinned);
  const absl::Status consistent = cache().CheckConsistency();
  FUZZ_CHECK(consistent.ok(), when, ": ", consistent.ToString());
}

void PlanStepHarness::Run(const v1::PlanStepRequest& request) {
  CheckEmpty("before the request");
  const Expected expected = ExpectedRefusal(request, model());
  const int64_t n = request.tokens_size();
  const int block = model().block_tokens;
  const int64_t pages = (n + block - 1) / block;

  v1::PlanStepResponse first;
  const absl::Status status = FromGrpcStatus(Plan(request, &first));
  const absl::StatusCode code = status.code();
  if (expected.refused()) {
    const bool allowed = (expected.invalid_argument && code == absl::StatusCode::kInvalidArgument) ||
                         (expected.failed_precondition &&
                          code == absl::StatusCode::kFailedPrecondition);
    FUZZ_CHECK(allowed, "the request breaks a rule (", expected.why, ") but got ",
               status.ToString());
    FUZZ_CHECK(absl::StartsWith(status.message(), "PlanStep: "),
               "refusal without the method's name: ", status.ToString());
    cache().ForgetSession(request.sequence_id());
    CheckEmpty("after a refusal");
    return;
  }
  if (pages > kPoolBlocks) {
    FUZZ_CHECK(code == absl::StatusCode::kResourceExhausted && !status.message().empty(), pages,
               " pages on a pool of ", kPoolBlocks, " blocks, got ", status.ToString());
    cache().ForgetSession(request.sequence_id());  // the next input starts from nothing
    CheckEmpty("after RESOURCE_EXHAUSTED");
    return;
  }
  FUZZ_CHECK(status.ok(), "a request that breaks no rule was refused: ", status.ToString());

  // 1. An empty cache: every page is allocated, the whole context is tail.
  CheckPlan(request, first, std::vector<bool>(pages, false));
  FUZZ_CHECK(first.plan().new_tokens() == n && first.plan().rebuild_tokens() == 0,
             "first plan: new ", first.plan().new_tokens(), ", rebuild ",
             first.plan().rebuild_tokens(), " of ", n, " tokens");
  Commit(first.lease_id(), pages);
  Release(first.lease_id());

  // 2. The same request again: everything hits, in the blocks just written.
  v1::PlanStepResponse second;
  const grpc::Status again = Plan(request, &second);
  FUZZ_CHECK(again.ok(), "re-planning a committed request: ", again.error_message());
  CheckPlan(request, second, std::vector<bool>(pages, true));
  for (int64_t k = 0; k < pages; ++k) {
    FUZZ_CHECK(second.plan().page_ids(k) == first.plan().page_ids(k), "page ", k, " moved from block ",
               first.plan().page_ids(k), " to ", second.plan().page_ids(k));
  }
  Release(second.lease_id());

  // 3. One block invalidated: exactly its page is rebuilt, a hole unless it
  // is the last page (then the tail).
  const int64_t victim = static_cast<int64_t>(request.sequence_id() % static_cast<uint64_t>(pages));
  const int32_t victim_block = first.plan().page_ids(victim);
  Invalidate(absl::MakeConstSpan(&victim_block, 1));
  v1::PlanStepResponse third;
  const grpc::Status rebuilt = Plan(request, &third);
  FUZZ_CHECK(rebuilt.ok(), "re-planning with one block invalidated: ", rebuilt.error_message());
  std::vector<bool> resident(pages, true);
  resident[victim] = false;
  CheckPlan(request, third, resident);
  const int64_t victim_tokens = std::min<int64_t>(block, n - victim * block);
  const bool last = victim == pages - 1;
  FUZZ_CHECK(third.plan().rebuild_tokens() == (last ? 0 : victim_tokens) &&
                 third.plan().new_tokens() == (last ? victim_tokens : 0),
             "page ", victim, " of ", pages, " invalidated: rebuild ",
             third.plan().rebuild_tokens(), ", new ", third.plan().new_tokens());
  Commit(third.lease_id(), 1);
  Release(third.lease_id());

  // 4. Back to an empty cache (the next input starts from one too).
  Invalidate(absl::MakeConstSpan(third.plan().page_ids().data(), third.plan().page_ids_size()));
  cache().ForgetSession(request.sequence_id());
  CheckEmpty("after invalidating the request's blocks");

  // 5. Decode rollover, when the pool has room for the next page and a spare.
  if (pages + 2 <= kPoolBlocks) RollOver(request);
}

void PlanStepHarness::RollOver(const v1::PlanStepRequest& request) {
  const int64_t n = request.tokens_size();
  const int block = model().block_tokens;
  const int64_t pages = (n + block - 1) / block;
  v1::PlanStepResponse planned;
  const grpc::Status plan = Plan(request, &planned);
  FUZZ_CHECK(plan.ok(), "planning for the rollover: ", plan.error_message());
  const uint64_t lease = planned.lease_id();
  {
    grpc::ClientContext ctx;
    v1::CommitStepRequest commit;
    commit.set_lease_id(lease);
    commit.set_keep_partial_last_page(true);
    v1::CommitStepResponse committed;
    const grpc::Status s = stub_->CommitStep(&ctx, commit, &committed);
    FUZZ_CHECK(s.ok(), "CommitStep keeping the partial page: ", s.error_message());
    FUZZ_CHECK(committed.private_blocks() == (n % block != 0 ? 1 : 0), "private blocks ",
               committed.private_blocks(), " for ", n, " tokens");
  }
  // The full last page: the request's tokens of that page, then filler.
  std::vector<int32_t> context(request.tokens().begin(), request.tokens().end());
  while (static_cast<int64_t>(context.size()) < pages * block) {
    context.push_back(context[context.size() % static_cast<size_t>(n)]);
  }
  const int64_t page_begin = (pages - 1) * block;
  auto extend = [&](absl::Span<const int32_t> page, bool spare, v1::ExtendLeaseResponse* out,
                    int64_t position) {
    grpc::ClientContext ctx;
    v1::ExtendLeaseRequest extend_request;
    extend_request.set_lease_id(lease);
    extend_request.set_position(position);
    extend_request.mutable_page_tokens()->Assign(page.begin(), page.end());
    extend_request.set_reserve_spare(spare);
    return FromGrpcStatus(stub_->ExtendLease(&ctx, extend_request, out));
  };
  const absl::Span<const int32_t> page =
      absl::MakeConstSpan(context).subspan(static_cast<size_t>(page_begin),
                                           static_cast<size_t>(block));
  const KvCache::Stats before = cache().GetStats();
  v1::ExtendLeaseResponse out;
  if (n % block == 0) {
    const absl::Status refused = extend(page, false, &out, page_begin);
    FUZZ_CHECK(refused.code() == absl::StatusCode::kFailedPrecondition,
               "ExtendLease without a private page: ", refused.ToString());
  } else {
    std::vector<int32_t> wrong(page.begin(), page.end());
    wrong[0] = static_cast<int32_t>((wrong[0] + 1) % model().vocab_size);  // a planned token differs
    const absl::Status refused = extend(wrong, false, &out, page_begin);
    FUZZ_CHECK(refused.code() == absl::StatusCode::kInvalidArgument,
               "ExtendLease with a page that contradicts the plan: ", refused.ToString());
    const absl::Status stale = extend(page, false, &out, page_begin + block);
    FUZZ_CHECK(stale.code() == absl::StatusCode::kFailedPrecondition ||
                   stale.code() == absl::StatusCode::kInvalidArgument,  // past max_context_tokens
               "ExtendLease naming another page: ", stale.ToString());
  }
  const KvCache::Stats after_refusal = cache().GetStats();
  FUZZ_CHECK(after_refusal.indexed_blocks == before.indexed_blocks &&
                 after_refusal.pool.free == before.pool.free &&
                 after_refusal.pool.writing == before.pool.writing,
             "a refused ExtendLease changed the cache");
  std::vector<int32_t> sealed(planned.plan().page_ids().begin(), planned.plan().page_ids().end());
  if (n % block != 0) {
    const bool spare = (request.sequence_id() & 1) != 0;
    const absl::Status s = extend(page, spare, &out, page_begin);
    FUZZ_CHECK(s.ok(), "ExtendLease of the full private page: ", s.ToString());
    FUZZ_CHECK(out.sealed() && out.position() == pages * block &&
                   out.has_spare_block_id() == spare,
               "ExtendLease: sealed ", out.sealed(), ", position ", out.position(), ", spare ",
               out.spare_block_id(), " for ", pages, " pages, spare asked ", spare);
    const BlockHash full = ChainHashes(request.salt(), context, block).back();
    const std::vector<int64_t> where = cache().LookupPositions(absl::MakeConstSpan(&full, 1));
    FUZZ_CHECK(where[0] == page_begin, "the sealed page is indexed at ", where[0], ", wanted ",
               page_begin);
  }
  Release(lease);
  Invalidate(sealed);
  cache().ForgetSession(request.sequence_id());
  CheckEmpty("after the rollover");
}

}  // namespace
}  // namespace asymcache

// UCX (libucs, not built with the sanitizers, so its stacks end at
// ucs_malloc) loses a few bytes of its own on first use; leaks anywhere else
// are still findings. Built into the binary so a reproducer runs as is.
extern "C" const char* __lsan_default_suppressions() { return "leak:libucs.so\n"; }
extern "C" const char* __lsan_default_options() { return "print_suppressions=0"; }

// protobuf logs every string field with invalid UTF-8 it refuses to parse:
// noise here, where such bytes are the point.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::v1::PlanStepRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  asymcache::PlanStepHarness::Get().Run(request);
  return 0;
}
