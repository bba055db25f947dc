// The demo's pure parts: where instances live, the latency histogram, option limits, and the
// final data check over real SQLite files.
#include <stdlib.h>

#include <filesystem>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "demo/demo.h"
#include "demo/instance.h"
#include "demo/layout.h"
#include "demo/load.h"
#include "demo/report.h"
#include "demo/sqlite_db.h"

namespace haven::demo {
namespace {

TEST(DemoLayout, EveryInstanceHasOneWorkerAndWorkersHoldOneInstancePerService) {
  const int services = 100, instances = 3, workers = 3;
  std::map<std::string, int> seen;
  for (int w = 0; w < workers; ++w) {
    std::set<int> services_here;
    for (const InstanceRef& ref : InstancesOfWorker(w, services, instances, workers)) {
      seen[InstanceId(ref)]++;
      EXPECT_TRUE(services_here.insert(ref.service).second) << InstanceId(ref);
    }
  }
  EXPECT_EQ(seen.size(), size_t(services * instances));
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(ServiceName(7), "svc-007");
  EXPECT_EQ(InstanceId({7, 2}), "svc-007-2");
  EXPECT_EQ(EventTarget(99, 100), 0);
  EXPECT_EQ(EventQueue(8), "demo.events.svc-008");
}

TEST(DemoLatency, QuantilesAreWithinOneBucket) {
  LatencyHistogram h;
  EXPECT_EQ(LatencyHistogram::QuantileMs(h.Snapshot(), 0.99), 0);
  for (int ms = 1; ms <= 1000; ++ms) h.Record(int64_t{ms} * 1000);
  const auto c = h.Snapshot();
  EXPECT_GE(LatencyHistogram::QuantileMs(c, 0.5), 500);
  EXPECT_LE(LatencyHistogram::QuantileMs(c, 0.5), 500 * 1.1);
  EXPECT_GE(LatencyHistogram::QuantileMs(c, 0.99), 990);
  EXPECT_LE(LatencyHistogram::QuantileMs(c, 0.99), 990 * 1.1);
  h.Record(0);  // clamped, not a crash
  h.Record(int64_t{1} << 40);
  EXPECT_GT(LatencyHistogram::QuantileMs(h.Snapshot(), 1.0), 100000);
}

TEST(DemoInstance, KeysAreChecked) {
  EXPECT_TRUE(IsValidKey("c1-2.x_Y"));
  EXPECT_FALSE(IsValidKey(""));
  EXPECT_FALSE(IsValidKey("a/b"));
  EXPECT_FALSE(IsValidKey("a b"));
  EXPECT_FALSE(IsValidKey(std::string(129, 'a')));
  EXPECT_TRUE(IsValidKey(std::string(128, 'a')));
}

TEST(DemoOptions, LimitsAreEnforced) {
  DemoOptions o;
  EXPECT_TRUE(ValidateDemoOptions(o).ok());
  auto bad = [](auto change) {
    DemoOptions x;
    change(x);
    return !ValidateDemoOptions(x).ok();
  };
  EXPECT_TRUE(bad([](DemoOptions& x) { x.services = 0; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.services = 1000; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.instances = 10; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.cluster = 2; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.concurrency = 0; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.kill_rate = 0; }));
  EXPECT_TRUE(bad([](DemoOptions& x) { x.instances = 1; }));        // chaos needs a second instance
  EXPECT_TRUE(bad([](DemoOptions& x) { x.chaos_leader = true; }));  // needs --cluster 3
  EXPECT_FALSE(bad([](DemoOptions& x) {
    x.instances = 1;
    x.chaos = false;
  }));
}

// A work dir with two services' databases, removed afterwards.
class DemoDataCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/haven-demo-unit-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::filesystem::create_directories(dir_ + "/db");
    for (int s = 0; s < 2; ++s) {
      SqliteDb db;
      ASSERT_TRUE(db.Open(DbPath(dir_, s), true).ok());
      ASSERT_TRUE(db.CreateSchema().ok());
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(DemoDataCheck, CountsLostWritesAndUnrecordedEvents) {
  SqliteDb svc0, svc1;
  ASSERT_TRUE(svc0.Open(DbPath(dir_, 0), false).ok());
  ASSERT_TRUE(svc1.Open(DbPath(dir_, 1), false).ok());
  ASSERT_TRUE(svc0.PutRecords({{"a", "1", "svc-000/a"}, {"b", "2", "svc-000/b"}}).ok());
  ASSERT_TRUE(svc0.PutRecords({{"a", "1", "svc-000/a"}}).ok());  // a retried PUT: same row
  ASSERT_TRUE(svc0.MarkConfirmed({"a", "b"}).ok());
  auto got = svc0.GetRecord("a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->value_or(""), "1");
  EXPECT_FALSE(svc0.GetRecord("zz")->has_value());
  // svc-000's events go to svc-001: "a" recorded (twice: a duplicate counts once), "b" not.
  ASSERT_TRUE(svc1.RecordEvent("svc-000/a", "svc-000").ok());
  ASSERT_TRUE(svc1.RecordEvent("svc-000/a", "svc-000").ok());

  std::vector<AckedWrite> acked = {{0, "a", "1"}, {0, "b", "2"}, {0, "c", "3"}, {1, "x", "9"}};
  auto check = CheckData(dir_, 2, acked);
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  EXPECT_EQ(check->lost_writes, 2u);       // svc-000/c and svc-001/x are not there
  EXPECT_EQ(check->events_published, 4u);  // a, b confirmed; c, x acknowledged
  EXPECT_EQ(check->events_consumed, 1u);
  EXPECT_EQ(check->events_lost, 3u);  // b, c, x

  ASSERT_TRUE(svc0.PutRecords({{"c", "other", "svc-000/c"}}).ok());
  check = CheckData(dir_, 2, acked);
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check->lost_writes, 2u);  // c is there with another value: still lost
}

TEST_F(DemoDataCheck, MissingDatabaseIsAnError) { EXPECT_FALSE(CheckData(dir_, 3, {}).ok()); }

}  // namespace
}  // namespace haven::demo
