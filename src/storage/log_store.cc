// The RocksDB-backed LogStore. Layout: "log/" + big-endian index -> entry (so iteration is in index
// order), "hardstate" -> HardState, "snapshot" -> snapshot meta + data. Each value starts with a
// format version byte so the layout can change without guessing.
#include "storage/log_store.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string_view>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "base/log.h"
#include "base/metrics.h"
#include "storage/log_checks.h"

namespace haven::storage {
namespace {

constexpr char kFormatVersion = 1;
constexpr std::string_view kLogPrefix = "log/";
// The first key after every "log/..." key ('0' follows '/').
constexpr std::string_view kLogEnd = "log0";
constexpr std::string_view kHardStateKey = "hardstate";
constexpr std::string_view kSnapshotKey = "snapshot";

void PutFixed64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(v >> shift));
}

uint64_t GetFixed64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

std::string LogKey(uint64_t index) {
  std::string key(kLogPrefix);
  PutFixed64(key, index);
  return key;
}

std::string EncodeEntry(const LogEntry& e) {
  std::string v;
  v.reserve(1 + 8 + e.data.size());
  v.push_back(kFormatVersion);
  PutFixed64(v, e.term);
  v.append(e.data);
  return v;
}

Result<LogEntry> DecodeEntry(uint64_t index, std::string_view v) {
  if (v.size() < 9 || v[0] != kFormatVersion) {
    return Status::IoError("corrupt log entry at index " + std::to_string(index));
  }
  return LogEntry{index, GetFixed64(v.substr(1)), std::string(v.substr(9))};
}

std::string EncodeHardState(const HardState& hs) {
  std::string v(1, kFormatVersion);
  PutFixed64(v, hs.term);
  PutFixed64(v, hs.vote);
  PutFixed64(v, hs.commit);
  return v;
}

Result<HardState> DecodeHardState(std::string_view v) {
  if (v.size() != 25 || v[0] != kFormatVersion) return Status::IoError("corrupt hard state");
  return HardState{GetFixed64(v.substr(1)), GetFixed64(v.substr(9)), GetFixed64(v.substr(17))};
}

std::string EncodeSnapshot(const Snapshot& s) {
  std::string v;
  v.reserve(1 + 16 + s.data.size());
  v.push_back(kFormatVersion);
  PutFixed64(v, s.index);
  PutFixed64(v, s.term);
  v.append(s.data);
  return v;
}

Result<Snapshot> DecodeSnapshot(std::string_view v) {
  if (v.size() < 17 || v[0] != kFormatVersion) return Status::IoError("corrupt snapshot");
  return Snapshot{GetFixed64(v.substr(1)), GetFixed64(v.substr(9)), std::string(v.substr(17))};
}

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  return Status::IoError(std::string(what) + ": " + s.ToString());
}

metrics::Histogram& FsyncSeconds() {
  static metrics::Histogram& h = metrics::Registry::Default().GetHistogram(
      "haven_storage_fsync_seconds", "Time of each synced write to the log store.");
  return h;
}

metrics::Counter& AppendedEntries() {
  static metrics::Counter& c = metrics::Registry::Default().GetCounter(
      "haven_storage_log_append_entries_total", "Log entries appended to the log store.");
  return c;
}

class RocksLogStore final : public LogStore {
 public:
  explicit RocksLogStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
  ~RocksLogStore() override {
    // Close reports errors the destructor would swallow; nothing to do with them but log.
    if (rocksdb::Status s = db_->Close(); !s.ok()) {
      HLOG_WARN("storage_close_failed", "error=\"{}\"", s.ToString());
    }
  }

  // Reads the cached state (hard state, snapshot meta, last index) after open.
  Status Load();

  Status Append(const std::vector<LogEntry>& entries, bool sync) override;
  Result<std::vector<LogEntry>> Entries(uint64_t lo, uint64_t hi,
                                        uint64_t max_bytes) const override;
  uint64_t FirstIndex() const override;
  uint64_t LastIndex() const override;
  Result<uint64_t> Term(uint64_t index) const override;
  Status TruncateSuffix(uint64_t from) override;
  Status SaveHardState(const HardState& hs) override;
  Status SaveHardStateUnsynced(const HardState& hs) override;
  HardState LoadHardState() const override;
  Status SaveSnapshot(const Snapshot& snap) override;
  std::optional<Snapshot> LoadSnapshot() const override;

 private:
  Status Write(rocksdb::WriteBatch& batch, bool sync, std::string_view what);
  Status WriteHardState(const HardState& hs, bool sync);
  Result<LogEntry> ReadEntry(uint64_t index) const;
  Result<std::optional<uint64_t>> ScanLogEdge(bool last) const;

  std::unique_ptr<rocksdb::DB> db_;
  // Readers (Entries, Term, indexes) may run on another thread than the single writer. Appends
  // write beyond last_index_, where no reader looks, so they take the lock only to publish the new
  // index; truncation and compaction remove what readers could see and hold it exclusively.
  mutable std::shared_mutex mu_;
  uint64_t snap_index_ = 0;
  uint64_t snap_term_ = 0;
  uint64_t last_index_ = 0;
  HardState hard_state_;
};

Status RocksLogStore::Write(rocksdb::WriteBatch& batch, bool sync, std::string_view what) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  const auto start = std::chrono::steady_clock::now();
  rocksdb::Status s = db_->Write(wo, &batch);
  if (sync) {
    FsyncSeconds().Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return FromRocks(s, what);
}

Result<std::optional<uint64_t>> RocksLogStore::ScanLogEdge(bool last) const {
  rocksdb::ReadOptions ro;
  rocksdb::Slice lower(kLogPrefix.data(), kLogPrefix.size());
  rocksdb::Slice upper(kLogEnd.data(), kLogEnd.size());
  ro.iterate_lower_bound = &lower;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  if (last) {
    it->SeekToLast();
  } else {
    it->SeekToFirst();
  }
  if (!it->Valid()) {
    if (Status s = FromRocks(it->status(), "scanning the log"); !s.ok()) return s;
    return std::optional<uint64_t>();
  }
  rocksdb::Slice key = it->key();
  if (key.size() != kLogPrefix.size() + 8) return Status::IoError("corrupt log key");
  return std::optional<uint64_t>(GetFixed64(std::string_view(key.data(), key.size()).substr(4)));
}

Status RocksLogStore::Load() {
  std::string v;
  rocksdb::Status s = db_->Get({}, rocksdb::Slice(kHardStateKey.data(), kHardStateKey.size()), &v);
  if (s.ok()) {
    Result<HardState> hs = DecodeHardState(v);
    if (!hs.ok()) return hs.status();
    hard_state_ = *hs;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "reading the hard state");
  }
  s = db_->Get({}, rocksdb::Slice(kSnapshotKey.data(), kSnapshotKey.size()), &v);
  if (s.ok()) {
    Result<Snapshot> decoded = DecodeSnapshot(v);
    if (!decoded.ok()) return decoded.status();
    snap_index_ = decoded->index;
    snap_term_ = decoded->term;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "reading the snapshot");
  }
  Result<std::optional<uint64_t>> first = ScanLogEdge(false);
  Result<std::optional<uint64_t>> last = ScanLogEdge(true);
  if (!first.ok()) return first.status();
  if (!last.ok()) return last.status();
  if (first->has_value() && **first != snap_index_ + 1) {
    return Status::IoError("corrupt log: first entry " + std::to_string(**first) +
                           " does not follow the snapshot at " + std::to_string(snap_index_));
  }
  last_index_ = last->value_or(snap_index_);
  return Status::Ok();
}

Status RocksLogStore::Append(const std::vector<LogEntry>& entries, bool sync) {
  if (Status s = internal::CheckAppend(entries, LastIndex()); !s.ok()) return s;
  if (entries.empty()) {
    if (!sync) return Status::Ok();
    return FromRocks(db_->SyncWAL(), "syncing the log");
  }
  rocksdb::WriteBatch batch;
  for (const LogEntry& e : entries) {
    rocksdb::Status s = batch.Put(LogKey(e.index), EncodeEntry(e));
    if (!s.ok()) return FromRocks(s, "batching log entries");
  }
  if (Status s = Write(batch, sync, "appending to the log"); !s.ok()) return s;
  AppendedEntries().Inc(entries.size());
  std::unique_lock lock(mu_);
  last_index_ = entries.back().index;
  return Status::Ok();
}

Result<LogEntry> RocksLogStore::ReadEntry(uint64_t index) const {
  std::string v;
  rocksdb::Status s = db_->Get({}, LogKey(index), &v);
  if (s.IsNotFound()) {
    return Status::IoError("log entry " + std::to_string(index) + " missing inside the log");
  }
  if (!s.ok()) return FromRocks(s, "reading the log");
  return DecodeEntry(index, v);
}

Result<std::vector<LogEntry>> RocksLogStore::Entries(uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const {
  std::shared_lock lock(mu_);
  if (Status s = internal::CheckRange(lo, hi, snap_index_ + 1, last_index_); !s.ok()) return s;
  std::vector<LogEntry> out;
  if (lo == hi) return out;
  rocksdb::ReadOptions ro;
  const std::string upper_key = LogKey(hi);
  rocksdb::Slice upper(upper_key);
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  uint64_t total = 0;
  uint64_t want = lo;
  for (it->Seek(LogKey(lo)); it->Valid(); it->Next(), ++want) {
    rocksdb::Slice key = it->key();
    if (key.size() != kLogPrefix.size() + 8 ||
        GetFixed64(std::string_view(key.data(), key.size()).substr(4)) != want) {
      return Status::IoError("log entry " + std::to_string(want) + " missing inside the log");
    }
    Result<LogEntry> e =
        DecodeEntry(want, std::string_view(it->value().data(), it->value().size()));
    if (!e.ok()) return e.status();
    if (!internal::FitsBudget(total, e->data.size(), max_bytes, out.empty())) break;
    total += e->data.size();
    out.push_back(std::move(e).value());
  }
  if (Status s = FromRocks(it->status(), "reading the log"); !s.ok()) return s;
  if (out.empty()) return Status::IoError("log entry " + std::to_string(lo) + " missing");
  return out;
}

uint64_t RocksLogStore::FirstIndex() const {
  std::shared_lock lock(mu_);
  return snap_index_ + 1;
}

uint64_t RocksLogStore::LastIndex() const {
  std::shared_lock lock(mu_);
  return last_index_;
}

Result<uint64_t> RocksLogStore::Term(uint64_t index) const {
  std::shared_lock lock(mu_);
  if (index == snap_index_) return snap_term_;
  if (index < snap_index_ || index > last_index_) {
    return Status::NotFound("no term for index " + std::to_string(index) + "; log holds [" +
                            std::to_string(snap_index_ + 1) + ", " + std::to_string(last_index_) +
                            "]");
  }
  Result<LogEntry> e = ReadEntry(index);
  if (!e.ok()) return e.status();
  return e->term;
}

Status RocksLogStore::TruncateSuffix(uint64_t from) {
  std::unique_lock lock(mu_);
  if (Status s = internal::CheckTruncate(from, snap_index_); !s.ok()) return s;
  rocksdb::WriteBatch batch;
  rocksdb::Status rs =
      batch.DeleteRange(LogKey(from), rocksdb::Slice(kLogEnd.data(), kLogEnd.size()));
  if (!rs.ok()) return FromRocks(rs, "batching a truncation");
  if (Status s = Write(batch, true, "truncating the log"); !s.ok()) return s;
  if (from <= last_index_) last_index_ = from - 1;
  return Status::Ok();
}

Status RocksLogStore::SaveHardState(const HardState& hs) { return WriteHardState(hs, true); }

Status RocksLogStore::SaveHardStateUnsynced(const HardState& hs) {
  return WriteHardState(hs, false);
}

Status RocksLogStore::WriteHardState(const HardState& hs, bool sync) {
  std::unique_lock lock(mu_);
  rocksdb::WriteBatch batch;
  rocksdb::Status rs =
      batch.Put(rocksdb::Slice(kHardStateKey.data(), kHardStateKey.size()), EncodeHardState(hs));
  if (!rs.ok()) return FromRocks(rs, "batching the hard state");
  if (Status s = Write(batch, sync, "saving the hard state"); !s.ok()) return s;
  hard_state_ = hs;
  return Status::Ok();
}

HardState RocksLogStore::LoadHardState() const {
  std::shared_lock lock(mu_);
  return hard_state_;
}

Status RocksLogStore::SaveSnapshot(const Snapshot& snap) {
  std::unique_lock lock(mu_);
  if (Status s = internal::CheckSnapshot(snap, snap_index_); !s.ok()) return s;
  rocksdb::WriteBatch batch;
  rocksdb::Status rs =
      batch.Put(rocksdb::Slice(kSnapshotKey.data(), kSnapshotKey.size()), EncodeSnapshot(snap));
  if (rs.ok()) {
    // Entries up to snap.index are in the snapshot now; index + 1 cannot overflow a real log.
    rs = batch.DeleteRange(rocksdb::Slice(kLogPrefix.data(), kLogPrefix.size()),
                           LogKey(snap.index + 1));
  }
  if (!rs.ok()) return FromRocks(rs, "batching a snapshot");
  if (Status s = Write(batch, true, "saving a snapshot"); !s.ok()) return s;
  snap_index_ = snap.index;
  snap_term_ = snap.term;
  if (last_index_ < snap.index) last_index_ = snap.index;
  return Status::Ok();
}

std::optional<Snapshot> RocksLogStore::LoadSnapshot() const {
  std::string v;
  rocksdb::Status s = db_->Get({}, rocksdb::Slice(kSnapshotKey.data(), kSnapshotKey.size()), &v);
  if (!s.ok()) {
    if (!s.IsNotFound()) HLOG_ERROR("storage_snapshot_read_failed", "error=\"{}\"", s.ToString());
    return std::nullopt;
  }
  Result<Snapshot> snap = DecodeSnapshot(v);
  if (!snap.ok()) {
    HLOG_ERROR("storage_snapshot_corrupt", "error=\"{}\"", snap.status().message());
    return std::nullopt;
  }
  return std::move(snap).value();
}

rocksdb::Options MakeOptions(const RocksOptions& opts) {
  rocksdb::Options o;
  o.create_if_missing = true;
  // Log entries are written once, read soon after and deleted in ranges: compression and bloom
  // filters would cost CPU for nothing.
  o.compression = rocksdb::kNoCompression;
  o.write_buffer_size = opts.write_buffer_bytes;
  o.max_open_files = static_cast<int>(std::min<size_t>(opts.max_open_files, INT_MAX));
  o.keep_log_file_num = 5;
  o.max_log_file_size = 16 << 20;
  return o;
}

Status OpenError(const std::string& dir, const rocksdb::Status& s) {
  const std::string msg = s.ToString();
  if (msg.find("lock") != std::string::npos || msg.find("LOCK") != std::string::npos) {
    return Status::IoError(
        "storage directory " + dir +
        " is locked by another process or store (is another haven using it?): " + msg);
  }
  return Status::IoError("cannot open storage directory " + dir + ": " + msg);
}

}  // namespace

Result<std::unique_ptr<LogStore>> OpenRocksLogStore(const std::string& dir,
                                                    const RocksOptions& opts) {
  if (dir.empty()) return Status::InvalidArgument("storage directory is empty");
  if (opts.write_buffer_bytes < (1 << 20) || opts.max_open_files < 16) {
    return Status::InvalidArgument("storage options too small: write buffer >= 1 MiB and " +
                                   std::string("max open files >= 16 required"));
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(MakeOptions(opts), dir, &raw);
  if (!s.ok()) return OpenError(dir, s);
  auto store = std::make_unique<RocksLogStore>(std::unique_ptr<rocksdb::DB>(raw));
  if (Status ls = store->Load(); !ls.ok()) return ls;
  HLOG_INFO("storage_opened", "dir={} first={} last={}", dir, store->FirstIndex(),
            store->LastIndex());
  return std::unique_ptr<LogStore>(std::move(store));
}

}  // namespace haven::storage
