#include "services/daemon/block_transfer.h"

#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

namespace {

MemoryKind KindOf(daemon::PoolBackend backend) {
  return backend == daemon::PoolBackend::kCuda ? MemoryKind::kCuda : MemoryKind::kHost;
}

}  // namespace

class BlockTransfer::HostPin {
 public:
  HostPin(daemon::PoolMemory* pool, void* base) : pool_(pool), base_(base) {}
  ~HostPin() { pool_->UnpinHost(base_); }
  HostPin(const HostPin&) = delete;
  HostPin& operator=(const HostPin&) = delete;

 private:
  daemon::PoolMemory* const pool_;
  void* const base_;
};

absl::Status BlockTransferOptions::Validate() const {
  if (export_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("export_timeout must be positive, got ",
                                                   absl::FormatDuration(export_timeout)));
  }
  if (quarantine < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("quarantine must be >= 0, got ", absl::FormatDuration(quarantine)));
  }
  if (staging_cache_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging cache bytes must be >= 0, got ", staging_cache_bytes));
  }
  if (max_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_transfer_blocks must be >= 1, got ", max_blocks));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BlockTransfer>> BlockTransfer::Create(
    KvCache* cache, daemon::PoolMemory* pool, BlockTransport* transport, Clock* clock,
    BlockTransferOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (cache == nullptr || pool == nullptr || transport == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("BlockTransfer: null cache, pool, transport or clock");
  }
  std::unique_ptr<BlockTransfer> transfer(
      new BlockTransfer(cache, pool, transport, clock, options));
  // In place only for a CUDA pool the transport can read directly; host
  // pools read faster (and survive dead peers) from transport-allocated
  // staging (see the header).
  const MemoryKind kind = KindOf(pool->backend());
  if (kind == MemoryKind::kCuda && transport->SupportsMemory(kind)) {
    absl::StatusOr<std::unique_ptr<RegisteredRegion>> region = transport->Register(
        pool->base(), static_cast<size_t>(pool->layout().bytes()), kind);
    if (!region.ok()) {
      return absl::Status(region.status().code(),
                          absl::StrCat("registering the KV pool for transfer: ",
                                       region.status().message()));
    }
    transfer->pool_region_ = *std::move(region);
  }
  return transfer;
}

BlockTransfer::BlockTransfer(KvCache* cache, daemon::PoolMemory* pool, BlockTransport* transport,
                             Clock* clock, BlockTransferOptions options)
    : cache_(cache), pool_(pool), transport_(transport), clock_(clock), options_(options) {}

BlockTransfer::~BlockTransfer() {
  absl::flat_hash_map<uint64_t, ExportEntry> exports;
  std::vector<StagingArea> spare;
  std::vector<Quarantined> quarantined;
  {
    absl::MutexLock lock(&mu_);
    exports.swap(exports_);
    spare.swap(spare_areas_);
    quarantined.swap(quarantine_);
  }
  for (const Quarantined& q : quarantined) (void)cache_->AbortImport(q.blocks);
}

absl::StatusOr<ExportDescriptor> BlockTransfer::Export(absl::Span<const BlockHash> hashes) {
  if (hashes.empty()) return absl::InvalidArgumentError("ExportBlocks: no hashes");
  if (static_cast<int64_t>(hashes.size()) > options_.max_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("ExportBlocks: ", hashes.size(),
                                                   " hashes, more than the limit of ",
                                                   options_.max_blocks));
  }
  const daemon::PoolLayout& layout = pool_->layout();
  ExportEntry entry;
  entry.pinned = cache_->PinForExport(hashes);
  entry.deadline = clock_->Now() + options_.export_timeout;

  ExportDescriptor out;
  out.worker_address = transport_->address();
  out.piece_bytes = static_cast<uint64_t>(layout.piece_bytes());
  out.num_layers = layout.num_layers;
  out.timeout = options_.export_timeout;
  out.blocks.reserve(entry.pinned.blocks.size());
  const RegisteredRegion* region = pool_region_.get();
  if (region != nullptr) {
    out.remote_base = reinterpret_cast<uint64_t>(pool_->base());
    out.layer_stride_bytes = static_cast<uint64_t>(layout.layer_stride_bytes());
    for (const IndexedBlockInfo& info : entry.pinned.blocks) {
      out.blocks.push_back({info, static_cast<uint64_t>(info.id) * out.piece_bytes});
    }
  } else if (!entry.pinned.blocks.empty()) {
    // Stage into the transport's memory in the wire layout.
    std::vector<int64_t> ids;
    ids.reserve(entry.pinned.blocks.size());
    for (const IndexedBlockInfo& info : entry.pinned.blocks) ids.push_back(info.id);
    const uint64_t block_bytes = static_cast<uint64_t>(layout.block_bytes());
    const size_t bytes = ids.size() * block_bytes;
    absl::StatusOr<StagingArea> area = TakeStagingArea(bytes);
    if (!area.ok()) return area.status();
    entry.staging = *std::move(area);
    void* base = entry.staging.region->base();
    if (absl::Status s = pool_->CopyBlocksToHost(
            ids, absl::Span<uint8_t>(static_cast<uint8_t*>(base), bytes));
        !s.ok()) {
      ReturnStagingArea(std::move(entry.staging));
      return s;
    }
    region = entry.staging.region.get();
    out.remote_base = reinterpret_cast<uint64_t>(base);
    out.layer_stride_bytes = out.piece_bytes;
    for (size_t i = 0; i < entry.pinned.blocks.size(); ++i) {
      out.blocks.push_back({entry.pinned.blocks[i], i * block_bytes});
    }
  }
  if (region != nullptr) out.rkey = region->packed_rkey();
  absl::MutexLock lock(&mu_);
  // Random ids: a client cannot guess (and release) another client's export.
  do {
    out.export_id = absl::Uniform<uint64_t>(export_ids_);
  } while (out.export_id == 0 || exports_.contains(out.export_id));
  exports_.emplace(out.export_id, std::move(entry));
  return out;
}

absl::Status BlockTransfer::ReleaseExport(uint64_t export_id) {
  ExportEntry released;
  {
    absl::MutexLock lock(&mu_);
    auto it = exports_.find(export_id);
    if (it == exports_.end()) {
      return absl::NotFoundError(absl::StrCat("ReleaseExport: no export ", export_id,
                                              " (never issued, released or expired)"));
    }
    released = std::move(it->second);
    exports_.erase(it);
  }
  released.pinned.pins.Reset();
  ReturnStagingArea(std::move(released.staging));
  return absl::OkStatus();
}

int64_t BlockTransfer::ExpireExports() {
  const absl::Time now = clock_->Now();
  std::vector<ExportEntry> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = exports_.begin(); it != exports_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second));
        exports_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (ExportEntry& e : expired) {
    e.pinned.pins.Reset();
    // Not kept for reuse: a slow importer may still read it, and must then
    // read this export's bytes, never a later export's. Not freed at once
    // either (Debian's UCX 1.13 crashes a reader whose peer memory vanished):
    // retired through the quarantine, freed after options_.quarantine.
    if (e.staging.region != nullptr) {
      absl::MutexLock lock(&mu_);
      quarantine_.push_back({{}, std::move(e.staging), now + options_.quarantine});
    }
  }
  // Quarantined imports whose time is up are freed.
  std::vector<BlockId> freed;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = quarantine_.begin(); it != quarantine_.end();) {
      if (it->release_at <= now) {
        freed.insert(freed.end(), it->blocks.begin(), it->blocks.end());
        it = quarantine_.erase(it);  // its staging area (if any) is freed here
      } else {
        ++it;
      }
    }
  }
  if (!freed.empty()) {
    const absl::Status aborted = cache_->AbortImport(freed);
    ABSL_RAW_CHECK(aborted.ok(), "freeing quarantined imports failed");
  }
  return static_cast<int64_t>(expired.size());
}

int64_t BlockTransfer::quarantined_blocks() const {
  absl::MutexLock lock(&mu_);
  int64_t n = 0;
  for (const Quarantined& q : quarantine_) n += static_cast<int64_t>(q.blocks.size());
  return n;
}

absl::StatusOr<BlockTransfer::StagingArea> BlockTransfer::TakeStagingArea(size_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    // The smallest cached area that fits.
    auto best = spare_areas_.end();
    for (auto it = spare_areas_.begin(); it != spare_areas_.end(); ++it) {
      if (it->region->bytes() >= bytes &&
          (best == spare_areas_.end() || it->region->bytes() < best->region->bytes())) {
        best = it;
      }
    }
    if (best != spare_areas_.end()) {
      StagingArea area = std::move(*best);
      spare_bytes_ -= area.region->bytes();
      spare_areas_.erase(best);
      return area;
    }
  }
  // Power-of-two sizes (at least 1 MiB) so released areas fit later exports.
  size_t size = size_t{1} << 20;
  while (size < bytes) size <<= 1;
  StagingArea area;
  absl::StatusOr<std::unique_ptr<RegisteredRegion>> region = transport_->Allocate(size);
  if (!region.ok()) return region.status();
  area.region = *std::move(region);
  if (absl::Status s = pool_->PinHost(area.region->base(), size); !s.ok()) return s;
  area.pin = std::make_unique<HostPin>(pool_, area.region->base());
  return area;
}

void BlockTransfer::ReturnStagingArea(StagingArea area) {
  if (area.region == nullptr) return;
  absl::MutexLock lock(&mu_);
  const size_t size = area.region->bytes();
  if (spare_bytes_ + size > static_cast<size_t>(options_.staging_cache_bytes)) return;  // freed
  spare_bytes_ += size;
  spare_areas_.push_back(std::move(area));
}

int64_t BlockTransfer::active_exports() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(exports_.size());
}

absl::StatusOr<ImportResult> BlockTransfer::Import(const ExportDescriptor& remote) {
  const absl::Time start = absl::Now();
  const daemon::PoolLayout& layout = pool_->layout();
  if (remote.num_layers != layout.num_layers ||
      remote.piece_bytes != static_cast<uint64_t>(layout.piece_bytes())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ImportBlocks: the peer's blocks have ", remote.num_layers, " layers of ",
        remote.piece_bytes, " bytes, this pool ", layout.num_layers, " layers of ",
        layout.piece_bytes(), " bytes (different model shapes)"));
  }
  if (static_cast<int64_t>(remote.blocks.size()) > options_.max_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("ImportBlocks: ", remote.blocks.size(),
                                                   " blocks, more than the limit of ",
                                                   options_.max_blocks));
  }
  // The peer's identities are sealed as they are: refuse impossible ones
  // before anything is allocated.
  const int64_t block_tokens = cache_->model().block_tokens;
  for (size_t i = 0; i < remote.blocks.size(); ++i) {
    const IndexedBlockInfo& info = remote.blocks[i].info;
    if (info.tokens <= 0 || info.tokens > block_tokens || info.position < 0 ||
        info.position % block_tokens != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ImportBlocks: the peer's block ", i, " has tokens=", info.tokens, " position=",
          info.position, " (want tokens in [1, ", block_tokens, "], a position >= 0 and a multiple of ",
          block_tokens, ")"));
    }
  }
  ImportResult result;
  std::vector<BlockHash> hashes;
  hashes.reserve(remote.blocks.size());
  for (const ExportDescriptor::Block& b : remote.blocks) hashes.push_back(b.info.hash);
  const std::vector<int64_t> resident = cache_->LookupPositions(hashes);
  std::vector<const ExportDescriptor::Block*> wanted;
  for (size_t i = 0; i < remote.blocks.size(); ++i) {
    if (resident[i] >= 0) {
      ++result.already_resident;
    } else {
      wanted.push_back(&remote.blocks[i]);
    }
  }
  if (wanted.empty()) {
    result.elapsed = absl::Now() - start;
    return result;
  }
  if (remote.worker_address.empty() || remote.rkey.empty()) {
    return absl::InvalidArgumentError("ImportBlocks: the export has no transport address or key");
  }
  absl::StatusOr<std::vector<BlockId>> ids =
      cache_->AllocateForImport(static_cast<int64_t>(wanted.size()));
  if (!ids.ok()) return ids.status();

  const int64_t piece = layout.piece_bytes();
  // Host pools are read into directly; a GPU pool not readable in place by
  // the transport goes through a (page-locked) staging buffer.
  const bool staged_import =
      pool_region_ == nullptr && pool_->backend() == daemon::PoolBackend::kCuda;
  StagingArea staging;  // reused, page-locked staging (see TakeStagingArea)
  if (staged_import) {
    absl::StatusOr<StagingArea> area =
        TakeStagingArea(wanted.size() * static_cast<size_t>(layout.block_bytes()));
    if (!area.ok()) {
      const absl::Status aborted = cache_->AbortImport(*ids);
      ABSL_RAW_CHECK(aborted.ok(), "ImportBlocks: freeing in-transfer blocks failed");
      return area.status();
    }
    staging = *std::move(area);
  }
  uint8_t* staging_base =
      staged_import ? static_cast<uint8_t*>(staging.region->base()) : nullptr;
  std::vector<RemoteRead> reads;
  reads.reserve(wanted.size() * static_cast<size_t>(layout.num_layers));
  uint8_t* pool_base = static_cast<uint8_t*>(pool_->base());
  for (size_t i = 0; i < wanted.size(); ++i) {
    for (int32_t l = 0; l < layout.num_layers; ++l) {
      RemoteRead r;
      r.remote_addr = remote.remote_base + wanted[i]->remote_offset +
                      static_cast<uint64_t>(l) * remote.layer_stride_bytes;
      r.bytes = static_cast<size_t>(piece);
      r.local = !staged_import
                    ? pool_base + layout.PieceOffset(l, (*ids)[i])
                    : staging_base + (i * layout.num_layers + l) * piece;
      reads.push_back(r);
    }
  }
  // Coalesce ranges contiguous on both sides (a staged export and a staging
  // buffer share the wire layout, so whole runs of blocks become one read),
  // in chunks small enough to keep several reads in flight.
  constexpr size_t kMaxReadBytes = size_t{4} << 20;
  std::vector<RemoteRead> merged;
  merged.reserve(reads.size());
  for (const RemoteRead& r : reads) {
    if (!merged.empty()) {
      RemoteRead& last = merged.back();
      if (last.remote_addr + last.bytes == r.remote_addr &&
          static_cast<uint8_t*>(last.local) + last.bytes == r.local &&
          last.bytes + r.bytes <= kMaxReadBytes) {
        last.bytes += r.bytes;
        continue;
      }
    }
    merged.push_back(r);
  }
  absl::Status read = transport_->Read(remote.worker_address, remote.rkey, merged);
  if (read.ok() && staged_import) {
    std::vector<int64_t> local(ids->begin(), ids->end());
    read = pool_->CopyBlocksFromHost(
        local, absl::Span<const uint8_t>(staging_base, wanted.size() * layout.block_bytes()));
  }
  if (!read.ok()) {
    if (read.code() == absl::StatusCode::kDeadlineExceeded) {
      // A timed-out read may leave gets the transport abandoned (the peer
      // never answered them); were it to answer late, they would land in
      // these blocks (or the staging area). Keep both out of use for a while.
      absl::MutexLock lock(&mu_);
      quarantine_.push_back(
          {*std::move(ids), std::move(staging), clock_->Now() + options_.quarantine});
    } else {
      const absl::Status aborted = cache_->AbortImport(*ids);
      ABSL_RAW_CHECK(aborted.ok(), "ImportBlocks: freeing in-transfer blocks failed");
      ReturnStagingArea(std::move(staging));
    }
    return absl::Status(read.code(), absl::StrCat("ImportBlocks: ", read.message()));
  }
  std::vector<IndexedBlockInfo> infos;
  infos.reserve(wanted.size());
  for (size_t i = 0; i < wanted.size(); ++i) {
    IndexedBlockInfo info = wanted[i]->info;
    info.id = (*ids)[i];
    info.owner = 0;
    infos.push_back(info);
  }
  ReturnStagingArea(std::move(staging));
  absl::StatusOr<int64_t> indexed = cache_->FinishImport(infos);
  ABSL_RAW_CHECK(indexed.ok(), "ImportBlocks: indexing received blocks failed");
  result.imported = *indexed;
  result.duplicates = static_cast<int64_t>(wanted.size()) - *indexed;
  result.bytes = static_cast<int64_t>(wanted.size()) * layout.block_bytes();
  result.elapsed = absl::Now() - start;
  return result;
}

}  // namespace asymcache
