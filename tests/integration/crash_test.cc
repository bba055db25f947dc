// Durability under SIGKILL: every write the server acknowledged is there after a restart.
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/base64.h"
#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

constexpr int kWriters = 8;
constexpr int kRounds = 3;
constexpr int kMaxWritesPerThread = 20000;  // bounds the data a round can produce
constexpr const char* kServiceName = "crashsvc";

// What one writer thread got acknowledged.
struct Acks {
  std::map<std::string, std::string> kv;  // key -> value
  std::set<std::string> services;         // service ids
};

// Writes as fast as it can until the server dies or `stop` is set; thread 0 also registers
// services every few writes.
void WriteUntilDead(const std::string& base_url, int round, int thread,
                    const std::atomic<bool>& stop, std::atomic<int64_t>& total, Acks* acks) {
  Api api(base_url, 5000);
  for (int i = 0; i < kMaxWritesPerThread && !stop.load(); ++i) {
    if (thread == 0 && i % 4 == 0) {
      const std::string id = "c-" + std::to_string(round) + "-" + std::to_string(i);
      Reply r = api.Put("/v1/agent/service/register", R"({"ID":")" + id + R"(","Name":")" +
                                                          kServiceName + R"(","Port":)" +
                                                          std::to_string(1000 + i % 50000) + "}");
      if (r.status == 0) return;
      if (r.status == 200) acks->services.insert(id);
      total.fetch_add(1);
      continue;
    }
    const std::string key =
        "crash/r" + std::to_string(round) + "/t" + std::to_string(thread) + "/" + std::to_string(i);
    const std::string value = "value-" + std::to_string(round) + "-" + std::to_string(thread) +
                              "-" + std::to_string(i) +
                              std::string(static_cast<size_t>(i % 64), 'x');
    Reply r = api.Put("/v1/kv/" + key, value);
    if (r.status == 0) return;  // the server is gone
    if (r.status == 200 && r.body == "true") acks->kv[key] = value;
    total.fetch_add(1);
  }
}

class CrashTest : public ServerTest {
 protected:
  // Snapshots every 1,000 entries, so that kills also land during and after snapshots and the
  // restart restores a snapshot plus the log after it.
  std::vector<std::string> ExtraArgs() override { return {"--snapshot-every", "1000"}; }

  // Every acknowledged KV write under crash/rROUND/tTHREAD/ is present with its value.
  void ExpectKvPresent(const std::map<std::string, std::string>& acked, const std::string& prefix) {
    Reply r = api_->Get("/v1/kv/" + prefix + "?recurse");
    std::map<std::string, std::string> found;
    json::value v = ParseJson(r.body);
    if (v.is_array()) {
      for (const auto& e : v.as_array()) {
        const auto& o = e.as_object();
        std::string value;
        if (o.at("Value").is_string()) {
          auto decoded = Base64Decode(std::string(o.at("Value").as_string()));
          if (decoded.ok()) value = *decoded;
        }
        found[std::string(o.at("Key").as_string())] = value;
      }
    }
    int missing = 0;
    for (const auto& [key, value] : acked) {
      auto it = found.find(key);
      if (it == found.end() || it->second != value) {
        if (++missing <= 5) ADD_FAILURE() << "acknowledged write lost or wrong: " << key;
      }
    }
    EXPECT_EQ(missing, 0) << "of " << acked.size() << " acknowledged under " << prefix
                          << " (GET status " << r.status << ")";
    verified_ += acked.size() - static_cast<size_t>(missing);
  }

  void ExpectServicesPresent(const std::set<std::string>& acked) {
    Reply r = api_->Get(std::string("/v1/catalog/service/") + kServiceName);
    std::set<std::string> found;
    json::value v = ParseJson(r.body);
    if (v.is_array()) {
      for (const auto& e : v.as_array()) {
        found.insert(std::string(e.as_object().at("ServiceID").as_string()));
      }
    }
    int missing = 0;
    for (const auto& id : acked) missing += found.count(id) == 0 ? 1 : 0;
    EXPECT_EQ(missing, 0) << "of " << acked.size() << " acknowledged service registrations";
    verified_ += acked.size() - static_cast<size_t>(missing);
  }

  void RestartAndReconnect() {
    Status s = server_->Restart();
    ASSERT_TRUE(s.ok()) << s.ToString();
    api_ = std::make_unique<Api>(server_->base_url());
  }

  size_t verified_ = 0;  // acknowledged writes found intact, over all checks
};

TEST_F(CrashTest, AcknowledgedWritesSurviveSigkill) {
  const unsigned seed = std::random_device{}();
  std::cout << "crash_test seed=" << seed << "\n";
  std::mt19937 rng(seed);
  // acked[round][thread]
  std::vector<std::vector<Acks>> acked(kRounds, std::vector<Acks>(kWriters));

  for (int round = 0; round < kRounds; ++round) {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> total{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < kWriters; ++t) {
      writers.emplace_back(WriteUntilDead, server_->base_url(), round, t, std::cref(stop),
                           std::ref(total), &acked[round][t]);
    }
    // The kill point is the variable under test: a random count of answered writes (not a time,
    // which a loaded machine turned into too few writes for any snapshot to be taken), so that
    // the three rounds together cross the 1,000-entry snapshot point before the last kill.
    const int64_t kill_after_writes = 500 + static_cast<int64_t>(rng() % 700);
    const int64_t started_ms = NowMs();
    const bool reached = WaitFor([&] { return total.load() >= kill_after_writes; }, 60'000, 1);
    const int64_t kill_after_ms = NowMs() - started_ms;
    const int64_t writes_before_kill = total.load();
    ASSERT_TRUE(server_->Kill().ok());
    stop.store(true);
    for (auto& w : writers) w.join();
    ASSERT_TRUE(reached) << "only " << writes_before_kill << " writes answered in 60 s";
    std::cout << "round " << round << ": killed after " << kill_after_ms << " ms, "
              << writes_before_kill << " writes answered\n";

    RestartAndReconnect();
    verified_ = 0;
    // Every round so far, not only this one: a restart must not lose older data either.
    for (int r = 0; r <= round; ++r) {
      for (int t = 0; t < kWriters; ++t) {
        ExpectKvPresent(acked[r][t].kv,
                        "crash/r" + std::to_string(r) + "/t" + std::to_string(t) + "/");
      }
      ExpectServicesPresent(acked[r][0].services);
    }
    std::cout << "round " << round << ": " << verified_ << " acknowledged writes intact\n";
    if (HasFailure()) return;
  }
  // The last restart came from a snapshot, not from the whole log.
  std::string log = server_->ReadLog();
  auto at = log.rfind("event=recovered snapshot_index=");
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_NE(log.compare(at, 33, "event=recovered snapshot_index=0 "), 0) << log.substr(at, 120);

  auto exit = server_->Terminate(10000);
  ASSERT_TRUE(exit.ok()) << exit.status().ToString();
  EXPECT_TRUE(exit->exited) << "killed by signal " << exit->signal;
  EXPECT_EQ(exit->code, 0);

  // A clean shutdown keeps everything too.
  ASSERT_TRUE(server_->Start().ok());
  api_ = std::make_unique<Api>(server_->base_url());
  for (int t = 0; t < kWriters; ++t) {
    ExpectKvPresent(acked[kRounds - 1][t].kv,
                    "crash/r" + std::to_string(kRounds - 1) + "/t" + std::to_string(t) + "/");
  }
}

// SIGTERM while writers are busy: a clean exit 0, and what was acknowledged before it is kept.
TEST_F(CrashTest, SigtermUnderLoadExitsCleanly) {
  std::vector<Acks> acked(kWriters);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> total{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back(WriteUntilDead, server_->base_url(), 9, t, std::cref(stop),
                         std::ref(total), &acked[t]);
  }
  ASSERT_TRUE(WaitFor([&] { return total.load() >= 500; }, 10000, 5)) << "writers made no progress";
  auto exit = server_->Terminate(10000);
  stop.store(true);
  for (auto& w : writers) w.join();
  ASSERT_TRUE(exit.ok()) << exit.status().ToString();
  EXPECT_TRUE(exit->exited) << "killed by signal " << exit->signal;
  EXPECT_EQ(exit->code, 0);

  ASSERT_TRUE(server_->Start().ok());
  api_ = std::make_unique<Api>(server_->base_url());
  for (int t = 0; t < kWriters; ++t)
    ExpectKvPresent(acked[t].kv, "crash/r9/t" + std::to_string(t) + "/");
  ExpectServicesPresent(acked[0].services);
  std::cout << verified_ << " acknowledged writes intact after SIGTERM under load\n";
}

}  // namespace
}  // namespace haven::itest
