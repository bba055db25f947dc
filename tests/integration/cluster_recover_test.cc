// `haven cluster recover` against real processes: a 3-node cluster takes 200 acknowledged writes,
// loses 2 nodes for good (SIGKILL), and its stopped survivor is recovered offline into a cluster of
// one that elects itself, lists only itself as peer, serves every acknowledged key and takes new
// writes. Also: a dry run names the last index and writes nothing; bad usage exits 2.
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

constexpr int kNodes = 3;
constexpr int kKeys = 200;
constexpr int64_t kLeaderDeadlineMs = 10'000;
constexpr int64_t kConvergeDeadlineMs = 10'000;
constexpr int64_t kRequestTimeoutMs = 8'000;  // > the server's 5 s "outcome unknown" answer
constexpr size_t kLogTailBytes = 6000;

// The number after "last index " in recover's output (the first one: the store before).
std::optional<uint64_t> LastIndexIn(const std::string& out) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("last index ([0-9]+)"))) return std::nullopt;
  return std::stoull(m[1].str());
}

class ClusterRecoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(2 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    ports_ = *ports;
    std::string peers;
    for (int id = 1; id <= kNodes; ++id) {
      peers += (id > 1 ? "," : "") + std::to_string(id) + "=" + RaftAddress(id);
    }
    for (int id = 1; id <= kNodes; ++id) {
      ServerSpec spec;
      spec.http = HttpAddress(id);
      spec.node_name = "node" + std::to_string(id);
      // A snapshot every 100 entries: the 200 writes leave one, so recover reads the membership
      // from a snapshot and the log after it.
      spec.extra_args = {"--node-id", std::to_string(id), "--raft", RaftAddress(id), "--peers",
                         peers,       "--snapshot-every", "100"};
      servers_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (auto& s : servers_) ASSERT_TRUE(s->Start().ok()) << s->ReadLog();
  }

  void TearDown() override {
    if (HasFailure()) {
      for (auto& s : servers_) {
        std::string log = s->ReadLog();
        if (log.size() > kLogTailBytes) log = log.substr(log.size() - kLogTailBytes);
        std::cerr << "---- " << s->log_path() << "\n" << log << "\n";
      }
    }
    for (auto& s : servers_) (void)s->Kill();
  }

  std::string RaftAddress(int id) const { return "127.0.0.1:" + std::to_string(ports_[id - 1]); }
  std::string HttpAddress(int id) const {
    return "127.0.0.1:" + std::to_string(ports_[kNodes + id - 1]);
  }
  std::string Url(int id) const { return "http://" + HttpAddress(id); }
  ServerProcess& server(int id) { return *servers_[id - 1]; }

  std::optional<double> Metric(int id, const std::string& name) {
    Api api(Url(id), 1000);
    Reply r = api.Get("/metrics");
    if (!r.ok()) return std::nullopt;
    return MetricValue(r.body, name);
  }

  // The id of the node that says it leads, 0 when none does.
  int Leader() {
    for (int id = 1; id <= kNodes; ++id) {
      if (server(id).running() && Metric(id, "haven_raft_is_leader").value_or(0) == 1) return id;
    }
    return 0;
  }

  // Keys of `acked` that node `id` does not hold with their value (all of them when it does not
  // answer). `stale`: from its own replica, without asking the leader.
  std::vector<std::string> Missing(int id, const std::map<std::string, std::string>& acked,
                                   bool stale) {
    Api api(Url(id), kRequestTimeoutMs);
    Reply r = api.Get(std::string("/v1/kv/rc/?recurse") + (stale ? "&stale" : ""));
    json::value v = ParseJson(r.body);
    std::map<std::string, bool> found;
    if (r.ok() && v.is_array()) {
      for (const auto& e : v.as_array()) {
        if (!e.is_object() || !e.as_object().contains("Key")) continue;
        found[std::string(e.at("Key").as_string())] = true;
      }
    }
    std::vector<std::string> missing;
    for (const auto& [key, value] : acked) {
      if (!found.count(key)) {
        missing.push_back(key);
        continue;
      }
      Reply one = api.Get("/v1/kv/" + key + "?raw" + (stale ? "&stale" : ""));
      if (one.body != value) missing.push_back(key);
    }
    return missing;
  }

  std::vector<int> ports_;  // raft of nodes 1..3, then http of nodes 1..3
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

TEST_F(ClusterRecoverTest, SurvivorOfTwoLostNodesBecomesAClusterOfOne) {
  ASSERT_TRUE(WaitFor([&] { return Leader() != 0; }, kLeaderDeadlineMs, 20)) << "no leader";
  const int leader = Leader();
  const int survivor = leader % kNodes + 1;  // a follower: the leader is among the lost

  std::map<std::string, std::string> acked;
  Api writer(Url(leader), kRequestTimeoutMs);
  for (int i = 0; i < kKeys; ++i) {
    std::string key = "rc/k" + std::to_string(i);
    std::string value = "v" + std::to_string(i);
    Reply r = writer.Put("/v1/kv/" + key, value);
    ASSERT_EQ(r.body, "true") << key << ": " << r.status << " " << r.body;
    acked[key] = value;
  }
  // Recovery keeps what the survivor has: wait until it holds every acknowledged write (an entry
  // committed only on the lost nodes is what recovery cannot save).
  std::vector<std::string> missing;
  ASSERT_TRUE(WaitFor([&] { return (missing = Missing(survivor, acked, true)).empty(); },
                      kConvergeDeadlineMs, 50))
      << missing.size() << " writes not on the survivor, e.g. " << missing.front();
  const uint64_t applied =
      static_cast<uint64_t>(Metric(survivor, "haven_raft_applied_index").value_or(0));
  ASSERT_GT(applied, static_cast<uint64_t>(kKeys));

  for (int id = 1; id <= kNodes; ++id) {
    if (id == survivor) continue;
    ASSERT_TRUE(server(id).Kill().ok());
  }
  auto exit = server(survivor).Terminate();
  ASSERT_TRUE(exit.ok()) << exit.status().ToString();
  const std::string dir = server(survivor).data_dir();
  const std::string self = std::to_string(survivor);
  const std::string members = self + "=" + RaftAddress(survivor);

  // Dry run: names the last index, which covers everything the survivor applied.
  CliResult dry = RunCli({"cluster", "recover", "--data-dir", dir, "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.out;
  auto last = LastIndexIn(dry.out);
  ASSERT_TRUE(last.has_value()) << dry.out;
  EXPECT_GE(*last, applied) << dry.out;
  EXPECT_NE(dry.out.find("snapshot:    index"), std::string::npos) << dry.out;
  CliResult again = RunCli({"cluster", "recover", "--data-dir", dir, "--dry-run"});
  EXPECT_EQ(LastIndexIn(again.out), last) << "a dry run wrote something:\n" << again.out;

  // Bad usage: an id the data dir does not belong to; this node not among the members; a member
  // the store does not know.
  const int other = survivor % kNodes + 1;
  CliResult bad = RunCli({"cluster", "recover", "--data-dir", dir, "--node-id",
                          std::to_string(other), "--members", members});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("belongs to raft member " + self), std::string::npos) << bad.out;
  bad = RunCli({"cluster", "recover", "--data-dir", dir, "--members",
                std::to_string(other) + "=" + RaftAddress(other)});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("must include this node's --node-id"), std::string::npos) << bad.out;
  bad = RunCli({"cluster", "recover", "--data-dir", dir, "--node-id", self, "--members",
                members + ",9=127.0.0.1:9"});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("9 is not a member"), std::string::npos) << bad.out;

  // --node-id defaults to the id the data dir records.
  CliResult rec = RunCli({"cluster", "recover", "--data-dir", dir, "--members", members});
  ASSERT_EQ(rec.code, 0) << rec.out;
  // One add (the survivor, with its address) and two removals, after the old last index.
  EXPECT_NE(rec.out.find("last index " + std::to_string(*last + kNodes)), std::string::npos)
      << rec.out;
  EXPECT_NE(rec.out.find("voters:      " + members + "\n"), std::string::npos) << rec.out;

  const int64_t start = NowMs();
  ASSERT_TRUE(server(survivor).Restart().ok()) << server(survivor).ReadLog();
  ASSERT_TRUE(WaitFor([&] { return Leader() == survivor; }, kLeaderDeadlineMs, 20))
      << "the recovered node did not lead within " << kLeaderDeadlineMs << " ms";
  std::cout << "[recover] leader " << NowMs() - start << " ms after the restart began\n";

  Api api(Url(survivor), kRequestTimeoutMs);
  Reply peers = api.Get("/v1/status/peers");
  ASSERT_TRUE(peers.ok()) << peers.body;
  json::value pv = ParseJson(peers.body);
  ASSERT_TRUE(pv.is_array()) << peers.body;
  ASSERT_EQ(pv.as_array().size(), 1u) << peers.body;
  EXPECT_EQ(pv.as_array()[0].as_string(), RaftAddress(survivor)) << peers.body;

  missing = Missing(survivor, acked, false);
  EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged writes lost, e.g. "
                               << missing.front();
  Reply after = api.Put("/v1/kv/rc/after-recovery", "yes");
  EXPECT_EQ(after.body, "true") << after.status << " " << after.body;
  EXPECT_EQ(api.Get("/v1/kv/rc/after-recovery?raw").body, "yes");
}

TEST_F(ClusterRecoverTest, RefusesARunningServerAndAMissingStore) {
  CliResult r = RunCli({"cluster", "recover", "--data-dir", server(1).data_dir(), "--node-id", "1",
                        "--members", "1=" + RaftAddress(1)});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("is the server still running?"), std::string::npos) << r.out;
  r = RunCli({"cluster", "recover", "--data-dir", server(1).data_dir() + "/nowhere", "--dry-run"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("no Raft store"), std::string::npos) << r.out;
  r = RunCli({"cluster", "recover", "--data-dir", server(1).data_dir()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--members ID=HOST:PORT,... is required"), std::string::npos) << r.out;
}

// A data dir is one member's: started again under another --node-id it refuses (exit 2), instead
// of voting twice in a term or forking the log under a new name.
TEST_F(ClusterRecoverTest, ServerRefusesADataDirOfAnotherMember) {
  const std::string dir = server(1).data_dir();
  ASSERT_TRUE(server(1).Terminate(5000).ok());
  CliResult r =
      RunCli({"server", "--data-dir", dir, "--http", "127.0.0.1:0", "--node-id", "2"}, 20);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("belongs to raft member 1"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace haven::itest
