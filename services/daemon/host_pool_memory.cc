// The host backend of pool_memory.h: POSIX shared memory (shm_open + mmap).
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "services/daemon/pool_memory.h"

namespace asymcache::daemon {
namespace {

absl::Status ErrnoStatus(absl::StatusCode code, absl::string_view what, int error) {
  return absl::Status(code, absl::StrCat(what, ": ", std::strerror(error)));
}

// Maps code by errno for the calls below; `what` names the call and object.
absl::Status SystemError(absl::string_view what, int error) {
  switch (error) {
    case ENOENT:
      return ErrnoStatus(absl::StatusCode::kNotFound, what, error);
    case EEXIST:
      return ErrnoStatus(absl::StatusCode::kAlreadyExists, what, error);
    case EACCES:
    case EPERM:
      return ErrnoStatus(absl::StatusCode::kPermissionDenied, what, error);
    case ENOSPC:
    case ENOMEM:
    case EFBIG:
    case EMFILE:
    case ENFILE:
      return ErrnoStatus(absl::StatusCode::kResourceExhausted, what, error);
    case ENAMETOOLONG:
    case EINVAL:
      return ErrnoStatus(absl::StatusCode::kInvalidArgument, what, error);
    default:
      return ErrnoStatus(absl::StatusCode::kInternal, what, error);
  }
}

constexpr absl::string_view kGeneratedPrefix = "asymcache-";

std::string GeneratedShmName() {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat("/", kGeneratedPrefix, getpid(), "-", counter.fetch_add(1));
}

// True for "asymcache-<digits>-<digits>", the form GeneratedShmName() makes
// (without the leading '/', as /dev/shm lists it).
bool IsGeneratedShmEntry(absl::string_view entry) {
  if (!absl::ConsumePrefix(&entry, kGeneratedPrefix)) return false;
  const size_t dash = entry.find('-');
  if (dash == 0 || dash == absl::string_view::npos || dash + 1 == entry.size()) return false;
  for (size_t i = 0; i < entry.size(); ++i) {
    if (i != dash && !absl::ascii_isdigit(static_cast<unsigned char>(entry[i]))) return false;
  }
  return true;
}

// How old a generated segment must be before the sweep may remove it: the
// creator takes its owner lock right after shm_open, so 60 s is far beyond
// that window (and beyond a large pool's posix_fallocate).
constexpr time_t kSweepMinAgeSeconds = 60;

// Removes generated pool segments whose daemon is gone: every live pool's
// owner holds a shared flock(2) on its segment for the pool's lifetime (see
// CreateHostPoolMemory), so an exclusive non-blocking lock that succeeds
// means no process owns the segment any more (it crashed or was killed with
// SIGKILL, whose destructors never ran). Works across PID namespaces
// (containers sharing one /dev/shm), unlike a pid liveness check. Workers
// still mapping a removed segment keep their mapping; only the name goes.
void SweepOrphanedSegments() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return;
  const time_t now = time(nullptr);
  while (const dirent* entry = readdir(dir)) {
    if (!IsGeneratedShmEntry(entry->d_name)) continue;
    const std::string name = absl::StrCat("/", entry->d_name);
    const int fd = shm_open(name.c_str(), O_RDWR, 0);
    if (fd < 0) continue;  // another user's, or already gone
    struct stat st {};
    if (fstat(fd, &st) == 0 && now - st.st_mtime >= kSweepMinAgeSeconds &&
        flock(fd, LOCK_EX | LOCK_NB) == 0) {
      shm_unlink(name.c_str());
    }
    close(fd);
  }
  closedir(dir);
}

// Calls copy(pool_offset, wire_offset) for every piece of `blocks`: the
// piece's byte offset in the layer-major pool and in the block-major host
// buffer (pool_memory.h). Arguments already checked.
template <typename CopyPiece>
void ForEachPiece(const PoolLayout& layout, absl::Span<const int64_t> blocks,
                  const CopyPiece& copy) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      copy(layout.PieceOffset(layer, blocks[i]),
           static_cast<int64_t>(i) * layout.block_bytes() + int64_t{layer} * layout.piece_bytes());
    }
  }
}

class HostPoolMemory final : public PoolMemory {
 public:
  // `owner_fd` holds the segment's shared owner lock; closed (releasing the
  // lock) after the name is removed.
  HostPoolMemory(PoolLayout layout, std::string shm_name, void* base, int owner_fd)
      : layout_(layout),
        shm_name_(std::move(shm_name)),
        base_(static_cast<uint8_t*>(base)),
        owner_fd_(owner_fd) {}
  ~HostPoolMemory() override {
    munmap(base_, static_cast<size_t>(layout_.bytes()));
    shm_unlink(shm_name_.c_str());
    close(owner_fd_);
  }
  HostPoolMemory(const HostPoolMemory&) = delete;
  HostPoolMemory& operator=(const HostPoolMemory&) = delete;

  PoolBackend backend() const override { return PoolBackend::kHost; }
  const PoolLayout& layout() const override { return layout_; }
  void* base() override { return base_; }
  PoolDescriptor Describe() const override {
    PoolDescriptor descriptor;
    descriptor.backend = PoolBackend::kHost;
    descriptor.layout = layout_;
    descriptor.shm_name = shm_name_;
    return descriptor;
  }

  absl::Status CopyBlocksToHost(absl::Span<const int64_t> blocks,
                                absl::Span<uint8_t> out) override {
    if (absl::Status s = layout_.ValidateBlockCopy(blocks, out.size(), false); !s.ok()) return s;
    const size_t piece = static_cast<size_t>(layout_.piece_bytes());
    ForEachPiece(layout_, blocks, [&](int64_t pool_offset, int64_t wire_offset) {
      std::memcpy(out.data() + wire_offset, base_ + pool_offset, piece);
    });
    return absl::OkStatus();
  }
  absl::Status CopyBlocksFromHost(absl::Span<const int64_t> blocks,
                                  absl::Span<const uint8_t> in) override {
    if (absl::Status s = layout_.ValidateBlockCopy(blocks, in.size(), true); !s.ok()) return s;
    const size_t piece = static_cast<size_t>(layout_.piece_bytes());
    ForEachPiece(layout_, blocks, [&](int64_t pool_offset, int64_t wire_offset) {
      std::memcpy(base_ + pool_offset, in.data() + wire_offset, piece);
    });
    return absl::OkStatus();
  }

 private:
  // Immutable after construction.
  const PoolLayout layout_;
  const std::string shm_name_;
  uint8_t* const base_;
  const int owner_fd_;
};

class HostMappedPool final : public MappedPool {
 public:
  HostMappedPool(PoolLayout layout, void* base) : layout_(layout), base_(base) {}
  ~HostMappedPool() override { munmap(base_, static_cast<size_t>(layout_.bytes())); }
  HostMappedPool(const HostMappedPool&) = delete;
  HostMappedPool& operator=(const HostMappedPool&) = delete;

  PoolBackend backend() const override { return PoolBackend::kHost; }
  const PoolLayout& layout() const override { return layout_; }
  void* base() const override { return base_; }

 private:
  const PoolLayout layout_;
  void* const base_;
};

// Closes a descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) close(fd_);
  }
  // Gives up ownership: the caller closes the descriptor.
  int Release() { return std::exchange(fd_, -1); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PoolMemory>> CreateHostPoolMemory(const PoolLayout& layout,
                                                                 absl::string_view shm_name) {
  PoolDescriptor wanted;
  wanted.backend = PoolBackend::kHost;
  wanted.layout = layout;
  const bool generated = shm_name.empty();
  wanted.shm_name = generated ? GeneratedShmName() : std::string(shm_name);
  if (absl::Status status = ValidatePoolDescriptor(wanted); !status.ok()) return status;

  // Cheap up-front check against the shm file system's free space (glibc
  // places POSIX shm in /dev/shm); posix_fallocate below is the real test.
  const size_t bytes = static_cast<size_t>(layout.bytes());
  struct statvfs shm_fs {};
  if (statvfs("/dev/shm", &shm_fs) == 0 && shm_fs.f_blocks > 0) {
    const unsigned __int128 available =
        static_cast<unsigned __int128>(shm_fs.f_bavail) * shm_fs.f_frsize;
    if (bytes > available) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "a host pool of ", bytes, " bytes does not fit in /dev/shm (",
          static_cast<uint64_t>(available), " bytes free)"));
    }
  }
  SweepOrphanedSegments();
  int fd = shm_open(wanted.shm_name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  // A generated name can collide only with a leftover of a crashed process that
  // had our pid: try a few more counters.
  for (int attempt = 0; fd < 0 && errno == EEXIST && generated && attempt < 16; ++attempt) {
    wanted.shm_name = GeneratedShmName();
    fd = shm_open(wanted.shm_name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  }
  if (fd < 0) return SystemError(absl::StrCat("shm_open(", wanted.shm_name, ")"), errno);
  FdCloser closer(fd);
  // The owner lock (SweepOrphanedSegments): held until the pool is destroyed,
  // released by the kernel if this process dies without destructors.
  if (flock(fd, LOCK_SH) != 0) {
    const int error = errno;
    shm_unlink(wanted.shm_name.c_str());
    return SystemError(absl::StrCat("flock(", wanted.shm_name, ")"), error);
  }
  // posix_fallocate reserves every page now (tmpfs), so a full /dev/shm is an
  // error here rather than a SIGBUS on first touch. It returns the error.
  if (const int error = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); error != 0) {
    shm_unlink(wanted.shm_name.c_str());
    if (error == ENOSPC || error == EFBIG || error == ENOMEM) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot reserve ", bytes, " bytes of shared memory for pool ", wanted.shm_name, ": ",
          std::strerror(error), " (free space of /dev/shm or memory limit)"));
    }
    return SystemError(absl::StrCat("posix_fallocate(", wanted.shm_name, ", ", bytes, ")"),
                       error);
  }
  // MAP_POPULATE: page tables are set up now, not by a fault per 4 KiB on the
  // first write of each block (measured: 5x slower first imports).
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (base == MAP_FAILED) {
    const int error = errno;
    shm_unlink(wanted.shm_name.c_str());
    return SystemError(absl::StrCat("mmap(", wanted.shm_name, ", ", bytes, ")"), error);
  }
  return std::make_unique<HostPoolMemory>(layout, std::move(wanted.shm_name), base,
                                          closer.Release());
}

absl::StatusOr<std::unique_ptr<MappedPool>> MapHostPool(const PoolDescriptor& descriptor) {
  if (absl::Status status = ValidatePoolDescriptor(descriptor); !status.ok()) return status;
  if (descriptor.backend != PoolBackend::kHost) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MapHostPool: descriptor backend is ", PoolBackendName(descriptor.backend)));
  }
  const int fd = shm_open(descriptor.shm_name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    return SystemError(absl::StrCat("shm_open(", descriptor.shm_name, ") of a host pool"), errno);
  }
  FdCloser closer(fd);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return SystemError(absl::StrCat("fstat(", descriptor.shm_name, ")"), errno);
  }
  const int64_t expected = descriptor.layout.bytes();
  if (static_cast<int64_t>(st.st_size) != expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared memory ", descriptor.shm_name, " holds ", static_cast<int64_t>(st.st_size),
        " bytes but the descriptor's layout needs ", expected,
        " (descriptor from another pool or model?)"));
  }
  void* base =
      mmap(nullptr, static_cast<size_t>(expected), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    return SystemError(absl::StrCat("mmap(", descriptor.shm_name, ", ", expected, ")"), errno);
  }
  return std::make_unique<HostMappedPool>(descriptor.layout, base);
}

}  // namespace asymcache::daemon
