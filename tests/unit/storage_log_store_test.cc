// Runs the LogStore contract against both implementations (RocksDB and the in-memory twin), plus
// tests for what only one of them has (crash semantics, the directory lock).
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/metrics.h"
#include "storage/log_store.h"
#include "storage/mem_log_store.h"

namespace haven::storage {
namespace {

std::vector<LogEntry> MakeEntries(uint64_t from, uint64_t to, uint64_t term, size_t size = 10) {
  std::vector<LogEntry> out;
  for (uint64_t i = from; i <= to; ++i) {
    out.push_back({i, term, std::string(size, static_cast<char>('a' + i % 26))});
  }
  return out;
}

// A temp dir under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/haven-storage-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Opens a store and "reopens" it the way a restart would.
class RocksFactory {
 public:
  LogStore* Open() {
    auto r = OpenRocksLogStore(dir_.path());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    store_ = std::move(r).value();
    return store_.get();
  }
  LogStore* Reopen() {
    store_.reset();
    return Open();
  }

 private:
  TempDir dir_;
  std::unique_ptr<LogStore> store_;
};

class MemFactory {
 public:
  LogStore* Open() { return &store_; }
  // A restart of the in-memory store is a crash: only what was synced survives.
  LogStore* Reopen() {
    store_.Crash();
    return &store_;
  }

 private:
  MemLogStore store_;
};

template <typename Factory>
class LogStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = factory_.Open(); }
  void Reopen() { store_ = factory_.Reopen(); }

  Factory factory_;
  LogStore* store_ = nullptr;
};

using Factories = ::testing::Types<RocksFactory, MemFactory>;
TYPED_TEST_SUITE(LogStoreTest, Factories);

TYPED_TEST(LogStoreTest, EmptyStore) {
  EXPECT_EQ(this->store_->FirstIndex(), 1u);
  EXPECT_EQ(this->store_->LastIndex(), 0u);
  EXPECT_EQ(*this->store_->Term(0), 0u);
  EXPECT_EQ(this->store_->Term(1).status().code(), Code::kNotFound);
  EXPECT_FALSE(this->store_->LoadSnapshot().has_value());
  EXPECT_TRUE(this->store_->Entries(1, 1, 100)->empty());
}

TYPED_TEST(LogStoreTest, AppendAndReadBack) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 5, 1), true).ok());
  ASSERT_TRUE(this->store_->Append(MakeEntries(6, 8, 2), false).ok());
  EXPECT_EQ(this->store_->FirstIndex(), 1u);
  EXPECT_EQ(this->store_->LastIndex(), 8u);
  auto got = this->store_->Entries(2, 8, UINT64_MAX);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->size(), 6u);
  for (size_t i = 0; i < got->size(); ++i) {
    EXPECT_EQ((*got)[i].index, 2 + i);
    EXPECT_EQ((*got)[i].data, MakeEntries(2 + i, 2 + i, 0)[0].data);
  }
  EXPECT_EQ(*this->store_->Term(5), 1u);
  EXPECT_EQ(*this->store_->Term(6), 2u);
  EXPECT_EQ(this->store_->Term(9).status().code(), Code::kNotFound);
}

TYPED_TEST(LogStoreTest, NonContiguousAppendRejected) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 3, 1), true).ok());
  EXPECT_EQ(this->store_->Append(MakeEntries(5, 6, 1), true).code(), Code::kInvalidArgument);
  EXPECT_EQ(this->store_->Append(MakeEntries(3, 4, 1), true).code(), Code::kInvalidArgument);
  std::vector<LogEntry> gap = MakeEntries(4, 4, 1);
  gap.push_back({6, 1, "x"});
  EXPECT_EQ(this->store_->Append(gap, true).code(), Code::kInvalidArgument);
  EXPECT_EQ(this->store_->LastIndex(), 3u);
}

TYPED_TEST(LogStoreTest, ReopenKeepsEverything) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1), true).ok());
  ASSERT_TRUE(this->store_->SaveHardState({3, 2, 7}).ok());
  ASSERT_TRUE(this->store_->SaveSnapshot({4, 1, "state@4"}).ok());
  ASSERT_TRUE(this->store_->Append(MakeEntries(11, 12, 3), true).ok());
  this->Reopen();
  EXPECT_EQ(this->store_->FirstIndex(), 5u);
  EXPECT_EQ(this->store_->LastIndex(), 12u);
  HardState hs = this->store_->LoadHardState();
  EXPECT_EQ(hs.term, 3u);
  EXPECT_EQ(hs.vote, 2u);
  EXPECT_EQ(hs.commit, 7u);
  auto snap = this->store_->LoadSnapshot();
  ASSERT_TRUE(snap.has_value());
  EXPECT_EQ(snap->index, 4u);
  EXPECT_EQ(snap->term, 1u);
  EXPECT_EQ(snap->data, "state@4");
  EXPECT_EQ(*this->store_->Term(4), 1u);
  EXPECT_EQ(*this->store_->Term(12), 3u);
  auto got = this->store_->Entries(5, 13, UINT64_MAX);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->size(), 8u);
}

TYPED_TEST(LogStoreTest, TruncateSuffix) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1), true).ok());
  ASSERT_TRUE(this->store_->TruncateSuffix(6).ok());
  EXPECT_EQ(this->store_->LastIndex(), 5u);
  EXPECT_EQ(this->store_->Term(6).status().code(), Code::kNotFound);
  ASSERT_TRUE(this->store_->Append(MakeEntries(6, 7, 2), true).ok());
  EXPECT_EQ(*this->store_->Term(6), 2u);
  ASSERT_TRUE(this->store_->TruncateSuffix(100).ok());  // beyond the end: nothing to do
  EXPECT_EQ(this->store_->LastIndex(), 7u);
  this->Reopen();
  EXPECT_EQ(this->store_->LastIndex(), 7u);
  EXPECT_EQ(*this->store_->Term(7), 2u);
}

TYPED_TEST(LogStoreTest, TruncateIntoSnapshotRejected) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1), true).ok());
  ASSERT_TRUE(this->store_->SaveSnapshot({5, 1, "s"}).ok());
  EXPECT_EQ(this->store_->TruncateSuffix(5).code(), Code::kInvalidArgument);
  EXPECT_EQ(this->store_->LastIndex(), 10u);
}

TYPED_TEST(LogStoreTest, SnapshotCompactsPrefix) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1), true).ok());
  ASSERT_TRUE(this->store_->Append(MakeEntries(11, 12, 2), true).ok());
  ASSERT_TRUE(this->store_->SaveSnapshot({10, 1, "s10"}).ok());
  EXPECT_EQ(this->store_->FirstIndex(), 11u);
  EXPECT_EQ(this->store_->LastIndex(), 12u);
  EXPECT_EQ(*this->store_->Term(10), 1u);
  EXPECT_EQ(*this->store_->Term(11), 2u);
  EXPECT_EQ(this->store_->Term(9).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Entries(10, 12, UINT64_MAX).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Entries(11, 13, UINT64_MAX)->size(), 2u);
  ASSERT_TRUE(this->store_->Append(MakeEntries(13, 13, 2), true).ok());
  EXPECT_EQ(this->store_->SaveSnapshot({8, 1, "old"}).code(), Code::kInvalidArgument);
}

TYPED_TEST(LogStoreTest, SnapshotBeyondLastIndex) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 5, 1), true).ok());
  ASSERT_TRUE(this->store_->SaveSnapshot({20, 4, "s20"}).ok());
  EXPECT_EQ(this->store_->FirstIndex(), 21u);
  EXPECT_EQ(this->store_->LastIndex(), 20u);
  EXPECT_EQ(*this->store_->Term(20), 4u);
  EXPECT_EQ(this->store_->Term(5).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Append(MakeEntries(6, 6, 1), true).code(), Code::kInvalidArgument);
  ASSERT_TRUE(this->store_->Append(MakeEntries(21, 22, 4), true).ok());
  this->Reopen();
  EXPECT_EQ(this->store_->FirstIndex(), 21u);
  EXPECT_EQ(this->store_->LastIndex(), 22u);
}

TYPED_TEST(LogStoreTest, EntriesMaxBytes) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1, 100), true).ok());
  EXPECT_EQ(this->store_->Entries(1, 11, 250)->size(), 2u);
  EXPECT_EQ(this->store_->Entries(1, 11, 300)->size(), 3u);
  EXPECT_EQ(this->store_->Entries(1, 11, 1)->size(), 1u);  // always at least one
  EXPECT_EQ(this->store_->Entries(1, 11, 0)->size(), 1u);
  EXPECT_EQ(this->store_->Entries(4, 6, UINT64_MAX)->size(), 2u);
}

TYPED_TEST(LogStoreTest, EntriesOutOfRange) {
  ASSERT_TRUE(this->store_->Append(MakeEntries(1, 10, 1), true).ok());
  EXPECT_EQ(this->store_->Entries(1, 12, 100).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Entries(0, 3, 100).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Entries(5, 3, 100).status().code(), Code::kInvalidArgument);
  ASSERT_TRUE(this->store_->SaveSnapshot({5, 1, ""}).ok());
  EXPECT_EQ(this->store_->Entries(3, 8, 100).status().code(), Code::kNotFound);
}

TYPED_TEST(LogStoreTest, EmptySnapshotDataRoundTrips) {
  ASSERT_TRUE(this->store_->SaveSnapshot({3, 2, ""}).ok());
  this->Reopen();
  auto snap = this->store_->LoadSnapshot();
  ASSERT_TRUE(snap.has_value());
  EXPECT_EQ(snap->index, 3u);
  EXPECT_TRUE(snap->data.empty());
  EXPECT_EQ(this->store_->LastIndex(), 3u);
}

// One writer appends and compacts while a reader reads: the reader sees either an entry or a clean
// NotFound, never a torn state.
TYPED_TEST(LogStoreTest, ReaderRunsBesideWriter) {
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  std::thread reader([&] {
    while (!done.load()) {
      const uint64_t first = this->store_->FirstIndex();
      const uint64_t last = this->store_->LastIndex();
      auto got = this->store_->Entries(first, last + 1, 1 << 20);
      if (!got.ok() && got.status().code() != Code::kNotFound) bad++;
      auto term = this->store_->Term(last);
      if (!term.ok() && term.status().code() != Code::kNotFound) bad++;
    }
  });
  // EXPECT, not ASSERT: returning early would leave the reader thread unjoined.
  for (uint64_t i = 1; i <= 2000; i += 10) {
    EXPECT_TRUE(this->store_->Append(MakeEntries(i, i + 9, 1), i % 100 == 1).ok());
    if (i % 200 == 1) {
      EXPECT_TRUE(this->store_->SaveSnapshot({i, 1, "s"}).ok());
    }
  }
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(this->store_->LastIndex(), 2000u);
}

TEST(MemLogStoreTest, CrashLosesUnsyncedAppendsOnly) {
  MemLogStore store;
  ASSERT_TRUE(store.Append(MakeEntries(1, 3, 1), true).ok());
  ASSERT_TRUE(store.Append(MakeEntries(4, 6, 1), false).ok());
  store.Crash();
  EXPECT_EQ(store.LastIndex(), 3u);
  ASSERT_TRUE(store.Append(MakeEntries(4, 5, 2), false).ok());
  ASSERT_TRUE(store.Append(MakeEntries(6, 6, 2), true).ok());  // syncs 4..5 as well
  ASSERT_TRUE(store.Append(MakeEntries(7, 7, 2), false).ok());
  store.Crash();
  EXPECT_EQ(store.LastIndex(), 6u);
  EXPECT_EQ(*store.Term(4), 2u);
}

TEST(MemLogStoreTest, SavingTheHardStateSyncsTheEntriesBeforeIt) {
  MemLogStore store;
  ASSERT_TRUE(store.Append(MakeEntries(1, 3, 1), false).ok());
  ASSERT_TRUE(store.SaveHardState({1, 1, 3}).ok());  // one fsync for the entries and the state
  EXPECT_EQ(store.sync_count(), 1u);
  store.Crash();
  EXPECT_EQ(store.LastIndex(), 3u);
  EXPECT_EQ(store.LoadHardState().commit, 3u);
}

TEST(MemLogStoreTest, SyncCountIsOnePerSyncedCall) {
  MemLogStore store;
  ASSERT_TRUE(store.Append(MakeEntries(1, 100, 1), true).ok());
  EXPECT_EQ(store.sync_count(), 1u);
  ASSERT_TRUE(store.Append(MakeEntries(101, 200, 1), false).ok());
  EXPECT_EQ(store.sync_count(), 1u);
  ASSERT_TRUE(store.SaveHardState({1, 1, 1}).ok());
  ASSERT_TRUE(store.TruncateSuffix(150).ok());
  ASSERT_TRUE(store.SaveSnapshot({50, 1, ""}).ok());
  EXPECT_EQ(store.sync_count(), 4u);
  EXPECT_FALSE(store.Append(MakeEntries(1, 1, 1), true).ok());
  EXPECT_EQ(store.sync_count(), 4u);  // rejected calls do no I/O
}

TEST(RocksLogStoreTest, SecondOpenOfSameDirIsClearIoError) {
  TempDir dir;
  auto first = OpenRocksLogStore(dir.path());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = OpenRocksLogStore(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kIoError);
  EXPECT_NE(second.status().message().find("locked"), std::string::npos)
      << second.status().message();
}

TEST(RocksLogStoreTest, BadOptionsRejected) {
  TempDir dir;
  EXPECT_EQ(OpenRocksLogStore("").status().code(), Code::kInvalidArgument);
  RocksOptions opts;
  opts.write_buffer_bytes = 10;
  EXPECT_EQ(OpenRocksLogStore(dir.path(), opts).status().code(), Code::kInvalidArgument);
}

TEST(RocksLogStoreTest, UnwritableDirIsIoError) {
  auto r = OpenRocksLogStore("/proc/haven-no-such-dir/x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIoError);
}

TEST(RocksLogStoreTest, CountsAppendsAndFsyncs) {
  TempDir dir;
  auto store = OpenRocksLogStore(dir.path());
  ASSERT_TRUE(store.ok());
  auto& reg = metrics::Registry::Default();
  auto& appended = reg.GetCounter("haven_storage_log_append_entries_total", "");
  auto& fsyncs = reg.GetHistogram("haven_storage_fsync_seconds", "");
  const uint64_t appended0 = appended.Value();
  const uint64_t fsyncs0 = fsyncs.Count();
  ASSERT_TRUE((*store)->Append(MakeEntries(1, 50, 1), true).ok());
  ASSERT_TRUE((*store)->Append(MakeEntries(51, 60, 1), false).ok());
  EXPECT_EQ(appended.Value() - appended0, 60u);
  EXPECT_EQ(fsyncs.Count() - fsyncs0, 1u);
}

}  // namespace
}  // namespace haven::storage
