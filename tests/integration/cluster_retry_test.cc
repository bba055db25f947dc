// At-most-once writes on a 3-node cluster of real `haven server` processes (issue 7): a write
// carrying X-Haven-Request-Id is applied once however often it is retried, on whichever node; a
// counter incremented by read + ?cas through retries while the leader is SIGKILLed (and restarted)
// ends exactly right; every write in flight at the kill is answered within a bound.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr int kNodes = 3;
constexpr int kIncrements = 300;
constexpr int kClients = 6;
constexpr int64_t kLeaderDeadlineMs = 10000;
constexpr int64_t kRequestTimeoutMs = 10000;  // a hang shows as a late answer, not a lost one
constexpr int64_t kInFlightBoundMs = 3000;    // the 1 s, asserted with room for CI noise
constexpr int64_t kTestDeadlineMs = 90000;    // the whole run of increments
constexpr int64_t kConvergeDeadlineMs = 10000;
constexpr int kMaxTriesPerWrite = 200;  // retries of one PUT before the client gives up
constexpr int64_t kRetryBackoffMs = 20;

Headers RequestId(const std::string& id) { return {{"X-Haven-Request-Id", id}}; }

// One PUT as a client saw it.
struct Attempt {
  int64_t sent_ms = 0;
  int64_t answered_ms = 0;
  int status = 0;
  bool read = false;
};

class ClusterRetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(2 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      if (i > 0) peers += ",";
      peers += std::to_string(i + 1) + "=127.0.0.1:" + std::to_string((*ports)[kNodes + i]);
    }
    for (int i = 0; i < kNodes; ++i) {
      ServerSpec spec;
      spec.http = "127.0.0.1:" + std::to_string((*ports)[i]);
      spec.node_name = "n" + std::to_string(i + 1);
      spec.extra_args = {"--node-id", std::to_string(i + 1),
                         "--raft",    "127.0.0.1:" + std::to_string((*ports)[kNodes + i]),
                         "--peers",   peers};
      urls_.push_back("http://" + spec.http);
      nodes_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (auto& n : nodes_) {
      Status s = n->Start();
      ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << n->ReadLog();
    }
    ASSERT_TRUE(WaitForLeader().has_value()) << "no leader elected";
  }

  void TearDown() override {
    if (HasFailure()) {
      for (size_t i = 0; i < nodes_.size(); ++i) {
        std::string log = nodes_[i]->ReadLog();
        std::cout << "---- n" << i + 1 << " log (tail) ----\n"
                  << log.substr(log.size() > 6000 ? log.size() - 6000 : 0) << "\n";
      }
    }
    for (auto& n : nodes_) (void)n->Kill();
  }

  // The node whose /metrics says it leads, when the others running follow it.
  std::optional<int> Leader() {
    std::optional<int> leader;
    for (int i = 0; i < kNodes; ++i) {
      if (!nodes_[i]->running()) continue;
      RaftView v = ReadRaftView(urls_[i], 1000);
      if (!v.up) return std::nullopt;
      if (!v.leader) continue;
      if (leader) return std::nullopt;
      leader = i;
    }
    return leader;
  }
  std::optional<int> WaitForLeader() {
    std::optional<int> leader;
    WaitFor([&] { return (leader = Leader()).has_value(); }, kLeaderDeadlineMs, 20);
    return leader;
  }

  // The counter's value and ModifyIndex (nullopt: no answer); `stale`: the node's own replica,
  // otherwise a read that sees every acknowledged write.
  static std::optional<std::pair<int, uint64_t>> ReadCounter(Api& api, bool stale) {
    Reply r = api.Get(stale ? "/v1/kv/counter?stale" : "/v1/kv/counter");
    if (r.status == 404) return std::pair<int, uint64_t>{0, 0};
    if (!r.ok()) return std::nullopt;
    json::value v = ParseJson(r.body);
    if (!v.is_array() || v.as_array().empty()) return std::nullopt;
    const json::object& e = v.as_array()[0].as_object();
    auto value = Base64Decode(e.at("Value").as_string());
    if (!value.ok()) return std::nullopt;
    return std::pair<int, uint64_t>{std::stoi(*value), e.at("ModifyIndex").to_number<uint64_t>()};
  }

  double DedupeMetric(int i, const char* verdict) {
    Reply r = Api(urls_[i], 1000).Get("/metrics");
    if (!r.ok()) return -1;
    std::string name = std::string("haven_raft_dedupe_entries_total{verdict=\"") + verdict + "\"}";
    return MetricValue(r.body, name).value_or(0);
  }

  std::vector<std::string> urls_;
  std::vector<std::unique_ptr<ServerProcess>> nodes_;
};

// The same request id answers the first outcome, on any node, although the state has moved on:
// a retried `?cas=0` create stays `true`, a retried session create names the same session.
TEST_F(ClusterRetryTest, ARetriedRequestGetsTheFirstOutcomeOnAnyNode) {
  Api a(urls_[0]), b(urls_[1]), c(urls_[2]);
  Reply first = a.Do("PUT", "/v1/kv/once?cas=0", "1", RequestId("create-once"));
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.body, "true");
  // Without an id, the same CAS is a new write, and fails: the key exists.
  EXPECT_EQ(b.Put("/v1/kv/once?cas=0", "2").body, "false");
  // With the id, on two other nodes: the first answer, and nothing applied again.
  for (Api* api : {&b, &c}) {
    Reply again = api->Do("PUT", "/v1/kv/once?cas=0", "3", RequestId("create-once"));
    EXPECT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(again.body, "true");
  }
  auto tree = ReadKvTree(urls_[2], "once", "&stale");
  ASSERT_TRUE(tree.has_value());
  EXPECT_EQ((*tree)["once"], "1");

  Reply s1 = a.Do("PUT", "/v1/session/create", "{\"TTL\":\"30s\"}", RequestId("sess-1"));
  ASSERT_EQ(s1.status, 200) << s1.body;
  Reply s2 = c.Do("PUT", "/v1/session/create", "{\"TTL\":\"30s\"}", RequestId("sess-1"));
  ASSERT_EQ(s2.status, 200) << s2.body;
  EXPECT_EQ(ParseJson(s1.body).at("ID"), ParseJson(s2.body).at("ID"));
  Reply list = a.Get("/v1/session/list");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(ParseJson(list.body).as_array().size(), 1u) << list.body;

  // A delete retried after the key was written again does not delete it again.
  ASSERT_EQ(a.Do("DELETE", "/v1/kv/gone", "", RequestId("del-1")).body, "true");
  ASSERT_EQ(a.Put("/v1/kv/gone", "back").body, "true");
  EXPECT_EQ(b.Do("DELETE", "/v1/kv/gone", "", RequestId("del-1")).body, "true");
  EXPECT_EQ(ReadKvTree(urls_[0], "gone").value_or(std::map<std::string, std::string>{})["gone"],
            "back");

  // Bad ids get 400 and change nothing.
  EXPECT_EQ(a.Do("PUT", "/v1/kv/bad", "x", RequestId(std::string(129, 'a'))).status, 400);
  EXPECT_EQ(a.Do("PUT", "/v1/kv/bad", "x", RequestId("tab\there")).status, 400);
  EXPECT_EQ(a.Get("/v1/kv/bad").status, 404);
  EXPECT_GE(DedupeMetric(1, "duplicate") + DedupeMetric(2, "duplicate"), 3);
}

// Clients spread over all nodes increment one counter kIncrements times by read + ?cas, each PUT
// retried with its request id (on the next node) until it gets `true` or `false`. The leader is
// SIGKILLed a third of the way in and restarted later. The counter ends exactly at kIncrements on
// every node; every request in flight at the kill was answered within kInFlightBoundMs.
TEST_F(ClusterRetryTest, CounterIncrementedThroughRetriesAcrossALeaderKillEndsExact) {
  std::atomic<int> claimed{0}, acked{0};
  std::atomic<int> retried_true{0};  // a retry answered `true`: without ids it could double-apply
  std::atomic<bool> give_up{false};
  std::mutex mu;
  std::vector<Attempt> attempts;
  std::vector<int> acked_values;
  std::string first_error;
  const int64_t deadline = NowMs() + kTestDeadlineMs;

  auto client = [&](int t) {
    int node = t % kNodes;
    auto api = std::make_unique<Api>(urls_[node], kRequestTimeoutMs);
    auto next_node = [&] {
      node = (node + 1) % kNodes;
      api = std::make_unique<Api>(urls_[node], kRequestTimeoutMs);
    };
    for (int k = claimed++; k < kIncrements && !give_up; k = claimed++) {
      for (int attempt = 0; !give_up; ++attempt) {
        if (NowMs() > deadline) {
          give_up = true;
          break;
        }
        Attempt read;
        read.sent_ms = NowMs();
        auto current = ReadCounter(*api, /*stale=*/false);
        read.answered_ms = NowMs();
        read.status = current ? 200 : 503;
        read.read = true;
        {
          std::lock_guard lock(mu);
          attempts.push_back(read);
        }
        if (!current) {
          next_node();
          std::this_thread::sleep_for(std::chrono::milliseconds(kRetryBackoffMs));
          continue;
        }
        const std::string id =
            "t" + std::to_string(t) + "-k" + std::to_string(k) + "-a" + std::to_string(attempt);
        const std::string target = "/v1/kv/counter?cas=" + std::to_string(current->second);
        const std::string value = std::to_string(current->first + 1);
        std::optional<bool> outcome;
        for (int tries = 0; tries < kMaxTriesPerWrite && !outcome && !give_up; ++tries) {
          Attempt a;
          a.sent_ms = NowMs();
          Reply r = api->Do("PUT", target, value, RequestId(id));
          a.answered_ms = NowMs();
          a.status = r.status;
          {
            std::lock_guard lock(mu);
            attempts.push_back(a);
            if (r.status != 200 && first_error.empty()) {
              first_error = std::to_string(r.status) + " " + r.body;
            }
          }
          if (r.status == 200) {
            outcome = r.body == "true";
            if (*outcome && tries > 0) retried_true++;
          } else {
            next_node();  // the same request, its id kept, on another node
            std::this_thread::sleep_for(std::chrono::milliseconds(kRetryBackoffMs));
          }
        }
        if (outcome && *outcome) {
          std::lock_guard lock(mu);
          acked_values.push_back(current->first + 1);
          acked++;
          break;
        }
      }
    }
  };
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) clients.emplace_back(client, t);

  ASSERT_TRUE(WaitFor([&] { return acked.load() >= kIncrements / 3 || give_up; }, 60000, 5));
  auto leader = Leader();
  int64_t kill_ms = 0;
  if (leader) {
    ASSERT_TRUE(nodes_[*leader]->Kill().ok());
    kill_ms = NowMs();
    std::cout << "[retry] killed leader n" << *leader + 1 << " at " << acked.load()
              << " increments\n";
    // Restarted once the others took some writes without it.
    int at_kill = acked.load();
    WaitFor([&] { return acked.load() >= at_kill + 30 || give_up; }, 30000, 5);
    Status s = nodes_[*leader]->Restart();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  for (auto& c : clients) c.join();
  ASSERT_FALSE(give_up.load()) << "clients ran out of time at " << acked.load() << " increments";
  ASSERT_TRUE(leader.has_value()) << "no leader to kill";

  // Exactly kIncrements on every node, and the acknowledged values are 1..kIncrements, once each.
  for (int i = 0; i < kNodes; ++i) {
    Api api(urls_[i], 2000);
    std::optional<std::pair<int, uint64_t>> v;
    WaitFor([&] { return (v = ReadCounter(api, /*stale=*/true)) && v->first >= kIncrements; },
            kConvergeDeadlineMs, 20);
    ASSERT_TRUE(v.has_value()) << "n" << i + 1 << " did not answer";
    EXPECT_EQ(v->first, kIncrements) << "n" << i + 1;
  }
  std::sort(acked_values.begin(), acked_values.end());
  std::vector<int> expected(kIncrements);
  for (int i = 0; i < kIncrements; ++i) expected[i] = i + 1;
  EXPECT_EQ(acked_values, expected);

  // Every request (read or PUT) in flight at the kill (sent before, answered after) was answered
  // in time.
  int64_t max_ms = 0;
  int in_flight = 0, errors = 0;
  Attempt slowest;
  for (const auto& a : attempts) {
    if (a.status != 200) ++errors;
    if (a.sent_ms > kill_ms || a.answered_ms < kill_ms) continue;
    ++in_flight;
    if (a.answered_ms - kill_ms >= max_ms) slowest = a;
    max_ms = std::max(max_ms, a.answered_ms - kill_ms);
  }
  std::cout << "[retry] requests=" << attempts.size() << " errors=" << errors
            << " in_flight_at_kill=" << in_flight << " max_answer_after_kill_ms=" << max_ms
            << " (a " << (slowest.read ? "read" : "put") << " answered " << slowest.status
            << ", sent " << kill_ms - slowest.sent_ms << " ms before the kill)"
            << " retries_answered_true=" << retried_true.load() << " first_error=\"" << first_error
            << "\"\n";
  for (int i = 0; i < kNodes; ++i) {
    std::cout << "[retry] n" << i + 1 << " duplicates=" << DedupeMetric(i, "duplicate")
              << " too_old=" << DedupeMetric(i, "too_old") << "\n";
  }
  EXPECT_LE(max_ms, kInFlightBoundMs);
}

}  // namespace
}  // namespace haven::itest
