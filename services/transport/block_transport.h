// BlockTransport: the small interface through which daemons move KV blocks
// between each other (DESIGN.md §4, STYLE.md §14). The model is PULL:
//
//   exporter                                   importer
//   Register(pool) -> RegisteredRegion
//   ship address(), region->packed_rkey()
//   and the remote address of every block  --> Read(address, rkey, ranges)
//   piece over gRPC (not this layer)            copies remote -> local memory
//
// The exporter keeps the region registered (and its bytes unchanged) until the
// importer says it is done; the importer reports a block as received only when
// Read returned OK for every byte of it. On any error some local bytes may
// already have been written: the caller discards them (aborts the blocks).
//
// Addresses and keys are opaque byte strings made by one implementation and
// understood only by the same implementation; peers are trusted daemons (the
// strings are validated against corruption and mix-ups, not against malice).
//
// Ownership: a region from Register does not own the memory it covers (which
// must stay valid until the region is destroyed); a region from Allocate owns
// its memory and frees it when destroyed. Implementations state whether a
// region may outlive its transport (UcxTransport allows it).
//
// Thread-safety: every method of BlockTransport and RegisteredRegion is
// thread-safe; concurrent Reads proceed in parallel.
#ifndef ASYMCACHE_SERVICES_TRANSPORT_BLOCK_TRANSPORT_H_
#define ASYMCACHE_SERVICES_TRANSPORT_BLOCK_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace asymcache {

// Where registered or local memory lives.
enum class MemoryKind { kHost, kCuda };
inline absl::string_view MemoryKindName(MemoryKind kind) {
  return kind == MemoryKind::kCuda ? "cuda" : "host";
}

// Memory [base, base + bytes) registered for remote reads. Destroying it
// unregisters the memory (and frees it if it was allocated): reads still in
// flight from a peer then fail or read stale bytes there, so the exporter
// keeps a region until its importers are done.
class RegisteredRegion {
 public:
  virtual ~RegisteredRegion() = default;
  virtual void* base() const = 0;
  virtual size_t bytes() const = 0;
  virtual MemoryKind kind() const = 0;
  // Opaque key a peer passes to BlockTransport::Read to read this region; it
  // names the region's bounds and the transport that registered it.
  virtual const std::string& packed_rkey() const = 0;
};

// One contiguous copy: `bytes` bytes at remote address `remote_addr` (inside
// the region of the key) into local memory at `local`.
struct RemoteRead {
  uint64_t remote_addr = 0;
  void* local = nullptr;
  size_t bytes = 0;
};

class BlockTransport {
 public:
  struct Stats {
    int64_t bytes_read = 0;    // bytes of completed remote reads (live, also
                               // counts pieces of Reads that failed later)
    int64_t reads_ok = 0;      // Read calls that returned OK
    int64_t reads_failed = 0;  // Read calls that failed after validation
    int64_t peers_failed = 0;  // peer connections dropped after an error or timeout
  };

  virtual ~BlockTransport() = default;

  // Opaque bytes that identify this transport to peers (ship them to importers).
  virtual const std::string& address() const = 0;

  // Whether Register and Read accept memory of this kind.
  virtual bool SupportsMemory(MemoryKind kind) const = 0;

  // Registers [base, base + bytes) for remote reads.
  // INVALID_ARGUMENT for a null base or zero bytes; FAILED_PRECONDITION for a
  // kind the transport does not support (stage through host memory instead).
  virtual absl::StatusOr<std::unique_ptr<RegisteredRegion>> Register(void* base, size_t bytes,
                                                                      MemoryKind kind) = 0;

  // Allocates `bytes` of host memory registered for remote reads, placed
  // where peers read it fastest (on one host: shared memory that a reader
  // maps, so a get is one memcpy with no work on this side). The region owns
  // the memory: destroying it frees it. INVALID_ARGUMENT for zero bytes;
  // RESOURCE_EXHAUSTED when the memory cannot be had.
  virtual absl::StatusOr<std::unique_ptr<RegisteredRegion>> Allocate(size_t bytes) = 0;

  // Copies every range from the peer's registered region (peer_address from
  // its address(), packed_rkey from its region) into local memory; blocks
  // until all completed, one failed, or the timeout. OK only if every byte
  // arrived. An empty span is OK and does nothing.
  //   INVALID_ARGUMENT   empty or malformed address or key, a key packed by a
  //                      different transport than the address, a zero-length
  //                      range, a null local pointer, a range outside the region
  //   UNAVAILABLE        the peer failed or could not be reached (retry later)
  //   DEADLINE_EXCEEDED  the ranges did not all arrive in time
  // Local memory of a failed Read may be partly written: discard it.
  virtual absl::Status Read(absl::string_view peer_address, absl::string_view packed_rkey,
                            absl::Span<const RemoteRead> reads) = 0;

  virtual Stats GetStats() const = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_TRANSPORT_BLOCK_TRANSPORT_H_
