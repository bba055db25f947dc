// LocalLog: group commit (many proposals, few fsyncs), log order, and shutdown.
#include "node/local_log.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

// A MemLogStore whose fsync takes time, as a disk's does: what makes batching matter.
class SlowSyncStore final : public storage::LogStore {
 public:
  explicit SlowSyncStore(std::chrono::milliseconds fsync) : fsync_(fsync) {}
  Status Append(const std::vector<storage::LogEntry>& e, bool sync) override {
    if (sync) std::this_thread::sleep_for(fsync_);
    return mem.Append(e, sync);
  }
  Result<std::vector<storage::LogEntry>> Entries(uint64_t lo, uint64_t hi,
                                                 uint64_t max) const override {
    return mem.Entries(lo, hi, max);
  }
  uint64_t FirstIndex() const override { return mem.FirstIndex(); }
  uint64_t LastIndex() const override { return mem.LastIndex(); }
  Result<uint64_t> Term(uint64_t i) const override { return mem.Term(i); }
  Status TruncateSuffix(uint64_t from) override { return mem.TruncateSuffix(from); }
  Status SaveHardState(const storage::HardState& hs) override { return mem.SaveHardState(hs); }
  storage::HardState LoadHardState() const override { return mem.LoadHardState(); }
  Status SaveSnapshot(const storage::Snapshot& s) override { return mem.SaveSnapshot(s); }
  std::optional<storage::Snapshot> LoadSnapshot() const override { return mem.LoadSnapshot(); }

  storage::MemLogStore mem;

 private:
  std::chrono::milliseconds fsync_;
};

TEST(LocalLogTest, ConcurrentProposalsShareFsyncsAndCommitInLogOrder) {
  constexpr int kThreads = 8, kPerThread = 50, kTotal = kThreads * kPerThread;
  SlowSyncStore store(std::chrono::milliseconds(2));
  net::IoRuntime io(1);
  io.Start();
  std::vector<uint64_t> committed;  // only touched on the executor
  LocalLog log(store, io, [&](uint64_t index, const std::string&) { committed.push_back(index); });
  log.Start();

  std::atomic<int> ok{0}, done{0};
  std::promise<void> all_done;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        log.Propose("t" + std::to_string(t) + "-" + std::to_string(i), [&](Status s, uint64_t) {
          if (s.ok()) ok++;
          if (++done == kTotal) all_done.set_value();
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(all_done.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready);
  log.Stop();
  io.Stop();

  EXPECT_EQ(ok.load(), kTotal);
  ASSERT_EQ(committed.size(), static_cast<size_t>(kTotal));
  for (size_t i = 0; i < committed.size(); ++i) EXPECT_EQ(committed[i], i + 1);
  EXPECT_EQ(store.LastIndex(), static_cast<uint64_t>(kTotal));
  // 400 proposals from 8 threads against a 2 ms fsync: they must have shared fsyncs.
  EXPECT_LT(store.mem.sync_count(), static_cast<uint64_t>(kTotal) / 4)
      << "fsyncs=" << store.mem.sync_count();
  // Everything acknowledged was synced: a crash loses none of it.
  store.mem.Crash();
  EXPECT_EQ(store.LastIndex(), static_cast<uint64_t>(kTotal));
}

TEST(LocalLogTest, ProposalsAfterStopFailUnavailable) {
  storage::MemLogStore store;
  net::IoRuntime io(1);
  io.Start();
  LocalLog log(store, io, [](uint64_t, const std::string&) {});
  log.Start();
  log.Stop();
  std::promise<Status> result;
  log.Propose("late", [&](Status s, uint64_t) { result.set_value(s); });
  auto f = result.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(f.get().code(), Code::kUnavailable);
  io.Stop();
  EXPECT_EQ(store.LastIndex(), 0u);
}

}  // namespace
}  // namespace haven::node
