// The typed conformance suite every eviction policy runs (STYLE.md §10): the
// EvictionPolicy contract, independent of how a policy ranks blocks.
#include "cachecore/eviction_policy.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

const CostModel& TestCostModel() {
  static const CostModel* model =
      new CostModel(ModelConfig{}, CostModel::DefaultH100Llama3_8B());
  return *model;
}

template <const char* kName>
struct PolicyType {
  static constexpr const char* name = kName;
};
constexpr char kLru[] = "lru";
constexpr char kLfu[] = "lfu";
constexpr char kLruTail[] = "lru-tail";
constexpr char kFrontFirst[] = "front-first";
constexpr char kAsym[] = "asym";
constexpr char kAsymSampled[] = "asym";  // with sample_sequences = 2

template <typename T>
class EvictionPolicyConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EvictionPolicyOptions options;
    if constexpr (T::name == kAsymSampled) options.sample_sequences = 2;
    absl::StatusOr<std::unique_ptr<EvictionPolicy>> p =
        MakeEvictionPolicy(T::name, &TestCostModel(), options);
    ASSERT_TRUE(p.ok()) << p.status();
    policy_ = *std::move(p);
    ASSERT_EQ(policy_->name(), T::name);
  }

  static BlockHash HashOf(uint64_t x) { return BlockHash{x * 0x9E3779B97F4A7C15ull + 1, x}; }

  // Indexes block `id` as block `index` of a chain of sequence `seq`.
  void Index(BlockId id, SequenceId seq, int64_t index) {
    IndexedBlockInfo info;
    info.id = id;
    info.hash = HashOf(seq * 1000003 + index);
    info.parent_hash = index == 0 ? BlockHash{} : HashOf(seq * 1000003 + index - 1);
    info.position = index * 16;
    info.tokens = 16;
    info.owner = seq;
    policy_->OnIndexed(info, now_);
  }

  absl::Time now_ = absl::UnixEpoch() + absl::Seconds(1000);
  std::unique_ptr<EvictionPolicy> policy_;
};

using PolicyTypes =
    ::testing::Types<PolicyType<kLru>, PolicyType<kLfu>, PolicyType<kLruTail>,
                     PolicyType<kFrontFirst>, PolicyType<kAsym>, PolicyType<kAsymSampled>>;
class PolicyTypeNames {
 public:
  template <typename T>
  static std::string GetName(int i) {
    std::string n = T::name;
    for (char& c : n) if (c == '-') c = '_';
    return i == 5 ? n + "_sampled" : n;
  }
};
TYPED_TEST_SUITE(EvictionPolicyConformanceTest, PolicyTypes, PolicyTypeNames);

TYPED_TEST(EvictionPolicyConformanceTest, EmptyPolicyHasNoVictim) {
  EXPECT_EQ(this->policy_->evictable_count(), 0u);
  EXPECT_EQ(this->policy_->tracked_count(), 0u);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::nullopt);
}

TYPED_TEST(EvictionPolicyConformanceTest, IndexedBlocksAreNotEvictableUntilReleased) {
  for (BlockId id = 0; id < 8; ++id) this->Index(id, 1, id);
  EXPECT_EQ(this->policy_->tracked_count(), 8u);
  EXPECT_EQ(this->policy_->evictable_count(), 0u);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::nullopt);
  this->policy_->SetEvictable(5, true, this->now_);
  EXPECT_EQ(this->policy_->evictable_count(), 1u);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::optional<BlockId>(5));
  EXPECT_EQ(this->policy_->tracked_count(), 7u);
  EXPECT_EQ(this->policy_->evictable_count(), 0u);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::nullopt);
}

TYPED_TEST(EvictionPolicyConformanceTest, NeverReturnsANonEvictableBlock) {
  for (BlockId id = 0; id < 64; ++id) this->Index(id, id % 4, id / 4);
  std::set<BlockId> evictable;
  for (BlockId id = 0; id < 64; id += 3) {
    this->policy_->SetEvictable(id, true, this->now_);
    evictable.insert(id);
  }
  std::set<BlockId> popped;
  while (std::optional<BlockId> v = this->policy_->PopVictim(this->now_)) {
    EXPECT_TRUE(evictable.contains(*v)) << *v;
    EXPECT_TRUE(popped.insert(*v).second) << "returned twice: " << *v;
    this->now_ += absl::Milliseconds(3);
  }
  EXPECT_EQ(popped, evictable);
  EXPECT_EQ(this->policy_->tracked_count(), 64u - evictable.size());
}

TYPED_TEST(EvictionPolicyConformanceTest, SetEvictableFalseHidesABlock) {
  for (BlockId id = 0; id < 4; ++id) {
    this->Index(id, 7, id);
    this->policy_->SetEvictable(id, true, this->now_);
  }
  this->policy_->SetEvictable(2, false, this->now_);
  this->policy_->SetEvictable(2, false, this->now_);  // idempotent
  EXPECT_EQ(this->policy_->evictable_count(), 3u);
  std::set<BlockId> popped;
  while (std::optional<BlockId> v = this->policy_->PopVictim(this->now_)) popped.insert(*v);
  EXPECT_EQ(popped, (std::set<BlockId>{0, 1, 3}));
  EXPECT_EQ(this->policy_->tracked_count(), 1u);
  this->policy_->SetEvictable(2, true, this->now_);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::optional<BlockId>(2));
}

TYPED_TEST(EvictionPolicyConformanceTest, RemovedBlocksAreForgotten) {
  for (BlockId id = 0; id < 6; ++id) {
    this->Index(id, 1 + id % 2, id / 2);
    this->policy_->SetEvictable(id, true, this->now_);
  }
  this->policy_->OnRemoved(1);
  this->policy_->OnRemoved(4);
  this->policy_->OnRemoved(4);  // unknown by now: ignored
  EXPECT_EQ(this->policy_->tracked_count(), 4u);
  EXPECT_EQ(this->policy_->evictable_count(), 4u);
  // Calls about removed or never-indexed ids are ignored.
  this->policy_->SetEvictable(1, true, this->now_);
  this->policy_->OnAccess(1, 3, this->now_);
  this->policy_->SetEvictable(99, true, this->now_);
  this->policy_->OnAccess(99, 3, this->now_);
  EXPECT_EQ(this->policy_->evictable_count(), 4u);
  std::set<BlockId> popped;
  while (std::optional<BlockId> v = this->policy_->PopVictim(this->now_)) popped.insert(*v);
  EXPECT_EQ(popped, (std::set<BlockId>{0, 2, 3, 5}));
  EXPECT_EQ(this->policy_->tracked_count(), 0u);
}

TYPED_TEST(EvictionPolicyConformanceTest, IdsAreReusedAfterRemoval) {
  this->Index(3, 1, 0);
  this->policy_->OnAccess(3, 1, this->now_);
  this->policy_->OnAccess(3, 2, this->now_);  // shared for asym
  this->policy_->SetEvictable(3, true, this->now_);
  ASSERT_EQ(this->policy_->PopVictim(this->now_), std::optional<BlockId>(3));
  // Same id, a different block: must not inherit "evictable" or old state.
  this->Index(3, 9, 5);
  EXPECT_EQ(this->policy_->tracked_count(), 1u);
  EXPECT_EQ(this->policy_->evictable_count(), 0u);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::nullopt);
  this->policy_->SetEvictable(3, true, this->now_);
  EXPECT_EQ(this->policy_->PopVictim(this->now_), std::optional<BlockId>(3));
  // Re-indexing a tracked id replaces the block.
  this->Index(4, 1, 0);
  this->policy_->SetEvictable(4, true, this->now_);
  this->Index(4, 2, 1);
  EXPECT_EQ(this->policy_->tracked_count(), 1u);
  EXPECT_EQ(this->policy_->evictable_count(), 0u);
}

// Random operation sequences against a model of which ids are tracked and
// evictable. Chains share prefixes (forks) and lose blocks in the middle, so
// the asym neighbour bookkeeping runs through its cases.
void RunRandomOps(EvictionPolicy& policy, uint32_t seed, int ops) {
  std::mt19937 rng(seed);
  constexpr BlockId kIds = 96;
  struct Known {
    BlockHash hash;
    int64_t position;
  };
  std::vector<std::optional<Known>> tracked(kIds);
  std::set<BlockId> evictable;
  std::vector<Known> history;  // every block ever indexed (parents may be gone)
  absl::Time now = absl::UnixEpoch() + absl::Seconds(5);
  uint64_t next_hash = 1;
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  for (int op = 0; op < ops; ++op) {
    now += absl::Microseconds(pick(2000000));
    const BlockId id = pick(kIds);
    const SequenceId seq = 1 + pick(12);
    switch (pick(10)) {
      case 0:
      case 1: {  // index (re-indexing a tracked id replaces it)
        IndexedBlockInfo info;
        info.id = id;
        info.hash = BlockHash{next_hash++, 42};
        info.owner = seq;
        info.tokens = 1 + pick(16);
        if (history.empty() || pick(4) == 0) {
          info.position = 0;
        } else {
          const Known& parent = history[pick(static_cast<int>(history.size()))];
          info.parent_hash = parent.hash;
          info.position = parent.position + 16;
        }
        policy.OnIndexed(info, now);
        tracked[id] = Known{info.hash, info.position};
        history.push_back(*tracked[id]);
        evictable.erase(id);
        break;
      }
      case 2:
      case 3:
      case 4:
        policy.SetEvictable(id, true, now);
        if (tracked[id]) evictable.insert(id);
        break;
      case 5:
        policy.SetEvictable(id, false, now);
        evictable.erase(id);
        break;
      case 6:
        policy.OnAccess(id, seq, now);
        break;
      case 7: {
        std::optional<BlockId> v = policy.PopVictim(now);
        ASSERT_EQ(v.has_value(), !evictable.empty()) << "op " << op;
        if (v) {
          ASSERT_TRUE(evictable.contains(*v)) << "op " << op << " returned " << *v;
          evictable.erase(*v);
          tracked[*v].reset();
        }
        break;
      }
      case 8:
        policy.OnRemoved(id);
        tracked[id].reset();
        evictable.erase(id);
        break;
      case 9:
        policy.SetLoadHint(pick(4096));
        break;
    }
    size_t n_tracked = 0;
    for (const auto& t : tracked) n_tracked += t.has_value();
    ASSERT_EQ(policy.tracked_count(), n_tracked) << "op " << op;
    ASSERT_EQ(policy.evictable_count(), evictable.size()) << "op " << op;
  }
  // Drain: exactly the evictable set comes out, then nothing.
  std::set<BlockId> drained;
  while (std::optional<BlockId> v = policy.PopVictim(now)) {
    ASSERT_TRUE(evictable.contains(*v));
    drained.insert(*v);
  }
  EXPECT_EQ(drained, evictable);
  EXPECT_EQ(policy.evictable_count(), 0u);
}

TYPED_TEST(EvictionPolicyConformanceTest, RandomOperationsMatchAModel) {
  std::vector<uint32_t> seeds = {1, 2, 3, 20260101};
  const uint32_t fresh = std::random_device{}();
  seeds.push_back(fresh);
  for (uint32_t seed : seeds) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    if (seed == fresh) std::printf("RandomOperationsMatchAModel fresh seed: %u\n", seed);
    this->SetUp();
    RunRandomOps(*this->policy_, seed, 4000);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(EvictionPolicyFactoryTest, KnowsEveryNameAndRejectsOthers) {
  EXPECT_EQ(EvictionPolicyNames(),
            (std::vector<std::string>{"lru", "lfu", "lru-tail", "front-first", "asym"}));
  for (const std::string& name : EvictionPolicyNames()) {
    absl::StatusOr<std::unique_ptr<EvictionPolicy>> p =
        MakeEvictionPolicy(name, &TestCostModel());
    ASSERT_TRUE(p.ok()) << name << ": " << p.status();
    EXPECT_EQ((*p)->name(), name);
    EXPECT_EQ((*p)->contiguous_prefix_only(), name == "lru-tail");
  }
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> bad = MakeEvictionPolicy("lru2", nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("lru, lfu, lru-tail, front-first, asym"));
  EXPECT_TRUE(MakeEvictionPolicy("lru", nullptr).ok());
  EXPECT_EQ(MakeEvictionPolicy("asym", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EvictionPolicyOptions options;
  options.shared_rate_half_life = absl::ZeroDuration();
  EXPECT_EQ(MakeEvictionPolicy("asym", &TestCostModel(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.sample_sequences = -1;
  EXPECT_EQ(MakeEvictionPolicy("asym", &TestCostModel(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.exact_victim_search = true;
  options.sample_sequences = 4;
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> contradiction =
      MakeEvictionPolicy("asym", &TestCostModel(), options);
  EXPECT_EQ(contradiction.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(contradiction.status().message(), HasSubstr("exact_victim_search"));
  options.sample_sequences = 0;
  EXPECT_TRUE(MakeEvictionPolicy("front-first", &TestCostModel(), options).ok());
}

}  // namespace
}  // namespace asymcache
