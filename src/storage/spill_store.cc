// Layout: key = queue uid (8 bytes, big-endian) + message id (8 bytes, big-endian), so a queue's
// records are contiguous and in id order; value = the serialized mq::pb::Message.
#include "storage/spill_store.h"

#include <cstdlib>
#include <filesystem>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>

#include "base/log.h"
#include "base/metrics.h"

namespace haven::storage {
namespace {

std::string Key(uint64_t uid, uint64_t id) {
  std::string key(16, '\0');
  for (int i = 0; i < 8; ++i) {
    key[static_cast<size_t>(i)] = static_cast<char>(uid >> (56 - 8 * i));
    key[static_cast<size_t>(8 + i)] = static_cast<char>(id >> (56 - 8 * i));
  }
  return key;
}

uint64_t IdOf(const rocksdb::Slice& key) {
  uint64_t v = 0;
  for (size_t i = 8; i < 16; ++i) v = (v << 8) | static_cast<unsigned char>(key[i]);
  return v;
}

metrics::Counter& Written() {
  static metrics::Counter& c = metrics::Registry::Default().GetCounter(
      "haven_mq_spill_written_total", "Messages written to the queues' spill on disk");
  return c;
}

metrics::Counter& Read() {
  static metrics::Counter& c = metrics::Registry::Default().GetCounter(
      "haven_mq_spill_read_total", "Messages read back from the queues' spill on disk");
  return c;
}

// A spill that cannot write or read would make this replica decide differently from the others:
// stop the node (it replays its log when restarted) rather than diverge.
[[noreturn]] void Fatal(const char* what, const rocksdb::Status& s) {
  HLOG_ERROR("mq_spill_failed", "op={} error=\"{}\"", what, s.ToString());
  std::abort();
}

class RocksView final : public SpillView {
 public:
  explicit RocksView(rocksdb::DB* db) : db_(db), snap_(db->GetSnapshot()) {}
  ~RocksView() override { db_->ReleaseSnapshot(snap_); }
  RocksView(const RocksView&) = delete;
  RocksView& operator=(const RocksView&) = delete;

  Result<std::vector<mq::MessageSpill::Record>> Read(uint64_t queue_uid, uint64_t from_id,
                                                     size_t max_count,
                                                     size_t max_bytes) const override {
    std::vector<mq::MessageSpill::Record> out;
    const std::string end = Key(queue_uid + 1, 0);
    rocksdb::Slice upper(end);
    rocksdb::ReadOptions ro;
    ro.snapshot = snap_;
    ro.iterate_upper_bound = &upper;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    size_t bytes = 0;
    for (it->Seek(Key(queue_uid, from_id));
         it->Valid() && out.size() < max_count && bytes < max_bytes; it->Next()) {
      bytes += it->value().size();
      out.emplace_back(IdOf(it->key()), it->value().ToString());
    }
    if (!it->status().ok())
      return Status::IoError("reading the mq spill: " + it->status().ToString());
    return out;
  }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snap_;
};

class RocksSpill final : public SpillStore {
 public:
  explicit RocksSpill(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {
    write_.disableWAL = true;
  }

  void Append(uint64_t queue_uid, uint64_t message_id, const std::string& record) override {
    rocksdb::Status s = db_->Put(write_, Key(queue_uid, message_id), record);
    if (!s.ok()) Fatal("append", s);
    Written().Inc();
  }

  std::vector<Record> Read(uint64_t queue_uid, uint64_t from_id, size_t max_count) const override {
    std::vector<Record> out;
    if (max_count == 0) return out;
    const std::string end = Key(queue_uid + 1, 0);
    rocksdb::Slice upper(end);
    rocksdb::ReadOptions ro;
    ro.iterate_upper_bound = &upper;
    ro.fill_cache = false;  // read once, in order: keep the cache for index blocks
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    for (it->Seek(Key(queue_uid, from_id)); it->Valid() && out.size() < max_count; it->Next()) {
      out.emplace_back(IdOf(it->key()), it->value().ToString());
    }
    if (!it->status().ok()) Fatal("read", it->status());
    storage::Read().Inc(out.size());
    return out;
  }

  // Range deletions: one tombstone per gap between kept ranges, whatever the number of records.
  void Truncate(const mq::SpillKeep& keep) override {
    uint64_t from_uid = 0;
    for (const auto& [uid, first_kept] : keep.first_kept_id) {
      DeleteRange(Key(from_uid, 0), Key(uid, first_kept));
      from_uid = uid + 1;
    }
    if (from_uid < keep.next_queue_uid) DeleteRange(Key(from_uid, 0), Key(keep.next_queue_uid, 0));
  }

  uint64_t RecordCount() const override {
    uint64_t n = 0;
    db_->GetIntProperty("rocksdb.estimate-num-keys", &n);
    return n;
  }

  Status Sync() override {
    rocksdb::FlushOptions fo;
    fo.wait = true;
    rocksdb::Status s = db_->Flush(fo);
    if (!s.ok()) return Status::IoError("flushing the mq spill: " + s.ToString());
    return Status::Ok();
  }

  std::shared_ptr<const SpillView> Pin() override { return std::make_shared<RocksView>(db_.get()); }

 private:
  void DeleteRange(const std::string& from, const std::string& to) {
    if (from >= to) return;
    rocksdb::Status s = db_->DeleteRange(write_, db_->DefaultColumnFamily(), from, to);
    if (!s.ok()) HLOG_WARN("mq_spill_truncate_failed", "error=\"{}\"", s.ToString());
  }

  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions write_;
};

}  // namespace

Result<std::unique_ptr<SpillStore>> SpillStore::Open(const std::string& dir,
                                                     const SpillStoreOptions& opts) {
  if (opts.write_buffer_bytes < (size_t{1} << 20) || opts.max_open_files < 16) {
    return Status::InvalidArgument("spill options too small: write buffer >= 1 MiB, files >= 16");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("cannot create " + dir + ": " + ec.message());
  rocksdb::Options o;
  o.create_if_missing = true;
  o.write_buffer_size = opts.write_buffer_bytes;
  o.max_write_buffer_number = 2;
  o.max_open_files = opts.max_open_files;
  o.keep_log_file_num = 3;
  o.max_log_file_size = 8 << 20;
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
  t.cache_index_and_filter_blocks = true;  // bounded by the cache, not by the number of files
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok()) return Status::IoError("cannot open the mq spill in " + dir + ": " + s.ToString());
  HLOG_INFO("mq_spill_opened", "dir={}", dir);
  return std::unique_ptr<SpillStore>(
      std::make_unique<RocksSpill>(std::unique_ptr<rocksdb::DB>(raw)));
}

std::string SpillDir(const std::string& data_dir) {
  return (std::filesystem::path(data_dir) / "mq-spill").string();
}

}  // namespace haven::storage
