// Tests of services/daemon/pool_layout.h and pool_memory.h: the layout
// arithmetic, the host backend through real shared memory (two mappings, a
// forked child process), staging copies against an independent reference, bad
// descriptors, sizing; the CUDA backend on a GPU (skipped without one), with
// the IPC mapping done by a child process that re-runs this binary.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/msa_cuda.h"
#include "services/daemon/pool_layout.h"
#include "services/daemon/pool_memory.h"

extern char** environ;

namespace asymcache::daemon {
namespace {

using ::testing::HasSubstr;

// A small model: 3 layers, 2 kv heads, head dim 8, 4-token blocks, bf16:
// piece = 2*4*2*8*2 = 256 bytes, block = 768 bytes.
ModelConfig SmallModel() {
  ModelConfig m;
  m.name = "small";
  m.num_layers = 3;
  m.num_q_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 8;
  m.dtype_bytes = 2;
  m.block_tokens = 4;
  m.hidden_size = 64;
  m.intermediate_size = 128;
  m.vocab_size = 256;
  return m;
}

PoolLayout SmallLayout(int64_t blocks) {
  absl::StatusOr<PoolLayout> layout = PoolLayout::FromModel(SmallModel(), blocks);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

bool ShmExists(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd >= 0) close(fd);
  return fd >= 0;
}

// ---- layout -----------------------------------------------------------------------

TEST(PoolLayoutTest, SizesFollowTheLayerMajorFormula) {
  const PoolLayout layout = SmallLayout(10);
  EXPECT_EQ(layout.piece_bytes(), 2 * 4 * 2 * 8 * 2);
  EXPECT_EQ(layout.layer_stride_bytes(), 10 * 256);
  EXPECT_EQ(layout.block_bytes(), 3 * 256);
  EXPECT_EQ(layout.bytes(), 3 * 10 * 256);
  EXPECT_EQ(layout.block_bytes(), SmallModel().KvBytesPerBlock());
  EXPECT_EQ(layout.PieceOffset(0, 0), 0);
  EXPECT_EQ(layout.PieceOffset(0, 7), 7 * 256);
  EXPECT_EQ(layout.PieceOffset(2, 3), 2 * 10 * 256 + 3 * 256);
  // Every piece of every block is distinct and inside the pool.
  std::vector<int> owner(layout.bytes(), -1);
  for (int32_t l = 0; l < 3; ++l) {
    for (int64_t b = 0; b < 10; ++b) {
      for (int64_t i = 0; i < layout.piece_bytes(); ++i) {
        const int64_t at = layout.PieceOffset(l, b) + i;
        ASSERT_LT(at, layout.bytes());
        ASSERT_EQ(owner[at], -1) << "overlap at layer " << l << " block " << b;
        owner[at] = l * 10 + static_cast<int>(b);
      }
    }
  }
}

TEST(PoolLayoutTest, Llama8bLayerSliceIsTheMsaPool) {
  absl::StatusOr<PoolLayout> layout = PoolLayout::FromModel(ModelConfig{}, 1000);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // One layer's slice = num_pages * PageElements * 2 bytes (kernels/msa.h).
  msa::AttentionShape shape;  // Llama-3-8B defaults, page 16, bf16
  EXPECT_EQ(layout->layer_stride_bytes(), 1000 * shape.PageElements() * 2);
  EXPECT_EQ(layout->block_bytes(), ModelConfig{}.KvBytesPerBlock());
}

TEST(PoolLayoutTest, BadFieldsAreNamed) {
  EXPECT_THAT(PoolLayout::FromModel(SmallModel(), 0).status().message(),
              HasSubstr("num_blocks must be positive"));
  EXPECT_EQ(PoolLayout::FromModel(SmallModel(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(PoolLayout::FromModel(SmallModel(), kMaxPoolBlocks + 1).status().message(),
              HasSubstr("int32 block ids"));
  ModelConfig bad = SmallModel();
  bad.num_kv_heads = 3;  // does not divide 4 q heads
  EXPECT_EQ(PoolLayout::FromModel(bad, 4).status().code(), absl::StatusCode::kInvalidArgument);
  PoolLayout layout = SmallLayout(4);
  layout.dtype_bytes = 3;
  EXPECT_THAT(layout.Validate().message(), HasSubstr("dtype_bytes must be 1, 2 or 4, got 3"));
  layout = SmallLayout(4);
  layout.head_dim = -8;
  EXPECT_THAT(layout.Validate().message(), HasSubstr("head_dim must be positive"));
}

TEST(PoolLayoutTest, OverflowIsRejected) {
  PoolLayout layout = SmallLayout(4);
  layout.num_blocks = kMaxPoolBlocks;
  layout.head_dim = 1 << 30;
  layout.num_kv_heads = 1 << 20;
  const absl::Status status = layout.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("overflows int64"));
}

TEST(PoolLayoutTest, BlocksForBytesRoundsDown) {
  const ModelConfig m = SmallModel();  // 768 bytes per block
  EXPECT_EQ(PoolLayout::BlocksForBytes(m, 0), 0);
  EXPECT_EQ(PoolLayout::BlocksForBytes(m, -5), 0);
  EXPECT_EQ(PoolLayout::BlocksForBytes(m, 767), 0);
  EXPECT_EQ(PoolLayout::BlocksForBytes(m, 768), 1);
  EXPECT_EQ(PoolLayout::BlocksForBytes(m, 768 * 5 + 767), 5);
}

TEST(PoolLayoutTest, ValidateBlockCopyNamesTheProblem) {
  const PoolLayout layout = SmallLayout(4);
  const std::vector<int64_t> ok = {3, 0, 2};
  EXPECT_TRUE(layout.ValidateBlockCopy(ok, 3 * 768, true).ok());
  EXPECT_TRUE(layout.ValidateBlockCopy(ok, 3 * 768 + 1, true).ok());
  EXPECT_TRUE(layout.ValidateBlockCopy({}, 0, true).ok());
  EXPECT_THAT(layout.ValidateBlockCopy(ok, 3 * 768 - 1, true).message(),
              HasSubstr("too small for 3 blocks of 768 bytes"));
  const std::vector<int64_t> out_of_range = {1, 4};
  EXPECT_THAT(layout.ValidateBlockCopy(out_of_range, 10000, false).message(),
              HasSubstr("block id 4 at index 1 is outside the pool [0, 4)"));
  const std::vector<int64_t> negative = {-1};
  EXPECT_EQ(layout.ValidateBlockCopy(negative, 10000, false).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> twice = {2, 1, 2};
  EXPECT_TRUE(layout.ValidateBlockCopy(twice, 3 * 768, false).ok());
  EXPECT_THAT(layout.ValidateBlockCopy(twice, 3 * 768, true).message(),
              HasSubstr("block id 2 appears twice (indices 0 and 2)"));
}

// ---- backend names ----------------------------------------------------------------

TEST(PoolBackendTest, ParseAndName) {
  EXPECT_EQ(*ParsePoolBackend("host"), PoolBackend::kHost);
  EXPECT_EQ(*ParsePoolBackend("cuda"), PoolBackend::kCuda);
  EXPECT_EQ(PoolBackendName(PoolBackend::kHost), "host");
  EXPECT_EQ(PoolBackendName(PoolBackend::kCuda), "cuda");
  const absl::Status bad = ParsePoolBackend("gpu").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("unknown pool backend 'gpu'; known: host, cuda"));
}

// ---- host backend ------------------------------------------------------------------

TEST(HostPoolTest, TwoMappingsSeeEachOthersWrites) {
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(SmallLayout(8), "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  const PoolDescriptor d = (*pool)->Describe();
  EXPECT_EQ(d.backend, PoolBackend::kHost);
  EXPECT_EQ(d.layout, SmallLayout(8));
  EXPECT_THAT(d.shm_name, HasSubstr(absl::StrCat("/asymcache-", getpid(), "-")));
  EXPECT_TRUE(d.cuda_ipc_handle.empty());
  absl::StatusOr<std::unique_ptr<MappedPool>> a = MapPool(d);
  absl::StatusOr<std::unique_ptr<MappedPool>> b = MapPool(d);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*a)->layout(), d.layout);
  EXPECT_EQ((*a)->backend(), PoolBackend::kHost);
  ASSERT_NE((*a)->base(), (*b)->base());  // two distinct mappings

  // The pool starts zeroed.
  const auto* owner = static_cast<const uint8_t*>((*pool)->base());
  for (int64_t i = 0; i < d.layout.bytes(); ++i) ASSERT_EQ(owner[i], 0) << i;

  auto* pa = static_cast<uint8_t*>((*a)->base());
  auto* pb = static_cast<uint8_t*>((*b)->base());
  const int64_t at = d.layout.PieceOffset(2, 5);
  std::memcpy(pa + at, "written by a", 12);
  EXPECT_EQ(std::memcmp(pb + at, "written by a", 12), 0);
  EXPECT_EQ(std::memcmp(owner + at, "written by a", 12), 0);
  std::memcpy(static_cast<uint8_t*>((*pool)->base()) + 17, "daemon", 6);
  EXPECT_EQ(std::memcmp(pa + 17, "daemon", 6), 0);
  EXPECT_EQ(std::memcmp(pb + 17, "daemon", 6), 0);
}

TEST(HostPoolTest, ForkedChildMapsByDescriptorAndWritesABlock) {
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(SmallLayout(6), "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  const PoolDescriptor d = (*pool)->Describe();
  const int64_t block = 4;
  const pid_t child = fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    // Child: map by descriptor only, write every layer's piece of `block`.
    absl::StatusOr<std::unique_ptr<MappedPool>> mapped = MapPool(d);
    if (!mapped.ok()) _exit(3);
    auto* base = static_cast<uint8_t*>((*mapped)->base());
    for (int32_t l = 0; l < d.layout.num_layers; ++l) {
      std::memset(base + d.layout.PieceOffset(l, block), 0xA0 + l, d.layout.piece_bytes());
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "child could not map the pool";
  std::vector<uint8_t> staged(d.layout.block_bytes());
  const std::vector<int64_t> blocks = {block};
  ASSERT_TRUE((*pool)->CopyBlocksToHost(blocks, absl::MakeSpan(staged)).ok());
  for (int32_t l = 0; l < d.layout.num_layers; ++l) {
    for (int64_t i = 0; i < d.layout.piece_bytes(); ++i) {
      ASSERT_EQ(staged[l * d.layout.piece_bytes() + i], 0xA0 + l) << "layer " << l << " byte " << i;
    }
  }
  // Other blocks untouched.
  const auto* base = static_cast<const uint8_t*>((*pool)->base());
  EXPECT_EQ(base[d.layout.PieceOffset(0, block - 1)], 0);
  EXPECT_EQ(base[d.layout.PieceOffset(0, block + 1)], 0);
}

// Reference staging copy written from the layout formula alone.
std::vector<uint8_t> ReferenceToHost(const uint8_t* pool, const PoolLayout& layout,
                                     const std::vector<int64_t>& blocks) {
  const int64_t piece = 2 * layout.block_tokens * layout.num_kv_heads * layout.head_dim *
                        layout.dtype_bytes;
  std::vector<uint8_t> out;
  for (int64_t b : blocks) {
    for (int32_t l = 0; l < layout.num_layers; ++l) {
      const uint8_t* src = pool + (l * layout.num_blocks + b) * piece;
      out.insert(out.end(), src, src + piece);
    }
  }
  return out;
}

TEST(HostPoolTest, StagingRoundTripUsesTheWireLayout) {
  const PoolLayout layout = SmallLayout(16);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(layout, "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto* base = static_cast<uint8_t*>((*pool)->base());
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  const std::vector<uint8_t> content = RandomBytes(layout.bytes(), seed);
  std::memcpy(base, content.data(), content.size());

  const std::vector<int64_t> blocks = {9, 0, 15, 3, 9};  // reads may repeat
  std::vector<uint8_t> staged(blocks.size() * layout.block_bytes() + 5, 0xEE);
  ASSERT_TRUE((*pool)->CopyBlocksToHost(blocks, absl::MakeSpan(staged)).ok());
  const std::vector<uint8_t> expected = ReferenceToHost(content.data(), layout, blocks);
  ASSERT_TRUE(std::equal(expected.begin(), expected.end(), staged.begin()));
  for (size_t i = expected.size(); i < staged.size(); ++i) EXPECT_EQ(staged[i], 0xEE);

  // Write new random content into other blocks; only those pieces change.
  const std::vector<int64_t> targets = {1, 14, 7};
  const std::vector<uint8_t> incoming =
      RandomBytes(targets.size() * layout.block_bytes(), seed + 1);
  ASSERT_TRUE((*pool)->CopyBlocksFromHost(targets, incoming).ok());
  std::vector<uint8_t> want = content;
  for (size_t i = 0; i < targets.size(); ++i) {
    for (int32_t l = 0; l < layout.num_layers; ++l) {
      std::memcpy(want.data() + (l * layout.num_blocks + targets[i]) * layout.piece_bytes(),
                  incoming.data() + (i * layout.num_layers + l) * layout.piece_bytes(),
                  layout.piece_bytes());
    }
  }
  ASSERT_EQ(std::memcmp(base, want.data(), want.size()), 0);
  std::vector<uint8_t> back(targets.size() * layout.block_bytes());
  ASSERT_TRUE((*pool)->CopyBlocksToHost(targets, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, incoming);
}

TEST(HostPoolTest, StagingBuffersAreWritableAndFreed) {
  const PoolLayout layout = SmallLayout(4);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(layout, "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  absl::StatusOr<StagingBuffer> staging = (*pool)->AllocateStaging(2 * layout.block_bytes());
  ASSERT_TRUE(staging.ok()) << staging.status();
  ASSERT_EQ(staging->size(), static_cast<size_t>(2 * layout.block_bytes()));
  std::memset(staging->data(), 0x5A, staging->size());
  ASSERT_TRUE((*pool)->CopyBlocksFromHost({1, 2}, staging->span()).ok());
  StagingBuffer moved = *std::move(staging);  // ownership moves; freed once (ASan checks)
  EXPECT_EQ(moved.data()[0], 0x5A);
  EXPECT_EQ(static_cast<uint8_t*>((*pool)->base())[layout.PieceOffset(0, 1)], 0x5A);
}

TEST(HostPoolTest, BadCopiesChangeNothing) {
  const PoolLayout layout = SmallLayout(4);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(layout, "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto* base = static_cast<uint8_t*>((*pool)->base());
  const std::vector<uint8_t> before = RandomBytes(layout.bytes(), 7);
  std::memcpy(base, before.data(), before.size());
  const std::vector<uint8_t> in = RandomBytes(2 * layout.block_bytes(), 8);

  const std::vector<int64_t> out_of_range = {0, 4};
  absl::Status s = (*pool)->CopyBlocksFromHost(out_of_range, in);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("block id 4 at index 1"));
  const std::vector<int64_t> two = {0, 1};
  s = (*pool)->CopyBlocksFromHost(two, absl::MakeConstSpan(in).subspan(0, in.size() - 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("too small"));
  const std::vector<int64_t> dup = {1, 1};
  s = (*pool)->CopyBlocksFromHost(dup, in);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("appears twice"));
  EXPECT_EQ(std::memcmp(base, before.data(), before.size()), 0) << "a rejected copy wrote";

  std::vector<uint8_t> out(2 * layout.block_bytes(), 0x5A);
  s = (*pool)->CopyBlocksToHost(two, absl::MakeSpan(out).subspan(0, out.size() - 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = (*pool)->CopyBlocksToHost(out_of_range, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  for (uint8_t b : out) ASSERT_EQ(b, 0x5A) << "a rejected copy wrote";
}

TEST(HostPoolTest, ConcurrentCopiesOfDifferentBlocks) {
  const PoolLayout layout = SmallLayout(64);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(layout, "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Thread t owns blocks t, t + 4, t + 8, ...: writes then reads them back.
      std::vector<int64_t> mine;
      for (int64_t b = t; b < layout.num_blocks; b += kThreads) mine.push_back(b);
      for (int round = 0; round < 50; ++round) {
        const std::vector<uint8_t> in = RandomBytes(mine.size() * layout.block_bytes(),
                                                    t * 1000 + round);
        std::vector<uint8_t> out(in.size());
        if (!(*pool)->CopyBlocksFromHost(mine, in).ok() ||
            !(*pool)->CopyBlocksToHost(mine, absl::MakeSpan(out)).ok() || out != in) {
          ++failures[t];
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

TEST(HostPoolTest, DestructorUnlinksTheName) {
  std::string name;
  {
    absl::StatusOr<std::unique_ptr<PoolMemory>> pool =
        CreateHostPoolMemory(SmallLayout(2), absl::StrCat("/asymcache-test-", getpid(), "-unlink"));
    ASSERT_TRUE(pool.ok()) << pool.status();
    name = (*pool)->Describe().shm_name;
    ASSERT_TRUE(ShmExists(name));
  }
  EXPECT_FALSE(ShmExists(name));
  errno = 0;
  EXPECT_LT(shm_open(name.c_str(), O_RDWR, 0), 0);
  EXPECT_EQ(errno, ENOENT);
}

// Sets a /dev/shm entry's modification time `seconds` into the past.
void AgeShm(const std::string& shm_name, int seconds) {
  const std::string path = absl::StrCat("/dev/shm", shm_name);
  struct timespec times[2];
  times[0].tv_sec = times[1].tv_sec = time(nullptr) - seconds;
  times[0].tv_nsec = times[1].tv_nsec = 0;
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path << ": " << std::strerror(errno);
}

// A daemon killed without destructors (here: a child that _exits with its
// pool alive) leaves its segment; the next host pool created removes it,
// but never a live pool's segment, however old, nor a fresh orphan.
TEST(HostPoolTest, OrphanedSegmentsOfDeadOwnersAreSwept) {
  int names[2];
  ASSERT_EQ(pipe(names), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(SmallLayout(2), "");
    if (!pool.ok()) _exit(3);
    const std::string name = (*pool)->Describe().shm_name;
    if (write(names[1], name.data(), name.size()) != static_cast<ssize_t>(name.size())) _exit(4);
    _exit(0);  // no destructor: the segment stays behind, as after SIGKILL
  }
  close(names[1]);
  char buffer[256] = {};
  const ssize_t n = read(names[0], buffer, sizeof(buffer) - 1);
  close(names[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ASSERT_GT(n, 0);
  const std::string orphan(buffer, static_cast<size_t>(n));
  ASSERT_TRUE(ShmExists(orphan));

  absl::StatusOr<std::unique_ptr<PoolMemory>> live = CreateHostPoolMemory(SmallLayout(2), "");
  ASSERT_TRUE(live.ok()) << live.status();
  const std::string live_name = (*live)->Describe().shm_name;
  // A fresh orphan survives (its creator may still be taking its lock).
  EXPECT_TRUE(ShmExists(orphan));

  AgeShm(orphan, 120);
  AgeShm(live_name, 120);
  absl::StatusOr<std::unique_ptr<PoolMemory>> next = CreateHostPoolMemory(SmallLayout(2), "");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_FALSE(ShmExists(orphan)) << "the dead owner's segment was not removed";
  EXPECT_TRUE(ShmExists(live_name)) << "a live pool's segment was removed";
  absl::StatusOr<std::unique_ptr<MappedPool>> mapped = MapPool((*live)->Describe());
  EXPECT_TRUE(mapped.ok()) << mapped.status();
}

TEST(HostPoolTest, MappingOutlivesTheDaemonsPool) {
  std::unique_ptr<MappedPool> mapped;
  {
    absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(SmallLayout(2), "");
    ASSERT_TRUE(pool.ok()) << pool.status();
    std::memcpy((*pool)->base(), "kept", 4);
    absl::StatusOr<std::unique_ptr<MappedPool>> m = MapPool((*pool)->Describe());
    ASSERT_TRUE(m.ok()) << m.status();
    mapped = std::move(*m);
  }
  EXPECT_EQ(std::memcmp(mapped->base(), "kept", 4), 0);
}

TEST(HostPoolTest, NameCollisionsAndBadNames) {
  const std::string name = absl::StrCat("/asymcache-test-", getpid(), "-taken");
  absl::StatusOr<std::unique_ptr<PoolMemory>> first = CreateHostPoolMemory(SmallLayout(2), name);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<PoolMemory>> second = CreateHostPoolMemory(SmallLayout(2), name);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(second.status().message(), HasSubstr(name));
  // The failed create did not unlink the first pool's name.
  EXPECT_TRUE(ShmExists(name));
  for (const char* bad : {"no-slash", "/", "/a/b", "/sp ace"}) {
    absl::StatusOr<std::unique_ptr<PoolMemory>> p = CreateHostPoolMemory(SmallLayout(2), bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(p.status().message(), HasSubstr("shm_name")) << bad;
  }
  PoolLayout invalid = SmallLayout(2);
  invalid.num_layers = 0;
  EXPECT_EQ(CreateHostPoolMemory(invalid, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostPoolTest, TooLargeAPoolIsResourceExhausted) {
  struct statvfs shm {};
  if (statvfs("/dev/shm", &shm) != 0 || shm.f_blocks == 0) {
    GTEST_SKIP() << "/dev/shm has no size limit: a too-large pool would be allocated page by "
                    "page until the OOM killer stops it";
  }
  // Far more than any /dev/shm holds: rejected before anything is allocated.
  PoolLayout huge = SmallLayout(1);
  huge.num_blocks = kMaxPoolBlocks;
  huge.head_dim = 1 << 14;  // piece = 2*4*2*16384*2 = 512 KiB; pool ~ 3 PiB
  ASSERT_TRUE(huge.Validate().ok());
  const std::string name = absl::StrCat("/asymcache-test-", getpid(), "-huge");
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(huge, name);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kResourceExhausted) << pool.status();
  EXPECT_FALSE(ShmExists(name)) << "a failed create left its name behind";
}

TEST(MapPoolTest, BadDescriptorsGetPreciseCodes) {
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateHostPoolMemory(SmallLayout(8), "");
  ASSERT_TRUE(pool.ok()) << pool.status();
  const PoolDescriptor good = (*pool)->Describe();

  PoolDescriptor d = good;
  d.layout.num_blocks = 9;  // file holds 8 blocks
  absl::Status s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("holds ", good.layout.bytes(), " bytes")));

  d = good;
  d.layout.num_layers = 2;  // smaller layout: also a mismatch
  EXPECT_EQ(MapPool(d).status().code(), absl::StatusCode::kFailedPrecondition);

  d = good;
  d.shm_name = absl::StrCat("/asymcache-test-", getpid(), "-missing");
  s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr(d.shm_name));

  d = good;
  d.shm_name = "";
  s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("shm_name is empty"));

  d = good;
  d.cuda_ipc_handle = std::string(kCudaIpcHandleBytes, '\1');
  s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("backend mismatch"));

  d = good;
  d.backend = PoolBackend::kCuda;  // a host descriptor labelled cuda
  s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("backend mismatch"));

  d = good;
  d.layout.dtype_bytes = 0;
  s = MapPool(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("PoolDescriptor.layout"));

  PoolDescriptor cuda;
  cuda.backend = PoolBackend::kCuda;
  cuda.layout = good.layout;
  cuda.cuda_ipc_handle = "short";
  s = MapPool(cuda).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("must be 64 bytes, got 5"));
  cuda.cuda_ipc_handle = std::string(kCudaIpcHandleBytes, '\0');
  cuda.cuda_device = -1;
  EXPECT_THAT(MapPool(cuda).status().message(), HasSubstr("cuda_device must be >= 0"));

  // The good descriptor still maps after all that.
  EXPECT_TRUE(MapPool(good).ok());
}

// ---- sizing ------------------------------------------------------------------------

TEST(PoolSizingTest, ByBytesRoundsDownToBlocks) {
  const ModelConfig m = SmallModel();  // 768 bytes per block
  absl::StatusOr<int64_t> blocks =
      ResolvePoolBlocks(PoolBackend::kHost, 0, PoolSizeSpec{768 * 100 + 5, 0}, m);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, 100);
}

TEST(PoolSizingTest, SpecErrorsArePrecise) {
  const ModelConfig m = SmallModel();
  auto code_and_message = [&](PoolSizeSpec spec) {
    return ResolvePoolBlocks(PoolBackend::kHost, 0, spec, m).status();
  };
  absl::Status s = code_and_message({1 << 20, 0.5});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("got both"));
  s = code_and_message({0, 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("got neither"));
  s = code_and_message({-1, 0});
  EXPECT_THAT(s.message(), HasSubstr("bytes must be >= 0, got -1"));
  for (double f : {-0.1, 1.5, std::nan("")}) {
    s = code_and_message({0, f});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << f;
    EXPECT_THAT(s.message(), HasSubstr("fraction_of_free must be in (0, 1]")) << f;
  }
  s = code_and_message({767, 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("holds no block of model 'small' (768 bytes per block)"));
  s = code_and_message({768 * (kMaxPoolBlocks + 1), 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("int32 block ids"));
  ModelConfig bad = m;
  bad.head_dim = 0;
  EXPECT_EQ(ResolvePoolBlocks(PoolBackend::kHost, 0, PoolSizeSpec{1 << 20, 0}, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PoolSizingTest, FractionOfFreeHostMemory) {
  absl::StatusOr<int64_t> free = FreeMemoryBytes(PoolBackend::kHost, 0);
  ASSERT_TRUE(free.ok()) << free.status();
  ASSERT_GT(*free, 0);
  const ModelConfig m = SmallModel();
  absl::StatusOr<int64_t> blocks =
      ResolvePoolBlocks(PoolBackend::kHost, 0, PoolSizeSpec{0, 0.01}, m);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  // Free memory moves between the two reads; allow 10% either way.
  const double want = 0.01 * static_cast<double>(*free) / 768;
  EXPECT_GT(static_cast<double>(*blocks), 0.9 * want);
  EXPECT_LT(static_cast<double>(*blocks), 1.1 * want);
  // A share smaller than one block of a huge-block model: RESOURCE_EXHAUSTED.
  ModelConfig big = ModelConfig{};
  big.num_layers = 1 << 20;
  big.block_tokens = 1 << 16;  // 1M layers * 64k tokens * 4 KiB: far beyond any host
  const absl::Status s =
      ResolvePoolBlocks(PoolBackend::kHost, 0, PoolSizeSpec{0, 1e-6}, big).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("no block of model"));
}

TEST(PoolSizingTest, ParsesMemAvailable) {
  absl::StatusOr<int64_t> v = ParseMemAvailableBytes(
      "MemTotal:       131900000 kB\nMemFree:  1000 kB\n"
      "MemAvailable:   123456 kB\nBuffers: 1 kB\n");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, int64_t{123456} * 1024);
  EXPECT_EQ(ParseMemAvailableBytes("MemTotal: 5 kB\n").status().code(),
            absl::StatusCode::kInternal);
  EXPECT_THAT(ParseMemAvailableBytes("MemAvailable: lots kB\n").status().message(),
              HasSubstr("malformed MemAvailable"));
  EXPECT_EQ(ParseMemAvailableBytes("MemAvailable: 12 MB\n").status().code(),
            absl::StatusCode::kInternal);
}

// ---- CUDA backend ------------------------------------------------------------------

// Skips the test without a usable device, saying why (CUDA-less build or machine).
#define SKIP_WITHOUT_GPU()                                                         \
  do {                                                                             \
    absl::StatusOr<msa::GpuInfo> gpu_ = msa::QueryGpu(0);                          \
    if (!gpu_.ok()) GTEST_SKIP() << "no CUDA device: " << gpu_.status().message(); \
  } while (0)

constexpr char kChildHandleEnv[] = "ASYMCACHE_POOL_TEST_CUDA_DESCRIPTOR";

// "hex(handle) device layers blocks block_tokens kv_heads head_dim dtype_bytes"
std::string EncodeCudaDescriptor(const PoolDescriptor& d) {
  return absl::StrCat(absl::BytesToHexString(d.cuda_ipc_handle), " ", d.cuda_device, " ",
                      d.layout.num_layers, " ", d.layout.num_blocks, " ", d.layout.block_tokens,
                      " ", d.layout.num_kv_heads, " ", d.layout.head_dim, " ",
                      d.layout.dtype_bytes);
}

bool DecodeCudaDescriptor(const std::string& text, PoolDescriptor* d) {
  std::vector<std::string> parts = absl::StrSplit(text, ' ');
  if (parts.size() != 8) return false;
  d->backend = PoolBackend::kCuda;
  d->cuda_ipc_handle = absl::HexStringToBytes(parts[0]);
  int64_t v[7];
  for (int i = 0; i < 7; ++i) {
    if (!absl::SimpleAtoi(parts[i + 1], &v[i])) return false;
  }
  d->cuda_device = static_cast<int>(v[0]);
  d->layout.num_layers = static_cast<int32_t>(v[1]);
  d->layout.num_blocks = v[2];
  d->layout.block_tokens = static_cast<int32_t>(v[3]);
  d->layout.num_kv_heads = static_cast<int32_t>(v[4]);
  d->layout.head_dim = static_cast<int32_t>(v[5]);
  d->layout.dtype_bytes = static_cast<int32_t>(v[6]);
  return true;
}

// Runs this test binary again with a gtest filter and one extra environment
// variable; returns the child's exit status (or -1 on a spawn/timeout failure).
int RunSelf(const std::string& filter, const std::string& env_entry, int timeout_s) {
  std::string exe(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (n <= 0) return -1;
  exe.resize(n);
  std::string filter_arg = absl::StrCat("--gtest_filter=", filter);
  char* argv[] = {exe.data(), filter_arg.data(), nullptr};
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back(env_entry);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()) != 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 || std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(CudaPoolTest, PinnedStagingRoundTrip) {
  SKIP_WITHOUT_GPU();
  const PoolLayout layout = SmallLayout(8);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateCudaPoolMemory(layout, 0);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const std::vector<int64_t> blocks = {5, 2, 7};
  absl::StatusOr<StagingBuffer> out = (*pool)->AllocateStaging(blocks.size() * layout.block_bytes());
  absl::StatusOr<StagingBuffer> back = (*pool)->AllocateStaging(blocks.size() * layout.block_bytes());
  ASSERT_TRUE(out.ok() && back.ok());
  const std::vector<uint8_t> content = RandomBytes(out->size(), std::random_device{}());
  std::memcpy(out->data(), content.data(), content.size());
  ASSERT_TRUE((*pool)->CopyBlocksFromHost(blocks, out->span()).ok());
  ASSERT_TRUE((*pool)->CopyBlocksToHost(blocks, back->span()).ok());
  EXPECT_EQ(std::memcmp(back->data(), content.data(), content.size()), 0);
}

TEST(CudaPoolTest, CreateCopyRoundTripAndInProcessMapping) {
  SKIP_WITHOUT_GPU();
  const PoolLayout layout = SmallLayout(32);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateCudaPoolMemory(layout, 0);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const PoolDescriptor d = (*pool)->Describe();
  EXPECT_EQ(d.backend, PoolBackend::kCuda);
  EXPECT_EQ(d.cuda_ipc_handle.size(), kCudaIpcHandleBytes);
  EXPECT_TRUE(d.shm_name.empty());

  // Starts zeroed; a pattern written with cudaMemcpy is read back through the
  // staging copy in the wire layout.
  std::vector<uint8_t> device_image(layout.bytes());
  ASSERT_TRUE(msa::CopyDeviceToHost(device_image.data(), (*pool)->base(), layout.bytes()).ok());
  for (uint8_t b : device_image) ASSERT_EQ(b, 0);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  const std::vector<uint8_t> content = RandomBytes(layout.bytes(), seed);
  ASSERT_TRUE(msa::CopyHostToDevice((*pool)->base(), content.data(), content.size()).ok());
  const std::vector<int64_t> blocks = {31, 0, 17, 17};
  std::vector<uint8_t> staged(blocks.size() * layout.block_bytes());
  ASSERT_TRUE((*pool)->CopyBlocksToHost(blocks, absl::MakeSpan(staged)).ok());
  EXPECT_EQ(staged, ReferenceToHost(content.data(), layout, blocks));

  const std::vector<int64_t> targets = {5, 30};
  const std::vector<uint8_t> incoming = RandomBytes(2 * layout.block_bytes(), seed + 1);
  ASSERT_TRUE((*pool)->CopyBlocksFromHost(targets, incoming).ok());
  std::vector<uint8_t> back(incoming.size());
  ASSERT_TRUE((*pool)->CopyBlocksToHost(targets, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, incoming);
  // Bad copies: nothing changes.
  const std::vector<int64_t> bad = {32};
  EXPECT_EQ((*pool)->CopyBlocksFromHost(bad, incoming).code(), absl::StatusCode::kInvalidArgument);

  // In the exporting process MapPool gives a view of the same allocation.
  absl::StatusOr<std::unique_ptr<MappedPool>> view = MapPool(d);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ((*view)->base(), (*pool)->base());
  PoolDescriptor wrong = d;
  wrong.layout.num_blocks = 31;
  EXPECT_EQ(MapPool(wrong).status().code(), absl::StatusCode::kFailedPrecondition);
  // A handle nobody exported cannot be opened.
  PoolDescriptor stale = d;
  stale.cuda_ipc_handle = std::string(kCudaIpcHandleBytes, '\x5c');
  EXPECT_EQ(MapPool(stale).status().code(), absl::StatusCode::kNotFound);
  // Bad device ordinal.
  EXPECT_EQ(CreateCudaPoolMemory(layout, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The child half of the IPC test: runs only when the parent set the
// environment variable (skipped otherwise). Checks block 1 holds the parent's
// pattern and writes 0x77 into every piece of block 2.
TEST(CudaPoolIpcChild, MapsTheParentsPool) {
  const char* encoded = std::getenv(kChildHandleEnv);
  if (encoded == nullptr) GTEST_SKIP() << "runs only as the child of CudaPoolTest.IpcChildProcess";
  PoolDescriptor d;
  ASSERT_TRUE(DecodeCudaDescriptor(encoded, &d)) << encoded;
  absl::StatusOr<std::unique_ptr<MappedPool>> mapped = MapPool(d);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  auto* base = static_cast<uint8_t*>((*mapped)->base());
  std::vector<uint8_t> piece(d.layout.piece_bytes());
  for (int32_t l = 0; l < d.layout.num_layers; ++l) {
    ASSERT_TRUE(msa::CopyDeviceToHost(piece.data(), base + d.layout.PieceOffset(l, 1),
                                      piece.size()).ok());
    for (uint8_t b : piece) ASSERT_EQ(b, 0x30 + l);
  }
  std::vector<uint8_t> fill(d.layout.piece_bytes(), 0x77);
  for (int32_t l = 0; l < d.layout.num_layers; ++l) {
    ASSERT_TRUE(msa::CopyHostToDevice(base + d.layout.PieceOffset(l, 2), fill.data(),
                                      fill.size()).ok());
  }
}

TEST(CudaPoolTest, IpcChildProcess) {
  SKIP_WITHOUT_GPU();
  const PoolLayout layout = SmallLayout(4);
  absl::StatusOr<std::unique_ptr<PoolMemory>> pool = CreateCudaPoolMemory(layout, 0);
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::vector<uint8_t> block1(layout.block_bytes());
  for (int32_t l = 0; l < layout.num_layers; ++l) {
    std::memset(block1.data() + l * layout.piece_bytes(), 0x30 + l, layout.piece_bytes());
  }
  const std::vector<int64_t> one = {1};
  ASSERT_TRUE((*pool)->CopyBlocksFromHost(one, block1).ok());
  const int code = RunSelf("CudaPoolIpcChild.MapsTheParentsPool",
                           absl::StrCat(kChildHandleEnv, "=",
                                        EncodeCudaDescriptor((*pool)->Describe())),
                           60);
  ASSERT_EQ(code, 0) << "the child failed to map or check the pool (see its output above)";
  std::vector<uint8_t> staged(3 * layout.block_bytes());
  const std::vector<int64_t> blocks = {1, 2, 3};
  ASSERT_TRUE((*pool)->CopyBlocksToHost(blocks, absl::MakeSpan(staged)).ok());
  for (int64_t i = 0; i < layout.block_bytes(); ++i) {
    ASSERT_EQ(staged[i], block1[i]) << "block 1 byte " << i;
    ASSERT_EQ(staged[layout.block_bytes() + i], 0x77) << "block 2 (child's write) byte " << i;
    ASSERT_EQ(staged[2 * layout.block_bytes() + i], 0) << "block 3 byte " << i;
  }
}

TEST(CudaPoolTest, FreeMemoryAndSizing) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<int64_t> free = FreeMemoryBytes(PoolBackend::kCuda, 0);
  ASSERT_TRUE(free.ok()) << free.status();
  EXPECT_GT(*free, int64_t{1} << 30);
  absl::StatusOr<int64_t> blocks =
      ResolvePoolBlocks(PoolBackend::kCuda, 0, PoolSizeSpec{0, 0.1}, ModelConfig{});
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_GT(*blocks, 0);
  EXPECT_EQ(FreeMemoryBytes(PoolBackend::kCuda, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaPoolTest, WithoutAGpuCudaCallsFailPrecisely) {
  if (msa::QueryGpu(0).ok()) GTEST_SKIP() << "a CUDA device is present";
  const absl::Status create = CreateCudaPoolMemory(SmallLayout(2), 0).status();
  EXPECT_EQ(create.code(), absl::StatusCode::kFailedPrecondition) << create;
  EXPECT_THAT(create.message(), ::testing::AnyOf(HasSubstr("built without CUDA"),
                                                 HasSubstr("no CUDA device")));
  PoolDescriptor d;
  d.backend = PoolBackend::kCuda;
  d.layout = SmallLayout(2);
  d.cuda_ipc_handle = std::string(kCudaIpcHandleBytes, '\0');
  EXPECT_EQ(MapPool(d).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FreeMemoryBytes(PoolBackend::kCuda, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResolvePoolBlocks(PoolBackend::kCuda, 0, PoolSizeSpec{0, 0.5}, SmallModel())
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  // Argument checks still come first.
  PoolLayout invalid = SmallLayout(2);
  invalid.num_blocks = 0;
  EXPECT_EQ(CreateCudaPoolMemory(invalid, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asymcache::daemon
