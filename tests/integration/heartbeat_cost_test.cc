// TTL heartbeats that do not change a status cost no fsync: they stay in the leader's memory.
#include <atomic>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

constexpr int kInstances = 1000;
constexpr int kThreads = 8;
constexpr int kMeasuredRounds = 3;
constexpr double kHandfulOfFsyncs = 5;

class HeartbeatCostTest : public ServerTest {
 protected:
  // Runs fn(api, i) for i in [0, kInstances) on kThreads connections; returns the failures.
  int ForAllInstances(const std::function<bool(Api&, int)>& fn) {
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Api api(server_->base_url());
        for (int i = t; i < kInstances; i += kThreads) {
          if (!fn(api, i)) failures.fetch_add(1);
        }
      });
    }
    for (auto& th : threads) th.join();
    return failures.load();
  }

  // One pass for every instance; returns how long the round took.
  int64_t PassRound() {
    const int64_t start = NowMs();
    int failures = ForAllInstances([](Api& api, int i) {
      return api.Put("/v1/agent/check/pass/hb-" + std::to_string(i)).status == 200;
    });
    EXPECT_EQ(failures, 0) << "heartbeats refused";
    return NowMs() - start;
  }

  double Metric(const char* name) {
    Reply r = api_->Get("/metrics");
    EXPECT_EQ(r.status, 200);
    auto v = MetricValue(r.body, name);
    EXPECT_TRUE(v.has_value()) << name << " missing from /metrics";
    return v.value_or(-1);
  }
};

TEST_F(HeartbeatCostTest, UnchangedHeartbeatsDoNotFsync) {
  int failures = ForAllInstances([](Api& api, int i) {
    const std::string id = std::to_string(i);
    return api.Put("/v1/agent/service/register",
                   R"({"ID":"hb-)" + id + R"(","Name":"hb","Port":)" + std::to_string(10000 + i) +
                       R"(,"Check":{"CheckID":"hb-)" + id + R"(","TTL":"1s"}})")
               .status == 200;
  });
  ASSERT_EQ(failures, 0) << "registrations refused";

  // critical -> passing: these are status changes and are written.
  const double fsyncs_at_start = Metric("haven_storage_fsync_seconds_count");
  const int64_t first_round_ms = PassRound();
  // If the first (writing) round was slower than the TTL, early instances expired meanwhile; this
  // round brings them back so the measured rounds start from all-passing.
  const int64_t refresh_round_ms = PassRound();
  const double fsyncs_before = Metric("haven_storage_fsync_seconds_count");
  const double appends_before = Metric("haven_storage_log_append_entries_total");
  EXPECT_GT(fsyncs_before, fsyncs_at_start) << "status changes must be written (and fsynced)";

  std::vector<int64_t> round_ms;
  for (int r = 0; r < kMeasuredRounds; ++r) round_ms.push_back(PassRound());

  const double fsyncs_after = Metric("haven_storage_fsync_seconds_count");
  const double appends_after = Metric("haven_storage_log_append_entries_total");
  std::cout << "rounds (ms): first=" << first_round_ms << " refresh=" << refresh_round_ms
            << " measured=" << round_ms[0] << "," << round_ms[1] << "," << round_ms[2]
            << "; fsyncs +" << fsyncs_after - fsyncs_before << ", log entries +"
            << appends_after - appends_before << "\n";
  EXPECT_LE(fsyncs_after - fsyncs_before, kHandfulOfFsyncs)
      << kMeasuredRounds * kInstances << " unchanged heartbeats caused fsyncs";
  EXPECT_LE(appends_after - appends_before, kHandfulOfFsyncs);

  // Every instance stayed healthy throughout, so no fsync above was an expiry.
  Reply passing = api_->Get("/v1/health/service/hb?passing");
  boost::json::value v = ParseJson(passing.body);
  ASSERT_TRUE(v.is_array()) << passing.status;
  EXPECT_EQ(v.as_array().size(), static_cast<size_t>(kInstances))
      << "some TTLs expired between heartbeats; rounds took (ms) " << round_ms[0] << ","
      << round_ms[1] << "," << round_ms[2];
}

}  // namespace
}  // namespace haven::itest
