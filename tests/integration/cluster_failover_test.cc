// Leader failover timing of a 3-node cluster of real `haven server` processes (issue 7): after a
// SIGKILL of the leader under a write load on every node, writes succeed again through a survivor
// within a bound; and a cluster under a steady write load keeps its term (no election without a
// fault). bench/failover/elections.sh runs the second test for 10 minutes.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

constexpr int kNodes = 3;
constexpr int kKills = 3;
// The goal is 0.5 s (issue 7); asserted with room for a noisy CI machine, the figure is printed.
constexpr int64_t kFailoverBoundMs = 1500;
constexpr int64_t kLeaderDeadlineMs = 10000;
constexpr int64_t kProbeTimeoutMs = 1000;  // one /metrics read
constexpr int64_t kWriteTimeoutMs = 2000;  // a background write; its outcome does not matter here
// After the kill, fresh writes through each survivor start every kProberStaggerMs (each prober
// then writes in a loop), so that a write sent once the survivors know the leader is gone is
// never queued behind one that was forwarded to the dead leader.
constexpr int kProbersPerNode = 16;
constexpr int64_t kProberStaggerMs = 25;
constexpr int64_t kProberWriteTimeoutMs = 1000;
constexpr int64_t kProbeWindowMs = 5000;  // probers give up after this
constexpr int kWritersPerNode = 2;
constexpr int64_t kDefaultSteadyMs = 60'000;
constexpr int64_t kMaxSteadyMs = int64_t{3600} * 1000;
constexpr int64_t kSampleEveryMs = 500;
constexpr size_t kLogTailLines = 40;

// How long the steady-load test runs: HAVEN_STEADY_SECONDS (elections.sh sets 600), else 60 s.
int64_t SteadyMs() {
  const char* env = std::getenv("HAVEN_STEADY_SECONDS");
  if (env == nullptr || *env == '\0') return kDefaultSteadyMs;
  int64_t ms = std::atoll(env) * 1000;
  return std::clamp<int64_t>(ms, 1000, kMaxSteadyMs);
}

// Extra `haven server` flags from HAVEN_SERVER_ARGS (space-separated), so that elections.sh can
// measure other timings (e.g. "--raft-tick 20ms --election-timeout 200ms"); none by default.
std::vector<std::string> ExtraServerArgs() {
  std::vector<std::string> args;
  const char* env = std::getenv("HAVEN_SERVER_ARGS");
  std::string text = env ? env : "";
  size_t at = 0;
  while (at < text.size() && args.size() < 32) {
    size_t end = text.find(' ', at);
    if (end == std::string::npos) end = text.size();
    if (end > at) args.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  return args;
}

// Threads that PUT unique keys to their node in a loop until stopped; they count what succeeded.
class Writers {
 public:
  Writers(const std::vector<std::string>& urls, int per_node, std::string tag) : tag_(tag) {
    int t = 0;
    for (const auto& url : urls) {
      for (int i = 0; i < per_node; ++i, ++t)
        threads_.emplace_back([this, url, t] { Run(url, t); });
    }
  }
  ~Writers() { Stop(); }
  Writers(const Writers&) = delete;
  Writers& operator=(const Writers&) = delete;
  void Stop() {
    stop_ = true;
    for (auto& th : threads_) {
      if (th.joinable()) th.join();
    }
  }
  int64_t acked() const { return acked_.load(); }
  int64_t failed() const { return failed_.load(); }

 private:
  void Run(const std::string& url, int t) {
    Api api(url, kWriteTimeoutMs);
    for (int64_t i = 0; !stop_.load(); ++i) {
      std::string key = "fo/" + tag_ + "/w" + std::to_string(t) + "/" + std::to_string(i);
      Reply r = api.Put("/v1/kv/" + key, "v");
      if (r.ok() && r.body == "true") {
        ++acked_;
      } else {
        ++failed_;
        // A dead node refuses at once: do not spin on it.
        WaitFor([this] { return stop_.load(); }, 20);
      }
    }
  }
  std::string tag_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> acked_{0}, failed_{0};
  std::vector<std::thread> threads_;
};

class ClusterFailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(2 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      http_ports_.push_back((*ports)[static_cast<size_t>(i)]);
      int raft_port = (*ports)[static_cast<size_t>(kNodes + i)];
      if (i > 0) peers += ",";
      peers += std::to_string(i + 1) + "=127.0.0.1:" + std::to_string(raft_port);
      raft_addrs_.push_back("127.0.0.1:" + std::to_string(raft_port));
    }
    for (int i = 0; i < kNodes; ++i) {
      ServerSpec spec;
      spec.http = "127.0.0.1:" + std::to_string(http_ports_[static_cast<size_t>(i)]);
      spec.node_name = "n" + std::to_string(i + 1);
      spec.extra_args = {"--node-id", std::to_string(i + 1),
                         "--raft",    raft_addrs_[static_cast<size_t>(i)],
                         "--peers",   peers};
      for (auto& a : ExtraServerArgs()) spec.extra_args.push_back(a);
      nodes_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (int i = 0; i < kNodes; ++i) {
      Status s = node(i).Start();
      ASSERT_TRUE(s.ok()) << "n" << i + 1 << ": " << s.ToString() << "\n" << node(i).ReadLog();
    }
  }

  void TearDown() override {
    if (HasFailure()) {
      for (int i = 0; i < kNodes; ++i) {
        std::cout << "---- n" << i + 1 << " log (last " << kLogTailLines << " lines) ----\n"
                  << LastLines(node(i).ReadLog(), kLogTailLines);
      }
    }
    for (auto& n : nodes_) (void)n->Kill();
  }

  ServerProcess& node(int i) { return *nodes_[static_cast<size_t>(i)]; }
  std::string Url(int i) const {
    return "http://127.0.0.1:" + std::to_string(http_ports_[static_cast<size_t>(i)]);
  }
  std::vector<std::string> Urls(const std::vector<int>& among) const {
    std::vector<std::string> urls;
    for (int i : among) urls.push_back(Url(i));
    return urls;
  }

  RaftView Observe(int i) {
    return node(i).running() ? ReadRaftView(Url(i), kProbeTimeoutMs) : RaftView{};
  }
  // The node (index) that every node of `among` follows, when they all agree.
  std::optional<int> AgreedLeader(const std::vector<int>& among) {
    std::optional<uint64_t> id;
    for (int i : among) {
      RaftView v = Observe(i);
      if (!v.up || v.leader_id == 0 || (id && *id != v.leader_id)) return std::nullopt;
      id = v.leader_id;
    }
    if (!id || *id > static_cast<uint64_t>(kNodes)) return std::nullopt;
    int idx = static_cast<int>(*id) - 1;
    if (std::find(among.begin(), among.end(), idx) == among.end()) return std::nullopt;
    return idx;
  }
  std::optional<int> WaitAgreedLeader(const std::vector<int>& among) {
    std::optional<int> leader;
    WaitFor([&] { return (leader = AgreedLeader(among)).has_value(); }, kLeaderDeadlineMs, 20);
    return leader;
  }

  // SIGKILLs `victim` and returns the ms from the kill to the first acknowledged write sent
  // through a survivor after it (nullopt: none within kProbeWindowMs).
  std::optional<int64_t> KillAndTimeFirstWrite(int victim, const std::vector<int>& survivors,
                                               int round) {
    std::atomic<int64_t> first_ack{0};
    std::atomic<bool> done{false};
    const int64_t kill_ms = NowMs();
    EXPECT_TRUE(node(victim).Kill().ok());
    std::vector<std::thread> probers;
    for (int s : survivors) {
      for (int p = 0; p < kProbersPerNode; ++p) {
        probers.emplace_back([&, s, p] {
          const int64_t start = kill_ms + p * kProberStaggerMs;
          if (WaitFor([&] { return done.load(); }, std::max<int64_t>(0, start - NowMs()))) return;
          Api api(Url(s), kProberWriteTimeoutMs);
          for (int i = 0; !done.load() && NowMs() - kill_ms < kProbeWindowMs; ++i) {
            std::string key = "fo/kill" + std::to_string(round) + "/n" + std::to_string(s + 1) +
                              "/p" + std::to_string(p) + "/" + std::to_string(i);
            Reply r = api.Put("/v1/kv/" + key, "v");
            if (r.ok() && r.body == "true") {
              int64_t expected = 0;
              first_ack.compare_exchange_strong(expected, NowMs());
              done = true;
            }
          }
        });
      }
    }
    for (auto& t : probers) t.join();
    if (first_ack.load() == 0) return std::nullopt;
    return first_ack.load() - kill_ms;
  }

  std::vector<int> http_ports_;
  std::vector<std::string> raft_addrs_;
  std::vector<std::unique_ptr<ServerProcess>> nodes_;
};

TEST_F(ClusterFailoverTest, WritesResumeSoonAfterLeaderKill) {
  std::vector<int> all = {0, 1, 2};
  std::vector<int64_t> figures;
  for (int round = 0; round < kKills && !HasFailure(); ++round) {
    std::optional<int> leader = WaitAgreedLeader(all);
    ASSERT_TRUE(leader.has_value()) << "no agreed leader before kill " << round + 1;
    std::vector<int> survivors;
    for (int i : all) {
      if (i != *leader) survivors.push_back(i);
    }
    std::optional<int64_t> ms;
    {
      Writers load(Urls(all), kWritersPerNode, "load" + std::to_string(round));
      ASSERT_TRUE(WaitFor([&] { return load.acked() >= 50; }, 10000, 5)) << "no load";
      ms = KillAndTimeFirstWrite(*leader, survivors, round);
      load.Stop();
    }
    ASSERT_TRUE(ms.has_value()) << "no write succeeded within " << kProbeWindowMs
                                << " ms of the kill of n" << *leader + 1;
    std::cout << "[failover] kill " << round + 1 << ": leader n" << *leader + 1
              << " SIGKILLed; first write through a survivor acknowledged after " << *ms << " ms\n";
    EXPECT_LT(*ms, kFailoverBoundMs) << "kill " << round + 1;
    figures.push_back(*ms);
    std::optional<int> next = WaitAgreedLeader(survivors);
    ASSERT_TRUE(next.has_value()) << "survivors do not agree on a leader";
    // Back to three nodes for the next round (same ports, same data dir).
    ASSERT_TRUE(node(*leader).Restart().ok()) << node(*leader).ReadLog();
  }
  std::sort(figures.begin(), figures.end());
  std::cout << "[failover] ms from kill to first write, sorted:";
  for (int64_t f : figures) std::cout << " " << f;
  std::cout << "\n";
}

TEST_F(ClusterFailoverTest, SteadyWriteLoadHoldsOneTerm) {
  std::vector<int> all = {0, 1, 2};
  std::optional<int> leader = WaitAgreedLeader(all);
  ASSERT_TRUE(leader.has_value());
  const uint64_t start_term = Observe(*leader).term;
  ASSERT_GT(start_term, 0u);
  const int64_t run_ms = SteadyMs();
  Writers load(Urls(all), 3, "steady");
  const int64_t start_ms = NowMs();
  uint64_t max_term = start_term;
  int64_t first_change_ms = -1;
  // Sampled on every node until the end: each term change is an election nobody asked for.
  WaitFor(
      [&] {
        for (int i : all) {
          RaftView v = Observe(i);
          if (v.up && v.term > max_term) {
            max_term = v.term;
            if (first_change_ms < 0) first_change_ms = NowMs() - start_ms;
          }
        }
        return NowMs() - start_ms >= run_ms;
      },
      run_ms + 10'000, kSampleEveryMs);
  load.Stop();
  const int64_t elapsed_s = std::max<int64_t>(1, (NowMs() - start_ms) / 1000);
  std::cout << "[failover] steady load for " << elapsed_s << " s: " << load.acked()
            << " writes acknowledged (" << load.acked() / elapsed_s << "/s), " << load.failed()
            << " failed; term changes: " << max_term - start_term;
  if (first_change_ms >= 0) std::cout << " (first after " << first_change_ms << " ms)";
  std::cout << "\n";
  EXPECT_EQ(max_term, start_term) << "elections without a fault";
  EXPECT_EQ(AgreedLeader(all), leader) << "the leader changed";
  EXPECT_GT(load.acked(), 100) << "the load did not run";
}

// TTL checks across a leader kill: the new leader gives every TTL a full period of grace from its
// election (an instance heartbeating through a node that keeps working stays passing) and still
// expires a check whose heartbeats stopped. Both checks are registered through a follower and
// heartbeated for longer than their TTL first, so the followers' own TTL timers have fired: a new
// leader that kept those follower-side deadlines never expired the silent check (issue 6).
TEST_F(ClusterFailoverTest, TtlChecksGetGraceAndStillExpireAfterLeaderKill) {
  constexpr int64_t kTtlMs = 2000;
  std::vector<int> all = {0, 1, 2};
  auto leader = WaitAgreedLeader(all);
  ASSERT_TRUE(leader.has_value()) << "no leader";
  const int agent = (*leader + 1) % kNodes;
  Api api(Url(agent), kWriteTimeoutMs);
  for (const std::string id : {"beating", "silent"}) {
    Reply reg =
        api.Put("/v1/agent/service/register", R"({"ID":")" + id + R"(","Name":")" + id +
                                                  R"(","Port":8080,)" + R"("Check":{"TTL":"2s"}})");
    ASSERT_EQ(reg.status, 200) << reg.body;
  }
  auto beat = [&](const std::string& id) {
    return api.Put("/v1/agent/check/pass/service:" + id).status == 200;
  };
  const int64_t registered_at = NowMs();
  while (NowMs() - registered_at < kTtlMs + 1000) {
    ASSERT_TRUE(beat("beating") && beat("silent"));
    WaitFor([] { return false; }, 250);
  }
  ASSERT_EQ(CheckStatus(api, "silent", "service:silent"), "passing");

  const int64_t kill_at = NowMs();
  ASSERT_TRUE(node(*leader).Kill().ok());
  std::vector<int> survivors;
  for (int i : all) {
    if (i != *leader) survivors.push_back(i);
  }
  // "beating" keeps heartbeating through its agent (failures while there is no leader are fine);
  // it must never be seen critical. "silent" must go critical, not before its TTL.
  std::string beating_status, silent_status;
  const bool expired = WaitFor(
      [&] {
        (void)beat("beating");
        beating_status = CheckStatus(api, "beating", "service:beating");
        EXPECT_NE(beating_status, "critical") << (NowMs() - kill_at) << " ms after the kill";
        silent_status = CheckStatus(api, "silent", "service:silent");
        return silent_status == "critical";
      },
      kLeaderDeadlineMs + 4 * kTtlMs, 200);
  const int64_t critical_after = NowMs() - kill_at;
  std::cout << "ttl across a leader kill: silent check critical " << critical_after
            << " ms after the kill (TTL " << kTtlMs << " ms)\n";
  EXPECT_TRUE(expired) << "the silent check never expired under the new leader (status "
                       << silent_status << ")";
  EXPECT_GE(critical_after, kTtlMs) << "expired before a full TTL of grace";
  auto new_leader = WaitAgreedLeader(survivors);
  EXPECT_TRUE(new_leader.has_value());
}

TEST(FailoverFlags, BadTimingIsRefusedWithExitCode2) {
  TempDir dir;
  struct Case {
    std::vector<std::string> flags;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--raft-tick", "5ms"}, "--raft-tick must be from 10ms to 1s"},
      {{"--raft-tick", "2s"}, "--raft-tick must be from 10ms to 1s"},
      {{"--election-timeout", "100ms"}, "5 to 10000 times --raft-tick"},
      {{"--election-timeout", "2m"}, "at most 60s"},
      {{"--raft-tick", "fast"}, "take durations"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"server",      "--data-dir", dir.path() + "/d", "--http",
                                     "127.0.0.1:0", "--amqp",     "127.0.0.1:0"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    CliResult r = RunCli(args, 20);
    EXPECT_EQ(r.code, 2) << c.flags[0] << " " << c.flags[1] << ": " << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace haven::itest
