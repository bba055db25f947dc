// A 3-node Raft cluster of real `haven server` processes: election, replication from any node, and
// no acknowledged write lost when the leader is SIGKILLed or paused with SIGSTOP under load.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/base64.h"
#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

constexpr int kNodes = 3;
constexpr int64_t kLeaderDeadlineMs = 5000;     // the issue's bound for a first election
constexpr int64_t kFailoverBoundMs = 10000;     // generous: see LeaderKilledUnderLoad...
constexpr int64_t kConvergeDeadlineMs = 10000;  // a replica catching up on acknowledged writes
constexpr int64_t kWriteTimeoutMs = 8000;       // > the server's 5 s "outcome unknown" answer
constexpr int64_t kProbeTimeoutMs = 1000;       // /metrics and reads of one node
constexpr int kMaxWritesPerThread = 20000;      // bounds what one load can produce
constexpr int64_t kBackoffAfterRefusedMs = 20;  // a writer whose node is dead does not spin
constexpr size_t kLogTailLines = 60;

// One write that was answered 200 "true".
struct Ack {
  std::string key;
  std::string value;
  int64_t sent_ms = 0;
  int64_t acked_ms = 0;
};

// Writer threads putting unique KV keys under cl/TAG/ to the nodes at `urls` (thread t to node
// t % urls.size()) until Stop(). Acknowledged writes are kept; failed ones (outcome unknown) are
// counted by kind.
class WriteLoad {
 public:
  WriteLoad(std::vector<std::string> urls, int threads, std::string tag)
      : urls_(std::move(urls)),
        tag_(std::move(tag)),
        acks_(static_cast<size_t>(threads)),
        thread_latest_send_ms_(
            std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(threads))) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this, t] { Run(t); });
  }
  ~WriteLoad() { Stop(); }
  WriteLoad(const WriteLoad&) = delete;
  WriteLoad& operator=(const WriteLoad&) = delete;

  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t acked() const { return acked_.load(); }
  // The latest send time of any acknowledged write (0: none yet).
  int64_t latest_acked_send_ms() const { return latest_acked_send_ms_.load(); }
  // Whether every writer thread in `threads` had a write sent at or after `ms` acknowledged.
  bool AllResumedSince(int64_t ms, const std::vector<int>& threads) const {
    return std::all_of(threads.begin(), threads.end(), [&](int t) {
      return thread_latest_send_ms_[static_cast<size_t>(t)].load() >= ms;
    });
  }
  // After Stop(): every acknowledged write, key -> value.
  std::map<std::string, std::string> AckedKv() const {
    std::map<std::string, std::string> kv;
    for (const auto& per_thread : acks_) {
      for (const auto& a : per_thread) kv[a.key] = a.value;
    }
    return kv;
  }
  // After Stop(): when the first write sent at or after `ms` was acknowledged (nullopt: none).
  std::optional<int64_t> FirstAckOfWriteSentAfter(int64_t ms) const {
    std::optional<int64_t> first;
    for (const auto& per_thread : acks_) {
      for (const auto& a : per_thread) {
        if (a.sent_ms >= ms && (!first || a.acked_ms < *first)) first = a.acked_ms;
      }
    }
    return first;
  }
  // After Stop(): per writer thread, how long after `ms` its first write sent at or after `ms`
  // was acknowledged ("-": none), e.g. "t0=1244 t1=- ...". Shows what each client saw.
  std::string PerThreadResumeAfter(int64_t ms) const {
    std::ostringstream out;
    for (size_t t = 0; t < acks_.size(); ++t) {
      auto it = std::find_if(acks_[t].begin(), acks_[t].end(),
                             [ms](const Ack& a) { return a.sent_ms >= ms; });
      out << (t ? " t" : "t") << t << "=";
      if (it == acks_[t].end()) {
        out << "-";
      } else {
        out << it->acked_ms - ms;
      }
    }
    return out.str();
  }
  std::string Summary() const {
    std::lock_guard lock(mu_);
    std::ostringstream out;
    out << "acked=" << acked_.load() << " failed_503=" << failed_503_.load()
        << " failed_other_status=" << failed_status_.load()
        << " failed_transport=" << failed_transport_.load();
    if (!first_failure_.empty()) out << " first_failure=\"" << first_failure_ << "\"";
    return out.str();
  }

 private:
  void Run(int t) {
    Api api(urls_[static_cast<size_t>(t) % urls_.size()], kWriteTimeoutMs);
    for (int i = 0; i < kMaxWritesPerThread && !stop_.load(); ++i) {
      const std::string key = "cl/" + tag_ + "/t" + std::to_string(t) + "/" + std::to_string(i);
      const std::string value = "v-" + tag_ + "-" + std::to_string(t) + "-" + std::to_string(i);
      const int64_t sent = NowMs();
      Reply r = api.Put("/v1/kv/" + key, value);
      if (r.status == 200 && r.body == "true") {
        RecordAck(t, Ack{key, value, sent, NowMs()});
        continue;
      }
      RecordFailure(r);
      // A refused connection comes back at once; waiting a little keeps a writer whose node is
      // dead from taking the CPU the surviving servers need.
      if (r.status == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(kBackoffAfterRefusedMs));
    }
  }

  void RecordAck(int t, Ack ack) {
    int64_t prev = latest_acked_send_ms_.load();
    while (prev < ack.sent_ms && !latest_acked_send_ms_.compare_exchange_weak(prev, ack.sent_ms)) {
    }
    thread_latest_send_ms_[static_cast<size_t>(t)].store(ack.sent_ms);
    acks_[static_cast<size_t>(t)].push_back(std::move(ack));  // one thread per slot
    acked_.fetch_add(1);
  }

  void RecordFailure(const Reply& r) {
    if (r.status == 503) {
      failed_503_.fetch_add(1);
    } else if (r.status == 0) {
      failed_transport_.fetch_add(1);
    } else {
      failed_status_.fetch_add(1);
    }
    std::lock_guard lock(mu_);
    if (first_failure_.empty()) first_failure_ = std::to_string(r.status) + " " + r.body;
  }

  const std::vector<std::string> urls_;
  const std::string tag_;
  std::vector<std::vector<Ack>> acks_;  // per thread, written only by that thread
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> acked_{0};
  std::atomic<int64_t> latest_acked_send_ms_{0};
  std::unique_ptr<std::atomic<int64_t>[]> thread_latest_send_ms_;  // per thread, like acks_
  std::atomic<int64_t> failed_503_{0}, failed_status_{0}, failed_transport_{0};
  mutable std::mutex mu_;
  std::string first_failure_;
  std::vector<std::thread> threads_;
};

// Acknowledged writes not (yet) on the node with their value; all of them when it did not answer.
std::vector<std::string> MissingOn(const std::string& url, const std::string& prefix,
                                   const std::map<std::string, std::string>& acked) {
  auto found = ReadKvTree(url, prefix);
  std::vector<std::string> missing;
  for (const auto& [key, value] : acked) {
    if (!found) {
      missing.push_back(key);
      continue;
    }
    auto it = found->find(key);
    if (it == found->end() || it->second != value) missing.push_back(key);
  }
  return missing;
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    started_ms_ = NowMs();
    auto ports = PickFreePorts(2 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      http_ports_.push_back((*ports)[static_cast<size_t>(i)]);
      raft_ports_.push_back((*ports)[static_cast<size_t>(kNodes + i)]);
      if (i > 0) peers += ",";
      peers += std::to_string(i + 1) + "=127.0.0.1:" + std::to_string(raft_ports_.back());
    }
    for (int i = 0; i < kNodes; ++i) {
      ServerSpec spec;
      spec.http = "127.0.0.1:" + std::to_string(http_ports_[static_cast<size_t>(i)]);
      spec.node_name = "n" + std::to_string(i + 1);
      spec.extra_args = {
          "--node-id", std::to_string(i + 1),
          "--raft",    "127.0.0.1:" + std::to_string(raft_ports_[static_cast<size_t>(i)]),
          "--peers",   peers};
      nodes_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (int i = 0; i < kNodes; ++i) {
      Status s = nodes_[static_cast<size_t>(i)]->Start();
      ASSERT_TRUE(s.ok()) << "n" << i + 1 << ": " << s.ToString() << "\n"
                          << nodes_[static_cast<size_t>(i)]->ReadLog();
    }
  }

  void TearDown() override {
    for (auto& n : nodes_) n->Signal(SIGCONT);  // a paused node must not outlive a failed test
    if (HasFailure()) {
      for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
        std::cout << "---- n" << i + 1 << " log (last " << kLogTailLines << " lines) ----\n"
                  << LastLines(node(i).ReadLog(), kLogTailLines);
      }
    }
    for (auto& n : nodes_) (void)n->Kill();
    std::cout << "[cluster] " << ::testing::UnitTest::GetInstance()->current_test_info()->name()
              << " took " << NowMs() - started_ms_ << " ms\n";
  }

  ServerProcess& node(int i) { return *nodes_[static_cast<size_t>(i)]; }
  std::string Url(int i) const {
    return "http://127.0.0.1:" + std::to_string(http_ports_[static_cast<size_t>(i)]);
  }
  static uint64_t RaftId(int i) { return static_cast<uint64_t>(i + 1); }

  RaftView Observe(int i) {
    return node(i).running() ? ReadRaftView(Url(i), kProbeTimeoutMs) : RaftView{};
  }

  // The node among `among` that alone says it leads, when all the others there follow it.
  std::optional<int> AgreedLeader(const std::vector<int>& among) {
    std::optional<int> leader;
    std::vector<RaftView> views;
    for (int i : among) {
      views.push_back(Observe(i));
      if (!views.back().up) return std::nullopt;
      if (views.back().leader) {
        if (leader) return std::nullopt;  // two claim it (one of them stale): not settled yet
        leader = i;
      }
    }
    if (!leader) return std::nullopt;
    for (size_t k = 0; k < among.size(); ++k) {
      if (views[k].leader_id != RaftId(*leader)) return std::nullopt;
    }
    return leader;
  }

  std::optional<int> WaitForAgreedLeader(const std::vector<int>& among, int64_t deadline_ms) {
    std::optional<int> leader;
    WaitFor([&] { return (leader = AgreedLeader(among)).has_value(); }, deadline_ms, 20);
    return leader;
  }

  std::string DescribeViews() {
    std::ostringstream out;
    for (int i = 0; i < kNodes; ++i) {
      RaftView v = Observe(i);
      out << " n" << i + 1 << "{up=" << v.up << " leader=" << v.leader
          << " leader_id=" << v.leader_id << " term=" << v.term << " commit=" << v.commit
          << " applied=" << v.applied << "}";
    }
    return out.str();
  }

  // Waits until node i holds every acknowledged write under `prefix`; fails the test with the
  // first few that are missing when it does not within the deadline.
  void ExpectAllAckedOn(int i, const std::string& prefix,
                        const std::map<std::string, std::string>& acked) {
    std::vector<std::string> missing;
    const int64_t start = NowMs();
    WaitFor([&] { return (missing = MissingOn(Url(i), prefix, acked)).empty(); },
            kConvergeDeadlineMs, 50);
    for (size_t k = 0; k < missing.size() && k < 5; ++k) {
      ADD_FAILURE() << "n" << i + 1 << ": acknowledged write missing or wrong: " << missing[k];
    }
    EXPECT_TRUE(missing.empty()) << "n" << i + 1 << ": " << missing.size() << " of " << acked.size()
                                 << " acknowledged writes missing after " << kConvergeDeadlineMs
                                 << " ms;" << DescribeViews();
    if (missing.empty()) {
      std::cout << "[cluster] n" << i + 1 << " holds all " << acked.size()
                << " acknowledged writes (waited " << NowMs() - start << " ms)\n";
    }
  }

  static std::vector<int> AllBut(int excluded) {
    std::vector<int> out;
    for (int i = 0; i < kNodes; ++i) {
      if (i != excluded) out.push_back(i);
    }
    return out;
  }

  std::vector<int> http_ports_;
  std::vector<int> raft_ports_;
  std::vector<std::unique_ptr<ServerProcess>> nodes_;
  int64_t started_ms_ = 0;
};

TEST_F(ClusterTest, ElectsOneLeaderAndReplicatesWritesFromAnyNode) {
  const int64_t start = NowMs();
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << "no single agreed leader within " << kLeaderDeadlineMs
                                  << " ms;" << DescribeViews();
  std::cout << "[cluster] n" << *leader + 1 << " leads after " << NowMs() - start << " ms\n";
  int leaders = 0;
  for (int i = 0; i < kNodes; ++i) leaders += Observe(i).leader ? 1 : 0;
  EXPECT_EQ(leaders, 1) << DescribeViews();

  std::map<std::string, std::string> written;
  for (int i = 0; i < kNodes; ++i) {
    const std::string key = "one/from-n" + std::to_string(i + 1);
    const std::string value = "hello from n" + std::to_string(i + 1);
    Api api(Url(i), kWriteTimeoutMs);
    Reply r = api.Put("/v1/kv/" + key, value);
    EXPECT_EQ(r.status, 200) << "n" << i + 1 << ": " << r.body;
    EXPECT_EQ(r.body, "true") << "n" << i + 1;
    if (r.ok() && r.body == "true") written[key] = value;
  }
  ASSERT_EQ(written.size(), static_cast<size_t>(kNodes));
  for (int i = 0; i < kNodes; ++i) ExpectAllAckedOn(i, "one/", written);
}

// Loses nothing and comes back: the figures are printed and held only to a generous bound
// (kFailoverBoundMs). The 0.5 s target for kill-to-first-write is asserted by
// cluster_failover_test.cc (the dead-leader probe elects in ~0.2-0.3 s); a write forwarded to the
// leader as it died is re-forwarded to the new one, or answered 503 after 700 ms of silence.
TEST_F(ClusterTest, LeaderKilledUnderLoadLosesNoAcknowledgedWrite) {
  constexpr int kKillWriters = 6;  // two per node
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << DescribeViews();
  const int old = *leader;

  const int64_t load_ms = NowMs();
  WriteLoad load({Url(0), Url(1), Url(2)}, kKillWriters, "kill");
  ASSERT_TRUE(WaitFor([&] { return load.acked() >= 200; }, 10000, 5))
      << "no write load before the kill: " << load.Summary();
  const int64_t acked_before = load.acked();
  std::cout << "[cluster] " << acked_before << " writes acknowledged in the first "
            << NowMs() - load_ms << " ms of load\n";

  const int64_t kill_ms = NowMs();
  ASSERT_TRUE(node(old).Kill().ok());
  auto next = WaitForAgreedLeader(AllBut(old), kFailoverBoundMs);
  const int64_t elected_ms = NowMs();
  ASSERT_TRUE(next.has_value()) << "no new leader among the survivors;" << DescribeViews();
  const bool resumed =
      WaitFor([&] { return load.latest_acked_send_ms() >= kill_ms; }, kFailoverBoundMs, 5);
  ASSERT_TRUE(resumed) << "no write sent after the kill succeeded: " << load.Summary();
  // Every writer aimed at a survivor gets through again (one may be stuck on a write it sent
  // before the kill, which then ends as "outcome unknown").
  std::vector<int> survivor_writers;
  for (int t = 0; t < kKillWriters; ++t) {
    if (t % kNodes != old) survivor_writers.push_back(t);
  }
  EXPECT_TRUE(
      WaitFor([&] { return load.AllResumedSince(kill_ms, survivor_writers); }, kFailoverBoundMs, 5))
      << "not every writer to a survivor resumed: " << load.PerThreadResumeAfter(kill_ms);
  const int64_t all_resumed_ms = NowMs();
  // A few hundred more writes after the failover, so that the log keeps growing past it.
  const int64_t acked_at_resume = load.acked();
  EXPECT_TRUE(WaitFor([&] { return load.acked() >= acked_at_resume + 200; }, 10000, 5))
      << load.Summary();
  load.Stop();

  auto first = load.FirstAckOfWriteSentAfter(kill_ms);
  ASSERT_TRUE(first.has_value());
  const int64_t failover_ms = *first - kill_ms;
  std::cout << "[cluster] killed leader n" << old + 1 << " after " << acked_before
            << " acks; new leader n" << *next + 1 << " agreed after " << elected_ms - kill_ms
            << " ms; first successful write sent after the kill acknowledged after " << failover_ms
            << " ms (target 500 ms); every writer to a survivor through again after "
            << all_resumed_ms - kill_ms << " ms\n"
            << "[cluster] per writer, ms from the kill to its first acknowledged write sent after "
               "it: "
            << load.PerThreadResumeAfter(kill_ms) << "\n"
            << "[cluster] load: " << load.Summary() << "\n";
  EXPECT_LE(failover_ms, kFailoverBoundMs);

  const auto acked = load.AckedKv();
  for (int i : AllBut(old)) ExpectAllAckedOn(i, "cl/kill/", acked);

  const int64_t restart_ms = NowMs();
  Status s = node(old).Restart();
  ASSERT_TRUE(s.ok()) << "restart of n" << old + 1 << ": " << s.ToString();
  ExpectAllAckedOn(old, "cl/kill/", acked);
  std::cout << "[cluster] n" << old + 1 << " restarted and caught up in " << NowMs() - restart_ms
            << " ms;" << DescribeViews() << "\n";
}

// SIGTERM on the leader (a planned restart): it hands leadership over (TimeoutNow) before it
// exits, so a new leader is agreed faster than any election timeout (1 s at least) could give one,
// and no acknowledged write is lost.
TEST_F(ClusterTest, StoppedLeaderHandsOverWithoutAnElectionTimeout) {
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << DescribeViews();
  const int old = *leader;
  WriteLoad load({Url(0), Url(1), Url(2)}, 3, "term");
  ASSERT_TRUE(WaitFor([&] { return load.acked() >= 100; }, 10000, 5)) << load.Summary();
  const int64_t term_ms = NowMs();
  auto exit = node(old).Terminate(5000);
  ASSERT_TRUE(exit.ok()) << exit.status().ToString();
  EXPECT_TRUE(exit->exited && exit->code == 0) << "signal=" << exit->signal;
  auto next = WaitForAgreedLeader(AllBut(old), kFailoverBoundMs);
  ASSERT_TRUE(next.has_value()) << DescribeViews();
  const int64_t handed_ms = NowMs() - term_ms;
  std::cout << "[cluster] SIGTERM to leader n" << old + 1 << ": n" << *next + 1
            << " agreed leader after " << handed_ms << " ms (exit included)\n";
  EXPECT_LT(handed_ms, 1000) << "no handoff: the survivors waited for an election timeout";
  const int64_t acked_now = load.acked();
  EXPECT_TRUE(WaitFor([&] { return load.acked() >= acked_now + 100; }, 10000, 5)) << load.Summary();
  load.Stop();
  const auto acked = load.AckedKv();
  for (int i : AllBut(old)) ExpectAllAckedOn(i, "cl/term/", acked);
}

TEST_F(ClusterTest, PausedLeaderStepsDownAndLosesNothing) {
  // A hang refuses no connection, so the others elect only after their election timeout (1.5-3 s
  // randomized); the test waits for that new leader before it resumes the old one.
  constexpr int64_t kPauseMs = 3000;
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << DescribeViews();
  const int old = *leader;
  const std::vector<int> others = AllBut(old);

  constexpr int kPauseWriters = 4;
  WriteLoad load({Url(others[0]), Url(others[1])}, kPauseWriters, "pause");
  ASSERT_TRUE(WaitFor([&] { return load.acked() >= 200; }, 10000, 5))
      << "no write load before the pause: " << load.Summary();

  const int64_t stop_ms = NowMs();
  node(old).Signal(SIGSTOP);
  auto next = WaitForAgreedLeader(others, kFailoverBoundMs);
  const int64_t elected_ms = NowMs();
  ASSERT_TRUE(next.has_value()) << "no new leader among the others during the pause;"
                                << DescribeViews();
  // The pause length is the variable under test, so this one wait is a chosen moment, not a hope.
  std::this_thread::sleep_until(std::chrono::steady_clock::now() +
                                std::chrono::milliseconds(kPauseMs - (NowMs() - stop_ms)));
  node(old).Signal(SIGCONT);
  const int64_t cont_ms = NowMs();

  RaftView view;
  const bool stepped_down = WaitFor(
      [&] {
        view = Observe(old);
        return view.up && !view.leader && view.leader_id == RaftId(*next);
      },
      5000, 20);
  const int64_t step_down_ms = NowMs() - cont_ms;
  EXPECT_TRUE(stepped_down) << "n" << old + 1 << " did not follow n" << *next + 1 << " within 5 s"
                            << " of SIGCONT;" << DescribeViews();
  std::vector<int> writers(kPauseWriters);
  std::iota(writers.begin(), writers.end(), 0);
  EXPECT_TRUE(WaitFor([&] { return load.AllResumedSince(stop_ms, writers); }, kFailoverBoundMs, 5))
      << "not every writer resumed: " << load.PerThreadResumeAfter(stop_ms) << " "
      << load.Summary();
  const int64_t acked_at_resume = load.acked();
  EXPECT_TRUE(WaitFor([&] { return load.acked() >= acked_at_resume + 100; }, 10000, 5))
      << load.Summary();
  load.Stop();
  const int64_t resumed_ms = load.FirstAckOfWriteSentAfter(stop_ms).value_or(stop_ms - 1);
  std::cout << "[cluster] paused leader n" << old + 1 << " for " << cont_ms - stop_ms << " ms; n"
            << *next + 1 << " agreed leader after " << elected_ms - stop_ms
            << " ms; first write sent after SIGSTOP acknowledged after " << resumed_ms - stop_ms
            << " ms; old leader " << (stepped_down ? "followed" : "did NOT follow") << " n"
            << *next + 1 << " " << step_down_ms << " ms after SIGCONT\n"
            << "[cluster] per writer, ms from SIGSTOP to its first acknowledged write sent after "
               "it: "
            << load.PerThreadResumeAfter(stop_ms) << "\n"
            << "[cluster] load: " << load.Summary() << "\n";

  const auto acked = load.AckedKv();
  for (int i = 0; i < kNodes; ++i) ExpectAllAckedOn(i, "cl/pause/", acked);
}

// Default reads on a follower wait for what the leader had committed (ReadIndex), so a write
// acknowledged by one node is read back at once on any other; ?stale answers locally and says how
// fresh it is; ?consistent works everywhere; asking for both is a 400.
TEST_F(ClusterTest, ReadsOnAnyNodeSeeEveryAcknowledgedWrite) {
  constexpr int kRounds = 60;
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << DescribeViews();
  const std::vector<int> followers = AllBut(*leader);
  std::vector<Api> apis;
  for (int i = 0; i < kNodes; ++i) apis.emplace_back(Url(i), kWriteTimeoutMs);
  for (int k = 0; k < kRounds; ++k) {
    const int writer = k % kNodes;
    const int reader = followers[static_cast<size_t>(k) % followers.size()];
    const std::string key = "/v1/kv/ryw/" + std::to_string(k);
    const std::string value = "value-" + std::to_string(k);
    Reply put = apis[static_cast<size_t>(writer)].Put(key, value);
    ASSERT_EQ(put.status, 200) << put.body;
    const bool consistent = k % 2 == 1;
    Reply get =
        apis[static_cast<size_t>(reader)].Get(key + (consistent ? "?raw&consistent" : "?raw"));
    ASSERT_EQ(get.status, 200) << "n" << reader + 1 << " did not see a write n" << writer + 1
                               << " acknowledged: " << get.body;
    EXPECT_EQ(get.body, value) << "n" << reader + 1;
  }
  Reply kv = apis[static_cast<size_t>(followers[0])].Get("/v1/kv/ryw/0");
  ASSERT_EQ(kv.status, 200);
  EXPECT_EQ(kv.Header("x-consul-effective-consistency"), "leader");
  EXPECT_EQ(kv.Header("x-consul-knownleader"), "true");

  Reply stale = apis[static_cast<size_t>(followers[0])].Get("/v1/kv/ryw/0?stale");
  ASSERT_EQ(stale.status, 200) << stale.body;
  EXPECT_EQ(stale.Header("x-consul-effective-consistency"), "stale");
  EXPECT_EQ(stale.Header("x-consul-knownleader"), "true");
  const std::string contact = stale.Header("x-consul-lastcontact");
  ASSERT_FALSE(contact.empty());
  // Heartbeats come every tick (100 ms): a follower heard from the leader very recently.
  EXPECT_LT(std::stoll(contact), 1000) << "last contact " << contact << " ms ago";
  Reply on_leader = apis[static_cast<size_t>(*leader)].Get("/v1/kv/ryw/0?stale");
  EXPECT_EQ(on_leader.Header("x-consul-lastcontact"), "0");

  Reply both = apis[static_cast<size_t>(followers[0])].Get("/v1/kv/ryw/0?stale&consistent");
  EXPECT_EQ(both.status, 400) << both.body;
  EXPECT_NE(both.body.find("conflicting"), std::string::npos) << both.body;
}

// TTL checks are tracked by the leader: heartbeats sent to the follower that registered the check
// must reach it, or the leader lets the TTL expire although the service is alive.
TEST_F(ClusterTest, TtlHeartbeatsSentToAFollowerKeepTheCheckPassing) {
  constexpr int64_t kWatchMs = 4000;  // four TTLs
  constexpr int64_t kBeatEveryMs = 300;
  auto leader = WaitForAgreedLeader({0, 1, 2}, kLeaderDeadlineMs);
  ASSERT_TRUE(leader.has_value()) << DescribeViews();
  const int follower = AllBut(*leader)[0];
  Api on_follower(Url(follower), kWriteTimeoutMs);
  Api on_leader(Url(*leader), kWriteTimeoutMs);
  Reply reg = on_follower.Put("/v1/agent/service/register",
                              R"({"ID":"beat1","Name":"beat","Port":1,"Check":{"TTL":"1s"}})");
  ASSERT_EQ(reg.status, 200) << reg.body;
  Reply pass = on_follower.Put("/v1/agent/check/pass/service:beat1");
  ASSERT_EQ(pass.status, 200) << pass.body;
  ASSERT_TRUE(WaitFor([&] { return CheckStatus(on_leader, "beat", "service:beat1") == "passing"; },
                      5000, 20));
  const int64_t start = NowMs();
  int64_t next_beat = start;
  std::string seen = "passing";
  while (NowMs() - start < kWatchMs && seen == "passing") {
    if (NowMs() >= next_beat) {
      Reply r = on_follower.Put("/v1/agent/check/pass/service:beat1");
      ASSERT_EQ(r.status, 200) << r.body;
      next_beat += kBeatEveryMs;
    }
    seen = CheckStatus(on_leader, "beat", "service:beat1");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a poll interval, not a wait
  }
  EXPECT_EQ(seen, "passing") << "the leader let the TTL expire after " << NowMs() - start
                             << " ms of heartbeats sent to follower n" << follower + 1;
  // And when the heartbeats stop, the leader does expire it.
  EXPECT_TRUE(WaitFor([&] { return CheckStatus(on_leader, "beat", "service:beat1") == "critical"; },
                      5000, 20));
  // An unknown check through a follower gets the leader's 404.
  Reply unknown = on_follower.Put("/v1/agent/check/pass/no-such-check");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
}

}  // namespace
}  // namespace haven::itest
