// BlockTransfer: moves sealed KV blocks between daemons (DESIGN.md §3.3, §4).
//
// Pull model. The exporter pins the requested resident blocks and describes
// where their bytes are in memory it registered with the transport (Export);
// the importer allocates in-transfer blocks, reads every piece over the
// transport, and only when every byte arrived indexes them (Import). A failed
// read (peer died, timeout) frees the in-transfer blocks: nothing partial is
// ever indexed. The exporter's pins last until ReleaseExport or the export
// timeout (ExpireExports), so a vanished importer leaks nothing.
//
// Memory: each export copies its blocks into memory the transport allocated
// (BlockTransport::Allocate: on one host, shared memory the reader maps, so a
// remote read is one memcpy and needs no work on the exporter; docs/transport.md
// measured 13+ GiB/s for it against 0.1-2 GiB/s, and stalls after a peer
// died, for reads of memory merely registered), in the wire layout
// ([block][layer][piece]); page-locked with the pool (PinHost) for CUDA copies.
// The importer reads straight into a host pool; for a GPU pool it reads
// into a staging area of the same kind and copies into its pool. Only a CUDA pool with a
// transport that supports CUDA memory (memory-type aware registration) is
// registered once and read in place (Debian's UCX has no CUDA transports).
//
// Thread-safety: thread-safe. The cache, pool and transport must outlive it.
#ifndef ASYMCACHE_SERVICES_DAEMON_BLOCK_TRANSFER_H_
#define ASYMCACHE_SERVICES_DAEMON_BLOCK_TRANSFER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/clock.h"
#include "cachecore/kv_cache.h"
#include "services/daemon/pool_memory.h"
#include "services/transport/block_transport.h"

namespace asymcache {

struct BlockTransferOptions {
  absl::Duration export_timeout = absl::Seconds(30);  // > 0
  int64_t max_blocks = 65536;                         // per Export/Import, >= 1
  // Export staging areas kept for reuse after their export is released, in
  // bytes (fresh shared memory costs a page fault per 4 KiB on both sides:
  // reuse is what makes transfers run at memory speed). 256 MiB.
  int64_t staging_cache_bytes = int64_t{256} << 20;
  // Blocks of an import whose read timed out stay in transfer this long
  // before they are freed (the transport may have abandoned gets that a
  // late peer could still answer into them). 30 s, far above the
  // transport's 1 s abandon delay.
  absl::Duration quarantine = absl::Seconds(30);
  absl::Status Validate() const;
};

// An export, as the importer sees it (ExportBlocksResponse in core types).
struct ExportDescriptor {
  uint64_t export_id = 0;
  std::string worker_address;
  std::string rkey;
  uint64_t remote_base = 0;
  uint64_t layer_stride_bytes = 0;
  uint64_t piece_bytes = 0;
  int32_t num_layers = 0;
  struct Block {
    IndexedBlockInfo info;       // id = the exporter's block id
    uint64_t remote_offset = 0;  // layer l at remote_base + remote_offset + l * layer_stride_bytes
  };
  std::vector<Block> blocks;
  absl::Duration timeout;
};

struct ImportResult {
  int64_t imported = 0;          // read and indexed
  int64_t already_resident = 0;  // skipped: indexed here already
  int64_t duplicates = 0;        // read, but indexed meanwhile by another block (freed)
  int64_t bytes = 0;
  absl::Duration elapsed;
};

class BlockTransfer {
 public:
  // Registers the pool with the transport (when it can be read in place).
  // INVALID_ARGUMENT for bad options; the transport's error when registration fails.
  static absl::StatusOr<std::unique_ptr<BlockTransfer>> Create(KvCache* cache,
                                                               daemon::PoolMemory* pool,
                                                               BlockTransport* transport,
                                                               Clock* clock,
                                                               BlockTransferOptions options);
  ~BlockTransfer();

  // Exporter. INVALID_ARGUMENT for an empty list or more than max_blocks.
  // A hash not resident is left out of the descriptor (not an error).
  absl::StatusOr<ExportDescriptor> Export(absl::Span<const BlockHash> hashes);
  // NOT_FOUND for an unknown (released or expired) export.
  absl::Status ReleaseExport(uint64_t export_id);
  // Drops exports past their deadline (returns how many) and frees
  // quarantined import blocks whose time is up.
  int64_t ExpireExports();
  int64_t active_exports() const;
  int64_t quarantined_blocks() const;

  // Importer: reads `remote`'s blocks that are not resident here and indexes
  // them. FAILED_PRECONDITION when the remote geometry (layers, piece bytes)
  // differs from this pool; RESOURCE_EXHAUSTED when the pool cannot take
  // them; UNAVAILABLE / DEADLINE_EXCEEDED when the transfer fails (nothing
  // indexed; the blocks are freed, after the quarantine for a timeout).
  absl::StatusOr<ImportResult> Import(const ExportDescriptor& remote);

  bool reads_in_place() const { return pool_region_ != nullptr; }

 private:
  class HostPin;  // PoolMemory::PinHost for a scope (block_transfer.cc)
  // Transport-allocated memory an export is staged in, page-locked with the
  // pool for CUDA copies. Destroyed pin first, then region.
  struct StagingArea {
    std::unique_ptr<RegisteredRegion> region;
    std::unique_ptr<HostPin> pin;
  };
  struct ExportEntry {
    KvCache::ExportedBlocks pinned;
    StagingArea staging;  // staged exports only
    absl::Time deadline;
  };

  // A cached area of at least `bytes`, or a new one.
  absl::StatusOr<StagingArea> TakeStagingArea(size_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Keeps the area for reuse (within staging_cache_bytes) or frees it.
  void ReturnStagingArea(StagingArea area) ABSL_LOCKS_EXCLUDED(mu_);

  BlockTransfer(KvCache* cache, daemon::PoolMemory* pool, BlockTransport* transport, Clock* clock,
                BlockTransferOptions options);

  // Immutable after construction.
  KvCache* const cache_;
  daemon::PoolMemory* const pool_;
  BlockTransport* const transport_;
  Clock* const clock_;
  const BlockTransferOptions options_;
  std::unique_ptr<RegisteredRegion> pool_region_;  // null: stage (see above)

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, ExportEntry> exports_ ABSL_GUARDED_BY(mu_);
  absl::BitGen export_ids_ ABSL_GUARDED_BY(mu_);
  // Blocks of a timed-out import, and staging areas (of such imports, or of
  // expired exports) kept out of use until release_at.
  struct Quarantined {
    std::vector<BlockId> blocks;
    StagingArea staging;  // freed with the entry
    absl::Time release_at;
  };
  std::vector<Quarantined> quarantine_ ABSL_GUARDED_BY(mu_);
  std::vector<StagingArea> spare_areas_ ABSL_GUARDED_BY(mu_);
  size_t spare_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_BLOCK_TRANSFER_H_
