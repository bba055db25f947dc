// WatchHub: blocking queries wake on a change of their own tables past their index, or at timeout.
#include "node/watch_hub.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>

namespace haven::node {
namespace {

using registry::Table;

class WatchHubTest : public ::testing::Test {
 protected:
  void SetUp() override { io_.Start(); }
  void TearDown() override { io_.Stop(); }

  // Runs fn on the executor, as the node does, and waits for it.
  void OnExecutor(const std::function<void()>& fn) {
    std::promise<void> p;
    io_.Post([&] {
      fn();
      p.set_value();
    });
    ASSERT_EQ(p.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  }

  net::IoRuntime io_{1};
  WatchHub hub_{io_};
};

TEST_F(WatchHubTest, WakesOnlyWhenItsTableMovesPastTheIndex) {
  uint64_t kv_index = 5;
  int fired = 0;
  OnExecutor([&] {
    hub_.Park(
        {Table::kKV}, 5, [&] { return kv_index; }, 60'000, [&] { fired++; });
  });
  OnExecutor([&] { hub_.OnTablesChanged({Table::kServices}); });  // another table
  OnExecutor([&] { hub_.OnTablesChanged({Table::kKV}); });        // same table, index not past 5
  EXPECT_EQ(fired, 0);
  OnExecutor([&] {
    kv_index = 6;
    hub_.OnTablesChanged({Table::kKV});
  });
  EXPECT_EQ(fired, 1);
  OnExecutor([&] { hub_.OnTablesChanged({Table::kKV}); });  // answered once only
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(hub_.parked(), 0u);
}

TEST_F(WatchHubTest, AnswersAtTheEndOfTheWait) {
  std::promise<void> fired;
  auto start = std::chrono::steady_clock::now();
  OnExecutor([&] {
    hub_.Park(
        {Table::kChecks}, 1, [] { return uint64_t{1}; }, 80, [&] { fired.set_value(); });
  });
  auto f = fired.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(75));
}

TEST_F(WatchHubTest, ShutdownAnswersEveryParkedQuery) {
  int fired = 0;
  OnExecutor([&] {
    for (int i = 0; i < 3; ++i) {
      hub_.Park(
          {Table::kKV, Table::kSessions}, 9, [] { return uint64_t{1}; }, 60'000, [&] { fired++; });
    }
    EXPECT_EQ(hub_.parked(), 3u);
    hub_.Shutdown();
  });
  EXPECT_EQ(fired, 3);
  EXPECT_EQ(hub_.parked(), 0u);
}

}  // namespace
}  // namespace haven::node
