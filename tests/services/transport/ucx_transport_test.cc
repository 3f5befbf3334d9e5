// UcxTransport tests. The peers are real processes: this test binary re-runs
// itself (/proc/self/exe, see PeerProcess) in "exporter" or "importer" mode,
// chosen by an environment variable that a static initializer checks before
// gtest starts. Exporters fill their region with a seeded pattern, so the
// parent checks every byte it reads without shipping the expected data.
#include "services/transport/ucx_transport.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

// LeakSanitizer: UCX 1.13's libuct leaks ~100 bytes when an mm endpoint fails
// to attach to a dead peer's FIFO (mm_ep.c "failed to connect to remote
// FIFO"), which the peer-killed tests provoke on purpose. libuct has no frame
// pointers, so the suppression cannot be narrower than the library; leaks of
// our own objects (ucp requests, rkeys, regions) are in other libraries.
extern "C" const char* __lsan_default_suppressions() { return "leak:libuct.so\n"; }

namespace asymcache {
namespace {

using ::testing::HasSubstr;
using ErrorHandling = UcxTransportOptions::ErrorHandling;

constexpr size_t kBlock = 64 << 10;

// ---------------------------------------------------------------------------
// The seeded pattern: 64-bit word k of a region is Mix(seed, k).

uint64_t Mix(uint64_t seed, uint64_t k) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (k + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Writes the pattern bytes [offset, offset + bytes) of a region; offset and
// bytes are multiples of 8.
void FillPattern(uint64_t seed, size_t offset, void* dst, size_t bytes) {
  auto* words = static_cast<uint64_t*>(dst);
  for (size_t i = 0; i < bytes / 8; ++i) words[i] = Mix(seed, offset / 8 + i);
}

bool MatchesPattern(uint64_t seed, size_t offset, const void* src, size_t bytes) {
  std::vector<uint64_t> expected(bytes / 8);
  FillPattern(seed, offset, expected.data(), bytes);
  return std::memcmp(expected.data(), src, bytes) == 0;
}

// ---------------------------------------------------------------------------
// Child side.

std::string EnvOr(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : fallback;
}

int64_t EnvInt(const char* name) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(EnvOr(name, "0"), &value)) value = 0;
  return value;
}

UcxTransportOptions ChildOptions() {
  UcxTransportOptions options;
  options.transports = EnvOr("ACT_TLS", "");
  options.net_devices = "lo";
  options.error_handling = EnvOr("ACT_ERR", "peer") == "none" ? ErrorHandling::kNone
                                                              : ErrorHandling::kPeer;
  return options;
}

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteString(int fd, const std::string& s) {
  const uint32_t size = static_cast<uint32_t>(s.size());
  return WriteAll(fd, &size, sizeof(size)) && WriteAll(fd, s.data(), s.size());
}

void WaitForEof(int fd) {
  char buffer[64];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0 || (n < 0 && errno != EINTR)) return;
  }
}

// Exporter: registers a patterned region, reports (address, rkey, base) on
// ACT_INFO_FD, then serves until ACT_CONTROL_FD reaches EOF.
int RunExporter() {
  const int info_fd = static_cast<int>(EnvInt("ACT_INFO_FD"));
  const int control_fd = static_cast<int>(EnvInt("ACT_CONTROL_FD"));
  const size_t bytes = static_cast<size_t>(EnvInt("ACT_REGION_BYTES"));
  const uint64_t seed = static_cast<uint64_t>(EnvInt("ACT_SEED"));
  const bool allocate = EnvOr("ACT_ALLOCATE", "0") == "1";
  void* region = nullptr;
  if (!allocate) {
    region = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return 10;
  }
  int rc = 0;
  {
    absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(ChildOptions());
    if (!transport.ok()) {
      std::fprintf(stderr, "exporter: %s\n", transport.status().ToString().c_str());
      return 11;
    }
    absl::StatusOr<std::unique_ptr<RegisteredRegion>> registered =
        allocate ? (*transport)->Allocate(bytes)
                 : (*transport)->Register(region, bytes, MemoryKind::kHost);
    if (!registered.ok()) return 12;
    FillPattern(seed, 0, (*registered)->base(), bytes);
    const uint64_t base = reinterpret_cast<uintptr_t>((*registered)->base());
    if (!WriteString(info_fd, (*transport)->address()) ||
        !WriteString(info_fd, (*registered)->packed_rkey()) ||
        !WriteAll(info_fd, &base, sizeof(base))) {
      rc = 13;
    } else {
      WaitForEof(control_fd);
    }
  }
  if (region != nullptr) ::munmap(region, bytes);
  return rc;
}

// Importer: reads ACT_PEER_ADDRESS/ACT_PEER_RKEY (hex) in a loop, writes one
// byte to ACT_INFO_FD after the first successful Read, until killed or EOF.
int RunImporter() {
  const int info_fd = static_cast<int>(EnvInt("ACT_INFO_FD"));
  const int control_fd = static_cast<int>(EnvInt("ACT_CONTROL_FD"));
  const std::string address = absl::HexStringToBytes(EnvOr("ACT_PEER_ADDRESS", ""));
  const std::string rkey = absl::HexStringToBytes(EnvOr("ACT_PEER_RKEY", ""));
  const uint64_t base = static_cast<uint64_t>(EnvInt("ACT_PEER_BASE"));
  const size_t bytes = static_cast<size_t>(EnvInt("ACT_REGION_BYTES"));
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(ChildOptions());
  if (!transport.ok()) return 21;
  std::vector<char> local(bytes);
  std::vector<RemoteRead> reads;
  for (size_t offset = 0; offset < bytes; offset += kBlock) {
    reads.push_back({base + offset, local.data() + offset, kBlock});
  }
  ::fcntl(control_fd, F_SETFL, O_NONBLOCK);
  bool reported = false;
  while (true) {
    if (!(*transport)->Read(address, rkey, reads).ok()) return 22;
    if (!reported) {
      reported = true;
      if (!WriteAll(info_fd, "R", 1)) return 23;
    }
    char c;
    if (::read(control_fd, &c, 1) == 0) return 0;  // EOF: the parent is done
  }
}

// Runs before main() in a child started by PeerProcess; never returns there.
[[maybe_unused]] const bool kChildModeChecked = [] {
  const std::string mode = EnvOr("ACT_CHILD_MODE", "");
  if (mode == "exporter") std::_Exit(RunExporter());
  if (mode == "importer") std::_Exit(RunImporter());
  return true;
}();

// ---------------------------------------------------------------------------
// Parent side.

struct PeerConfig {
  std::string transports;  // "" = UCX default
  ErrorHandling error_handling = ErrorHandling::kPeer;
  bool allocate = false;   // exporters use Allocate() instead of Register(mmap)
};

std::string ErrName(ErrorHandling mode) { return std::string(ErrorHandlingName(mode)); }

class PeerProcess {
 public:
  // Starts an exporter of `bytes` patterned bytes and waits for its address.
  static std::unique_ptr<PeerProcess> StartExporter(const PeerConfig& config, size_t bytes,
                                                    uint64_t seed) {
    auto peer = std::unique_ptr<PeerProcess>(new PeerProcess);
    peer->bytes_ = bytes;
    peer->seed_ = seed;
    if (!peer->Spawn({"ACT_CHILD_MODE=exporter", absl::StrCat("ACT_REGION_BYTES=", bytes),
                      absl::StrCat("ACT_SEED=", seed),
                      absl::StrCat("ACT_ALLOCATE=", config.allocate ? 1 : 0)},
                     config)) {
      return nullptr;
    }
    if (!peer->ReadString(&peer->address_) || !peer->ReadString(&peer->rkey_) ||
        !peer->ReadExact(&peer->base_, sizeof(peer->base_))) {
      return nullptr;
    }
    return peer;
  }

  // Starts an importer that reads `exporter`'s whole region in a loop and
  // waits until its first Read succeeded.
  static std::unique_ptr<PeerProcess> StartImporter(const PeerConfig& config,
                                                    const PeerProcess& exporter) {
    auto peer = std::unique_ptr<PeerProcess>(new PeerProcess);
    if (!peer->Spawn({"ACT_CHILD_MODE=importer",
                      absl::StrCat("ACT_REGION_BYTES=", exporter.bytes()),
                      absl::StrCat("ACT_PEER_ADDRESS=", absl::BytesToHexString(exporter.address())),
                      absl::StrCat("ACT_PEER_RKEY=", absl::BytesToHexString(exporter.rkey())),
                      absl::StrCat("ACT_PEER_BASE=", exporter.base())},
                     config)) {
      return nullptr;
    }
    char c;
    if (!peer->ReadExact(&c, 1)) return nullptr;
    return peer;
  }

  ~PeerProcess() {
    if (control_fd_ >= 0) ::close(control_fd_);
    if (info_fd_ >= 0) ::close(info_fd_);
    if (pid_ > 0) {
      // EOF on the control pipe asks the child to exit; kill it if it does not.
      const absl::Time give_up = absl::Now() + absl::Seconds(10);
      int status = 0;
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (absl::Now() > give_up) {
          ADD_FAILURE() << "peer " << pid_ << " did not exit; killing it";
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        absl::SleepFor(absl::Milliseconds(5));
      }
      exit_status_ = status;
    }
  }

  // SIGKILLs the child and reaps it.
  void Kill() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  void Signal(int signal) { ::kill(pid_, signal); }

  // SIGSTOPs the child and waits (up to `limit`) until every one of its
  // threads is in the stopped state. kill() only queues the signal: a thread
  // busy in user space stops at its next trap into the kernel, which under a
  // sandboxed kernel (gVisor) can be milliseconds later, long enough for it to
  // answer a get. False when the child did not stop within `limit`.
  bool StopAndWait(absl::Duration limit) {
    ::kill(pid_, SIGSTOP);
    const std::string tasks = absl::StrCat("/proc/", pid_, "/task");
    const absl::Time give_up = absl::Now() + limit;
    while (absl::Now() < give_up) {
      if (AllThreadsStopped(tasks)) return true;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return false;
  }

  const std::string& address() const { return address_; }
  const std::string& rkey() const { return rkey_; }
  uint64_t base() const { return base_; }
  size_t bytes() const { return bytes_; }
  uint64_t seed() const { return seed_; }

 private:
  PeerProcess() = default;

  bool Spawn(std::vector<std::string> env, const PeerConfig& config) {
    int info[2], control[2];
    if (::pipe2(info, O_CLOEXEC) != 0 || ::pipe2(control, O_CLOEXEC) != 0) return false;
    env.push_back(absl::StrCat("ACT_INFO_FD=", info[1]));
    env.push_back(absl::StrCat("ACT_CONTROL_FD=", control[0]));
    env.push_back(absl::StrCat("ACT_TLS=", config.transports));
    env.push_back(absl::StrCat("ACT_ERR=", ErrName(config.error_handling)));
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "ACT_", 4) != 0) env.push_back(*e);
    }
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe";
    char* argv[] = {exe.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // dup2 onto itself clears FD_CLOEXEC (glibc >= 2.29): only these two
    // pipe ends reach the child.
    posix_spawn_file_actions_adddup2(&actions, info[1], info[1]);
    posix_spawn_file_actions_adddup2(&actions, control[0], control[0]);
    const int rc = ::posix_spawn(&pid_, "/proc/self/exe", &actions, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(info[1]);
    ::close(control[0]);
    info_fd_ = info[0];
    control_fd_ = control[1];
    if (rc != 0) {
      pid_ = -1;
      return false;
    }
    return true;
  }

  // Reads exactly `size` bytes from the child within 30 s.
  bool ReadExact(void* data, size_t size) {
    char* p = static_cast<char*>(data);
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (size > 0) {
      pollfd pfd{info_fd_, POLLIN, 0};
      const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(give_up - absl::Now()));
      if (wait_ms <= 0 || ::poll(&pfd, 1, wait_ms) <= 0) return false;
      ssize_t n = ::read(info_fd_, p, size);
      if (n <= 0) return false;
      p += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

  bool ReadString(std::string* out) {
    uint32_t size = 0;
    if (!ReadExact(&size, sizeof(size)) || size > (1u << 20)) return false;
    out->resize(size);
    return ReadExact(out->data(), size);
  }

  // True when every thread under /proc/<pid>/task reports state T or t.
  static bool AllThreadsStopped(const std::string& tasks_dir) {
    DIR* dir = ::opendir(tasks_dir.c_str());
    if (dir == nullptr) return false;
    bool all_stopped = true;
    int threads = 0;
    while (dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream stat(absl::StrCat(tasks_dir, "/", entry->d_name, "/stat"));
      std::string line;
      if (!std::getline(stat, line)) continue;  // the thread exited meanwhile
      // The state follows the parenthesised command name, which may hold spaces.
      const size_t close = line.rfind(')');
      if (close == std::string::npos || close + 2 >= line.size()) continue;
      ++threads;
      const char state = line[close + 2];
      if (state != 'T' && state != 't') all_stopped = false;
    }
    ::closedir(dir);
    return all_stopped && threads > 0;
  }

  pid_t pid_ = -1;
  int info_fd_ = -1;
  int control_fd_ = -1;
  int exit_status_ = 0;
  std::string address_, rkey_;
  uint64_t base_ = 0;
  size_t bytes_ = 0;
  uint64_t seed_ = 0;
};

UcxTransportOptions OptionsFor(const PeerConfig& config) {
  UcxTransportOptions options;
  options.transports = config.transports;
  options.net_devices = "lo";  // tests stay on loopback
  options.error_handling = config.error_handling;
  return options;
}

std::unique_ptr<UcxTransport> MakeTransport(const UcxTransportOptions& options) {
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(options);
  EXPECT_TRUE(transport.ok()) << transport.status();
  return transport.ok() ? std::move(*transport) : nullptr;
}

// Reads `count` distinct random blocks of `peer` into random local slots and
// checks every byte.
void ReadRandomBlocksAndVerify(UcxTransport& transport, const PeerProcess& peer, size_t count,
                               uint64_t rng_seed) {
  const size_t remote_blocks = peer.bytes() / kBlock;
  ASSERT_LE(count, remote_blocks);
  std::mt19937_64 rng(rng_seed);
  std::vector<size_t> remote(remote_blocks);
  std::iota(remote.begin(), remote.end(), 0);
  std::shuffle(remote.begin(), remote.end(), rng);
  remote.resize(count);
  std::vector<size_t> local_slot(count);
  std::iota(local_slot.begin(), local_slot.end(), 0);
  std::shuffle(local_slot.begin(), local_slot.end(), rng);

  std::vector<char> local(count * kBlock, 0);
  std::vector<RemoteRead> reads;
  for (size_t i = 0; i < count; ++i) {
    reads.push_back({peer.base() + remote[i] * kBlock, local.data() + local_slot[i] * kBlock, kBlock});
  }
  const absl::Status status = transport.Read(peer.address(), peer.rkey(), reads);
  ASSERT_TRUE(status.ok()) << status;
  size_t mismatches = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!MatchesPattern(peer.seed(), remote[i] * kBlock, local.data() + local_slot[i] * kBlock,
                        kBlock)) {
      ++mismatches;
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << count << " blocks";
}

// ---------------------------------------------------------------------------
// Between processes, in every mode worth shipping.

std::string ConfigName(const PeerConfig& config) {
  return absl::StrCat(config.transports.empty() ? "default" : config.transports, "_",
                      ErrName(config.error_handling), config.allocate ? "_allocate" : "_register");
}
std::string ParamName(const ::testing::TestParamInfo<PeerConfig>& info) {
  return ConfigName(info.param);
}

// Every configuration: shared memory (UCX's default list on one host) with
// allocated and with registered exporter memory, both error-handling modes,
// and tcp.
class UcxTransportModeTest : public ::testing::TestWithParam<PeerConfig> {};
INSTANTIATE_TEST_SUITE_P(Modes, UcxTransportModeTest,
                         ::testing::Values(PeerConfig{"", ErrorHandling::kPeer, true},
                                           PeerConfig{"", ErrorHandling::kPeer, false},
                                           PeerConfig{"", ErrorHandling::kNone, true},
                                           PeerConfig{"tcp", ErrorHandling::kPeer, false}),
                         ParamName);

// Peer failure, in the configurations that handle it (docs/transport.md: a
// peer killed while it streams get replies into our shared-memory FIFO can
// stall that FIFO, so shared memory is tested with allocated regions, whose
// gets are one-sided).
class UcxTransportPeerFailureTest : public ::testing::TestWithParam<PeerConfig> {};
INSTANTIATE_TEST_SUITE_P(PeerMode, UcxTransportPeerFailureTest,
                         ::testing::Values(PeerConfig{"", ErrorHandling::kPeer, true},
                                           PeerConfig{"tcp", ErrorHandling::kPeer, false}),
                         ParamName);

TEST_P(UcxTransportModeTest, ThousandRandomBlocksArriveIntact) {
  auto peer = PeerProcess::StartExporter(GetParam(), 1024 * kBlock, /*seed=*/11);
  ASSERT_NE(peer, nullptr);
  auto transport = MakeTransport(OptionsFor(GetParam()));
  ASSERT_NE(transport, nullptr);
  ReadRandomBlocksAndVerify(*transport, *peer, 1000, /*rng_seed=*/1);
  BlockTransport::Stats stats = transport->GetStats();
  EXPECT_EQ(stats.bytes_read, static_cast<int64_t>(1000 * kBlock));
  EXPECT_EQ(stats.reads_ok, 1);
  EXPECT_EQ(stats.reads_failed, 0);
  EXPECT_EQ(stats.peers_failed, 0);

  // Four threads at once over the cached endpoint.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { ReadRandomBlocksAndVerify(*transport, *peer, 250, 100 + t); });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(transport->GetStats().reads_ok, 5);
}

TEST_P(UcxTransportPeerFailureTest, PeerKilledMidReadFailsInBoundedTimeAndTransportStaysUsable) {
  auto victim = PeerProcess::StartExporter(GetParam(), 256 << 20, /*seed=*/21);
  ASSERT_NE(victim, nullptr);
  UcxTransportOptions options = OptionsFor(GetParam());
  options.read_timeout = absl::Seconds(8);
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);

  // ~50 GiB of 64 KiB gets cycling over the region into 16 MiB of scratch:
  // far more than can arrive before the kill, which comes once 16 MiB did.
  constexpr size_t kScratchBlocks = 256;
  std::vector<char> scratch(kScratchBlocks * kBlock);
  std::vector<RemoteRead> reads;
  const size_t remote_blocks = victim->bytes() / kBlock;
  for (size_t i = 0; i < 800000; ++i) {
    reads.push_back({victim->base() + (i % remote_blocks) * kBlock,
                     scratch.data() + (i % kScratchBlocks) * kBlock, kBlock});
  }
  std::atomic<bool> killed{false};
  std::thread killer([&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (transport->GetStats().bytes_read < (16 << 20) && absl::Now() < give_up) {
      absl::SleepFor(absl::Microseconds(200));
    }
    victim->Kill();
    killed = true;
  });
  const absl::Time start = absl::Now();
  absl::Status status = transport->Read(victim->address(), victim->rkey(), reads);
  const absl::Duration took = absl::Now() - start;
  killer.join();
  ASSERT_TRUE(killed);
  ASSERT_FALSE(status.ok()) << "the Read finished before the kill; make it longer";
  EXPECT_TRUE(absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) << status;
  EXPECT_LT(took, options.read_timeout + absl::Seconds(3)) << status;
  const BlockTransport::Stats stats = transport->GetStats();
  EXPECT_EQ(stats.reads_failed, 1);
  EXPECT_EQ(stats.peers_failed, 1);
  std::printf("[ info ] %s: Read failed %s after the kill at >= 16 MiB: %s\n",
              ConfigName(GetParam()).c_str(), absl::FormatDuration(took).c_str(),
              status.ToString().c_str());

  // A live peer still works through the same transport.
  auto survivor = PeerProcess::StartExporter(GetParam(), 128 * kBlock, /*seed=*/22);
  ASSERT_NE(survivor, nullptr);
  ReadRandomBlocksAndVerify(*transport, *survivor, 100, /*rng_seed=*/2);

  // The dead peer fails again, in bounded time, without hanging or crashing.
  const absl::Time again = absl::Now();
  absl::Status dead = transport->Read(victim->address(), victim->rkey(),
                                      absl::MakeConstSpan(reads).subspan(0, 16));
  EXPECT_FALSE(dead.ok());
  EXPECT_LT(absl::Now() - again, options.read_timeout + absl::Seconds(3)) << dead;
}

TEST_P(UcxTransportPeerFailureTest, ExporterSurvivesImporterKilledMidRead) {
  auto exporter = PeerProcess::StartExporter(GetParam(), 512 * kBlock, /*seed=*/31);
  ASSERT_NE(exporter, nullptr);
  auto importer = PeerProcess::StartImporter(GetParam(), *exporter);
  ASSERT_NE(importer, nullptr);
  importer->Kill();  // it reads in a loop: the kill lands mid-Read or between Reads
  auto transport = MakeTransport(OptionsFor(GetParam()));
  ASSERT_NE(transport, nullptr);
  for (int round = 0; round < 3; ++round) {
    ReadRandomBlocksAndVerify(*transport, *exporter, 200, /*rng_seed=*/round);
  }
}

TEST_P(UcxTransportModeTest, TransportDestroyedWithLiveEndpointAndRegionOutlivingIt) {
  auto peer = PeerProcess::StartExporter(GetParam(), 64 * kBlock, /*seed=*/41);
  ASSERT_NE(peer, nullptr);
  std::vector<char> memory(1 << 20, 'x');
  std::unique_ptr<RegisteredRegion> region;
  {
    auto transport = MakeTransport(OptionsFor(GetParam()));
    ASSERT_NE(transport, nullptr);
    ReadRandomBlocksAndVerify(*transport, *peer, 10, /*rng_seed=*/3);
    absl::StatusOr<std::unique_ptr<RegisteredRegion>> registered =
        transport->Register(memory.data(), memory.size(), MemoryKind::kHost);
    ASSERT_TRUE(registered.ok()) << registered.status();
    region = std::move(*registered);
  }  // transport gone: endpoint closed, worker destroyed; the region keeps the context
  EXPECT_EQ(region->bytes(), memory.size());
  region.reset();
  // The peer noticed nothing fatal: a new transport reads from it.
  auto transport = MakeTransport(OptionsFor(GetParam()));
  ASSERT_NE(transport, nullptr);
  ReadRandomBlocksAndVerify(*transport, *peer, 10, /*rng_seed=*/4);
}

// kNone has no peer-failure reports: a Read from a killed peer ends at
// read_timeout at the latest (DEADLINE_EXCEEDED), or completes when its gets
// are one-sided copies from the dead peer's still-mapped memory. Either way it
// returns in bounded time and the transport keeps working.
TEST(UcxTransportTest, NoneModePeerKilledMidReadEndsInBoundedTime) {
  const PeerConfig config{"", ErrorHandling::kNone, true};
  auto victim = PeerProcess::StartExporter(config, 64 << 20, /*seed=*/61);
  ASSERT_NE(victim, nullptr);
  UcxTransportOptions options = OptionsFor(config);
  options.read_timeout = absl::Seconds(2);
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);
  std::vector<char> scratch(256 * kBlock);
  std::vector<RemoteRead> reads;
  for (size_t i = 0; i < 400000; ++i) {
    reads.push_back({victim->base() + (i % 1024) * kBlock, scratch.data() + (i % 256) * kBlock,
                     kBlock});
  }
  std::thread killer([&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (transport->GetStats().bytes_read < (16 << 20) && absl::Now() < give_up) {
      absl::SleepFor(absl::Microseconds(200));
    }
    victim->Kill();
  });
  const absl::Time start = absl::Now();
  const absl::Status status = transport->Read(victim->address(), victim->rkey(), reads);
  const absl::Duration took = absl::Now() - start;
  killer.join();
  EXPECT_TRUE(status.ok() || absl::IsDeadlineExceeded(status) || absl::IsUnavailable(status))
      << status;
  EXPECT_LT(took, options.read_timeout + absl::Seconds(3)) << status;
  std::printf("[ info ] none mode, peer killed: %s after %s\n", status.ToString().c_str(),
              absl::FormatDuration(took).c_str());

  auto survivor = PeerProcess::StartExporter(config, 128 * kBlock, /*seed=*/62);
  ASSERT_NE(survivor, nullptr);
  ReadRandomBlocksAndVerify(*transport, *survivor, 100, /*rng_seed=*/7);
}

// A stopped (SIGSTOP) peer cannot answer tcp's software gets: the Read must
// end with DEADLINE_EXCEEDED at read_timeout, and work again after SIGCONT.
TEST(UcxTransportTest, ReadToStoppedPeerTimesOutThenRecovers) {
  const PeerConfig config{"tcp", ErrorHandling::kPeer};
  auto peer = PeerProcess::StartExporter(config, 64 * kBlock, /*seed=*/51);
  ASSERT_NE(peer, nullptr);
  UcxTransportOptions options = OptionsFor(config);
  options.read_timeout = absl::Milliseconds(500);
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);
  ReadRandomBlocksAndVerify(*transport, *peer, 10, /*rng_seed=*/5);

  if (!peer->StopAndWait(absl::Seconds(5))) {
    peer->Signal(SIGCONT);
    GTEST_SKIP() << "the peer's threads did not all reach the stopped state within 5 s of "
                    "SIGSTOP (/proc/<pid>/task/*/stat); this kernel cannot stage the case";
  }
  std::vector<char> local(kBlock);
  const RemoteRead read{peer->base(), local.data(), kBlock};
  const absl::Time start = absl::Now();
  absl::Status status = transport->Read(peer->address(), peer->rkey(), {&read, 1});
  const absl::Duration took = absl::Now() - start;
  peer->Signal(SIGCONT);
  EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("0 of 1 ranges arrived"));
  EXPECT_GE(took, options.read_timeout);
  EXPECT_LT(took, options.read_timeout + absl::Seconds(3));
  EXPECT_EQ(transport->GetStats().peers_failed, 1);

  ReadRandomBlocksAndVerify(*transport, *peer, 10, /*rng_seed=*/6);
}

// ---------------------------------------------------------------------------
// In one process.

class UcxTransportLocalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    UcxTransportOptions options;
    options.net_devices = "lo";
    exporter_ = MakeTransport(options);
    importer_ = MakeTransport(options);
    ASSERT_NE(exporter_, nullptr);
    ASSERT_NE(importer_, nullptr);
    memory_.resize(64 * kBlock);
    FillPattern(7, 0, memory_.data(), memory_.size());
    absl::StatusOr<std::unique_ptr<RegisteredRegion>> region =
        exporter_->Register(memory_.data(), memory_.size(), MemoryKind::kHost);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = std::move(*region);
    base_ = reinterpret_cast<uintptr_t>(memory_.data());
  }

  std::vector<char> memory_;
  std::unique_ptr<UcxTransport> exporter_, importer_;
  std::unique_ptr<RegisteredRegion> region_;
  uint64_t base_ = 0;
};

TEST_F(UcxTransportLocalTest, ReadsBetweenTwoTransportsAndFromItself) {
  std::vector<char> local(3 * kBlock);
  const std::vector<RemoteRead> reads = {
      {base_ + 5 * kBlock, local.data(), kBlock},
      {base_ + 1 * kBlock + 8, local.data() + kBlock, 100},  // unaligned tail piece
      {base_ + 63 * kBlock, local.data() + 2 * kBlock, kBlock},
  };
  for (UcxTransport* reader : {importer_.get(), exporter_.get()}) {
    std::fill(local.begin(), local.end(), 0);
    ASSERT_TRUE(reader->Read(exporter_->address(), region_->packed_rkey(), reads).ok());
    EXPECT_EQ(std::memcmp(local.data(), memory_.data() + 5 * kBlock, kBlock), 0);
    EXPECT_EQ(std::memcmp(local.data() + kBlock, memory_.data() + kBlock + 8, 100), 0);
    EXPECT_EQ(std::memcmp(local.data() + 2 * kBlock, memory_.data() + 63 * kBlock, kBlock), 0);
  }
  EXPECT_EQ(importer_->GetStats().bytes_read, static_cast<int64_t>(2 * kBlock + 100));
  EXPECT_EQ(region_->base(), memory_.data());
  EXPECT_EQ(region_->kind(), MemoryKind::kHost);
  absl::StatusOr<std::string> description = importer_->DescribeConnection(exporter_->address());
  ASSERT_TRUE(description.ok()) << description.status();
  EXPECT_THAT(*description, HasSubstr("lane"));
}

TEST_F(UcxTransportLocalTest, EmptyReadIsOkAndDoesNothing) {
  EXPECT_TRUE(importer_->Read(exporter_->address(), region_->packed_rkey(), {}).ok());
  EXPECT_EQ(importer_->GetStats().reads_ok, 0);
}

TEST_F(UcxTransportLocalTest, BadReadsGetInvalidArgumentAndChangeNothing) {
  std::vector<char> local(kBlock, 'z');
  const std::string& address = exporter_->address();
  const std::string& rkey = region_->packed_rkey();
  const RemoteRead good{base_, local.data(), kBlock};
  auto read = [&](absl::string_view a, absl::string_view k, std::vector<RemoteRead> reads) {
    return importer_->Read(a, k, reads);
  };
  auto expect_invalid = [](const absl::Status& status, absl::string_view text) {
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr(std::string(text)));
  };

  expect_invalid(read("", rkey, {good}), "peer address is empty");
  expect_invalid(read(address, "", {good}), "remote key is empty");
  std::mt19937_64 rng(9);
  std::string garbage(address.size(), '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  expect_invalid(read(garbage, rkey, {good}), "peer address is not one made by UcxTransport");
  expect_invalid(read(address, garbage, {good}), "remote key is not one made by UcxTransport");
  std::string flipped = address;
  flipped[flipped.size() / 2] ^= 0x40;  // inside UCX's bytes
  expect_invalid(read(flipped, rkey, {good}), "checksum");
  std::string flipped_rkey = rkey;
  flipped_rkey[flipped_rkey.size() - 12] ^= 0x01;
  expect_invalid(read(address, flipped_rkey, {good}), "checksum");
  expect_invalid(read(address.substr(0, address.size() - 1), rkey, {good}), "truncated");
  expect_invalid(read(address, rkey, {good, {base_, local.data(), 0}}), "read 1 has zero bytes");
  expect_invalid(read(address, rkey, {{base_, nullptr, 8}}), "read 0 has a null local pointer");
  expect_invalid(read(address, rkey, {{base_ - 8, local.data(), 16}}), "outside the registered region");
  expect_invalid(read(address, rkey, {{base_ + memory_.size() - 8, local.data(), 16}}),
                 "outside the registered region");
  expect_invalid(read(address, rkey, {{UINT64_MAX - 7, local.data(), 16}}),
                 "outside the registered region");

  // A key of one transport with the address of another.
  std::vector<char> other_memory(kBlock);
  absl::StatusOr<std::unique_ptr<RegisteredRegion>> other =
      importer_->Register(other_memory.data(), other_memory.size(), MemoryKind::kHost);
  ASSERT_TRUE(other.ok());
  expect_invalid(read(address, (*other)->packed_rkey(), {good}), "different transport");

  EXPECT_EQ(std::count(local.begin(), local.end(), 'z'), static_cast<long>(kBlock));
  const BlockTransport::Stats stats = importer_->GetStats();
  EXPECT_EQ(stats.bytes_read, 0);
  EXPECT_EQ(stats.reads_ok, 0);
  EXPECT_EQ(stats.reads_failed, 0);
  EXPECT_EQ(stats.peers_failed, 0);
  // Still works.
  ASSERT_TRUE(read(address, rkey, {good}).ok());
  EXPECT_EQ(std::memcmp(local.data(), memory_.data(), kBlock), 0);
}

TEST_F(UcxTransportLocalTest, BadRegistrationsGetPreciseCodes) {
  std::vector<char> memory(4096);
  absl::StatusOr<std::unique_ptr<RegisteredRegion>> r =
      exporter_->Register(nullptr, 4096, MemoryKind::kHost);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("base is null"));
  r = exporter_->Register(memory.data(), 0, MemoryKind::kHost);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("zero bytes"));
  r = exporter_->Register(memory.data(), SIZE_MAX, MemoryKind::kHost);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();

  EXPECT_TRUE(exporter_->SupportsMemory(MemoryKind::kHost));
  if (exporter_->SupportsMemory(MemoryKind::kCuda)) {
    GTEST_SKIP() << "this UCX supports CUDA memory; the unsupported path cannot be tested";
  }
  r = exporter_->Register(memory.data(), memory.size(), MemoryKind::kCuda);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("stage the blocks through registered host memory"));
}

TEST(UcxTransportOptionsTest, ValidateNamesTheBadField) {
  UcxTransportOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.read_timeout = absl::ZeroDuration();
  EXPECT_THAT(options.Validate().message(), HasSubstr("read_timeout"));
  options = {};
  options.max_outstanding = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("max_outstanding"));
  options = {};
  options.keepalive_interval = absl::InfiniteDuration();
  EXPECT_THAT(options.Validate().message(), HasSubstr("keepalive_interval"));
  options = {};
  options.transports = "shm, tcp";
  EXPECT_THAT(options.Validate().message(), HasSubstr("transports"));
  options = {};
  options.net_devices = "lo\"";
  EXPECT_THAT(options.Validate().message(), HasSubstr("net_devices"));

  options = {};
  options.max_outstanding = -1;
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(options);
  EXPECT_TRUE(absl::IsInvalidArgument(transport.status())) << transport.status();
}

TEST(UcxTransportOptionsTest, UnknownTransportIsRejectedAtCreate) {
  UcxTransportOptions options;
  options.transports = "no_such_transport";
  options.net_devices = "lo";
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(options);
  EXPECT_TRUE(absl::IsFailedPrecondition(transport.status())) << transport.status();
  EXPECT_THAT(transport.status().message(), HasSubstr("no usable transport"));
}

}  // namespace
}  // namespace asymcache
