// Backend-independent parts of pool_memory.h: names, descriptor checks, the
// MapPool dispatch, free-memory queries and pool sizing.
#include "services/daemon/pool_memory.h"

#include <cstdlib>

#include <sys/statvfs.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace asymcache::daemon {
namespace {

// Longest shm name accepted (NAME_MAX is 255 including the leading '/').
constexpr size_t kMaxShmNameBytes = 255;

absl::Status ValidateShmName(absl::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError("PoolDescriptor.shm_name is empty (host pools need one)");
  }
  if (name.size() < 2 || name.front() != '/' || name.size() > kMaxShmNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolDescriptor.shm_name must be '/' followed by 1..", kMaxShmNameBytes - 1,
        " characters, got '", name, "'"));
  }
  for (char c : name.substr(1)) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "PoolDescriptor.shm_name may hold only letters, digits, '.', '_' and '-' after the "
          "leading '/', got '",
          name, "'"));
    }
  }
  if (name == "/." || name == "/..") {
    return absl::InvalidArgumentError(absl::StrCat("PoolDescriptor.shm_name '", name,
                                                   "' is not a valid name"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const char* path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Bytes the cgroup v2 of this process may still allocate, or -1 when it has
// no limit (or no cgroup v2 is mounted).
int64_t CgroupRemainingBytes() {
  absl::StatusOr<std::string> max = ReadSmallFile("/sys/fs/cgroup/memory.max");
  absl::StatusOr<std::string> current = ReadSmallFile("/sys/fs/cgroup/memory.current");
  if (!max.ok() || !current.ok()) return -1;
  int64_t limit = 0;
  int64_t used = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*max), &limit) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(*current), &used)) {
    return -1;  // "max": unlimited
  }
  return limit > used ? limit - used : 0;
}

absl::StatusOr<int64_t> HostFreeMemoryBytes() {
  absl::StatusOr<std::string> meminfo = ReadSmallFile("/proc/meminfo");
  if (!meminfo.ok()) {
    return absl::InternalError(absl::StrCat("host free memory: ", meminfo.status().message()));
  }
  absl::StatusOr<int64_t> free = ParseMemAvailableBytes(*meminfo);
  if (!free.ok()) return free.status();
  int64_t result = *free;
  struct statvfs shm {};
  if (statvfs("/dev/shm", &shm) == 0) {
    const int64_t shm_free =
        static_cast<int64_t>(shm.f_bavail) * static_cast<int64_t>(shm.f_frsize);
    result = std::min(result, shm_free);
  }
  if (const int64_t cgroup = CgroupRemainingBytes(); cgroup >= 0) result = std::min(result, cgroup);
  return result;
}

}  // namespace

absl::StatusOr<PoolBackend> ParsePoolBackend(absl::string_view name) {
  if (name == "host") return PoolBackend::kHost;
  if (name == "cuda") return PoolBackend::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown pool backend '", name, "'; known: host, cuda"));
}

absl::string_view PoolBackendName(PoolBackend backend) {
  switch (backend) {
    case PoolBackend::kHost:
      return "host";
    case PoolBackend::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::Status ValidatePoolDescriptor(const PoolDescriptor& descriptor) {
  if (absl::Status status = descriptor.layout.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoolDescriptor.layout: ", status.message()));
  }
  switch (descriptor.backend) {
    case PoolBackend::kHost:
      if (!descriptor.cuda_ipc_handle.empty()) {
        return absl::InvalidArgumentError(
            "PoolDescriptor: backend is host but cuda_ipc_handle is set (backend mismatch)");
      }
      return ValidateShmName(descriptor.shm_name);
    case PoolBackend::kCuda:
      if (!descriptor.shm_name.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "PoolDescriptor: backend is cuda but shm_name is set to '", descriptor.shm_name,
            "' (backend mismatch)"));
      }
      if (descriptor.cuda_ipc_handle.size() != kCudaIpcHandleBytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "PoolDescriptor.cuda_ipc_handle must be ", kCudaIpcHandleBytes, " bytes, got ",
            descriptor.cuda_ipc_handle.size()));
      }
      if (descriptor.cuda_device < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "PoolDescriptor.cuda_device must be >= 0, got ", descriptor.cuda_device));
      }
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("PoolDescriptor.backend has unknown value ",
                                                 static_cast<int>(descriptor.backend)));
}

PoolMemory::~PoolMemory() = default;
MappedPool::~MappedPool() = default;

absl::StatusOr<std::unique_ptr<MappedPool>> MapPool(const PoolDescriptor& descriptor) {
  if (absl::Status status = ValidatePoolDescriptor(descriptor); !status.ok()) return status;
  return descriptor.backend == PoolBackend::kHost ? MapHostPool(descriptor)
                                                  : MapCudaPool(descriptor);
}

absl::StatusOr<int64_t> ParseMemAvailableBytes(absl::string_view proc_meminfo) {
  for (absl::string_view line : absl::StrSplit(proc_meminfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "MemAvailable:")) continue;
    line = absl::StripAsciiWhitespace(line);
    int64_t kib = 0;
    if (!absl::ConsumeSuffix(&line, "kB") ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib) || kib < 0 ||
        kib > (int64_t{1} << 53)) {
      return absl::InternalError(
          absl::StrCat("/proc/meminfo: malformed MemAvailable line 'MemAvailable:", line, "'"));
    }
    return kib * 1024;
  }
  return absl::InternalError("/proc/meminfo has no MemAvailable line");
}

absl::StatusOr<int64_t> FreeMemoryBytes(PoolBackend backend, int cuda_device) {
  switch (backend) {
    case PoolBackend::kHost:
      return HostFreeMemoryBytes();
    case PoolBackend::kCuda:
      return CudaFreeMemoryBytes(cuda_device);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown pool backend ", static_cast<int>(backend)));
}

absl::StatusOr<int64_t> ResolvePoolBlocks(PoolBackend backend, int cuda_device,
                                          const PoolSizeSpec& spec, const ModelConfig& model) {
  if (absl::Status status = model.Validate(); !status.ok()) return status;
  if (spec.bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoolSizeSpec.bytes must be >= 0, got ", spec.bytes));
  }
  if (std::isnan(spec.fraction_of_free) || spec.fraction_of_free < 0 ||
      spec.fraction_of_free > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolSizeSpec.fraction_of_free must be in (0, 1], got ", spec.fraction_of_free));
  }
  const bool by_bytes = spec.bytes > 0;
  const bool by_fraction = spec.fraction_of_free > 0;
  if (by_bytes == by_fraction) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolSizeSpec: set exactly one of bytes and fraction_of_free, got ",
        by_bytes ? "both" : "neither", " (bytes=", spec.bytes,
        ", fraction_of_free=", spec.fraction_of_free, ")"));
  }
  const int64_t block_bytes = model.KvBytesPerBlock();
  if (by_bytes) {
    const int64_t blocks = PoolLayout::BlocksForBytes(model, spec.bytes);
    if (blocks < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PoolSizeSpec.bytes = ", spec.bytes, " holds no block of model '", model.name, "' (",
          block_bytes, " bytes per block)"));
    }
    if (blocks > kMaxPoolBlocks) {
      return absl::InvalidArgumentError(absl::StrCat("PoolSizeSpec.bytes = ", spec.bytes,
                                                     " holds ", blocks, " blocks, more than ",
                                                     kMaxPoolBlocks, " (int32 block ids)"));
    }
    return blocks;
  }
  absl::StatusOr<int64_t> free = FreeMemoryBytes(backend, cuda_device);
  if (!free.ok()) return free.status();
  const auto share = static_cast<int64_t>(std::floor(static_cast<double>(*free) *
                                                     spec.fraction_of_free));
  const int64_t blocks = PoolLayout::BlocksForBytes(model, share);
  if (blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a fraction ", spec.fraction_of_free, " of the ", *free, " free bytes (",
        PoolBackendName(backend), ") is ", share, " bytes: no block of model '", model.name,
        "' (", block_bytes, " bytes per block) fits"));
  }
  return std::min(blocks, kMaxPoolBlocks);
}

absl::StatusOr<StagingBuffer> PoolMemory::AllocateStaging(size_t bytes) {
  auto* data = static_cast<uint8_t*>(std::malloc(bytes == 0 ? 1 : bytes));
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of staging memory"));
  }
  return StagingBuffer(data, bytes, [](uint8_t* p) { std::free(p); });
}

}  // namespace asymcache::daemon
