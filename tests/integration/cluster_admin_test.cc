// `haven cluster status|add|remove|transfer-leader` against 3 real `haven server` processes: the
// status table shows the members and one leader; a 4th node started to join (no bootstrap voters)
// is added as a learner, promoted and receives writes, then removed; leadership moves on request.
#include <sys/wait.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

constexpr int64_t kLeaderDeadlineMs = 10'000;
constexpr int64_t kConvergeDeadlineMs = 10'000;

// True when this build's `haven server` has the flag (a joining node needs one that starts it
// with no bootstrap voters).
bool ServerHasFlag(const std::string& flag) {
  return RunCli({"server", "--help"}).out.find(flag) != std::string::npos;
}

struct Member {
  std::string id, address, role;
};

// Parses `haven cluster status`: a header line, then "ID ADDRESS ROLE" per member.
std::vector<Member> ParseStatus(const std::string& out) {
  std::vector<Member> members;
  std::istringstream in(out);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream l(line);
    Member m;
    if (l >> m.id >> m.address >> m.role) members.push_back(m);
  }
  return members;
}

class ClusterAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(8);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    ports_ = *ports;
    std::string peers;
    for (int i = 0; i < 3; ++i) {
      peers += (i ? "," : "") + std::to_string(i + 1) + "=" + RaftAddress(i + 1);
    }
    for (int i = 0; i < 3; ++i) {
      servers_.push_back(std::make_unique<ServerProcess>(Spec(i + 1, {"--peers", peers})));
      ASSERT_TRUE(servers_.back()->Start().ok());
    }
    ASSERT_TRUE(WaitFor([&] { return LeaderId() != 0; }, kLeaderDeadlineMs)) << "no leader";
  }

  void TearDown() override {
    if (HasFailure()) {
      for (auto& s : servers_) {
        if (!s) continue;
        std::string log = s->ReadLog();
        if (log.size() > 6000) log = log.substr(log.size() - 6000);
        std::cerr << "---- " << s->log_path() << "\n" << log << "\n";
      }
    }
  }

  std::string RaftAddress(int id) { return "127.0.0.1:" + std::to_string(ports_[id - 1]); }
  std::string HttpAddress(int id) { return "127.0.0.1:" + std::to_string(ports_[3 + id]); }
  std::string Url(int id) { return "http://" + HttpAddress(id); }

  ServerSpec Spec(int id, std::vector<std::string> extra) {
    ServerSpec spec;
    spec.http = HttpAddress(id);
    spec.node_name = "node" + std::to_string(id);
    spec.extra_args = {"--node-id", std::to_string(id), "--raft", RaftAddress(id)};
    for (auto& e : extra) spec.extra_args.push_back(std::move(e));
    return spec;
  }

  // The leader's id as node 1..3 sees it in the configuration, 0 when none agrees yet.
  int LeaderId() {
    for (int id = 1; id <= static_cast<int>(servers_.size()); ++id) {
      if (!servers_[id - 1] || !servers_[id - 1]->running()) continue;
      Api api(Url(id), 2000);
      Reply r = api.Get("/v1/operator/raft/configuration");
      if (!r.ok()) continue;
      json::value v = ParseJson(r.body);
      if (!v.is_object() || !v.at("Servers").is_array()) continue;
      for (const auto& s : v.at("Servers").as_array()) {
        if (s.at("Leader").as_bool() && s.at("ID").as_string() == std::to_string(id)) return id;
      }
    }
    return 0;
  }

  CliResult Cluster(int via, std::vector<std::string> args) {
    args.insert(args.begin(), "cluster");
    args.push_back("--addr");
    args.push_back(Url(via));
    return RunCli(args);
  }

  std::vector<int> ports_;  // 0..3: raft of nodes 1..4; 4..7: http of nodes 1..4
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

TEST_F(ClusterAdminTest, StatusShowsThreeMembersAndOneLeader) {
  int leader = LeaderId();
  for (int via = 1; via <= 3; ++via) {
    CliResult r = Cluster(via, {"status"});
    ASSERT_EQ(r.code, 0) << r.out;
    auto members = ParseStatus(r.out);
    ASSERT_EQ(members.size(), 3u) << r.out;
    int leaders = 0;
    for (const auto& m : members) {
      EXPECT_EQ(m.address, RaftAddress(std::stoi(m.id))) << r.out;
      leaders += m.role == "leader";
      EXPECT_TRUE(m.role == "leader" || m.role == "follower") << r.out;
      if (m.role == "leader") {
        EXPECT_EQ(m.id, std::to_string(leader)) << r.out;
      }
    }
    EXPECT_EQ(leaders, 1) << r.out;
  }
}

TEST_F(ClusterAdminTest, TransferLeaderMovesLeadershipToTheNamedNode) {
  int leader = LeaderId();
  int target = leader % 3 + 1;
  CliResult r = Cluster(leader, {"transfer-leader", std::to_string(target)});
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_TRUE(WaitFor([&] { return LeaderId() == target; }, kLeaderDeadlineMs))
      << "leader=" << LeaderId();
  // Writes still work, through any node.
  Api api(Url(leader));
  EXPECT_EQ(api.Put("/v1/kv/after-transfer", "v").body, "true");
}

TEST_F(ClusterAdminTest, BadUsageAndFollowersAnswerClearly) {
  int leader = LeaderId();
  int follower = leader % 3 + 1;
  EXPECT_EQ(Cluster(leader, {"remove", "zero"}).code, 2);
  EXPECT_EQ(Cluster(leader, {"add", "5", "no-port"}).code, 2);
  CliResult r = Cluster(follower, {"remove", std::to_string(leader)});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("leader is " + std::to_string(leader)), std::string::npos) << r.out;
  Api api(Url(leader));
  EXPECT_EQ(api.Do("POST", "/v1/operator/raft/peer?id=9").status, 400);
  EXPECT_EQ(api.Do("POST", "/v1/operator/raft/peer?id=9&address=1.2.3.4:99999").status, 400);
  EXPECT_EQ(api.Do("POST", "/v1/operator/raft/peer?id=9&address=127.0.0.1:9&voter=true").status,
            400);  // learner first
  EXPECT_EQ(api.Delete("/v1/operator/raft/peer?id=9").status, 404);
}

TEST_F(ClusterAdminTest, AddAJoiningNodeAsVoterThenRemoveIt) {
  if (!ServerHasFlag("--join")) {
    GTEST_SKIP() << "haven server has no --join flag yet: a joining node cannot start without "
                    "bootstrap voters";
  }
  servers_.push_back(std::make_unique<ServerProcess>(Spec(4, {"--join"})));
  ASSERT_TRUE(servers_.back()->Start().ok());
  int leader = LeaderId();
  ASSERT_EQ(Api(Url(leader)).Put("/v1/kv/before-join", "1").body, "true");

  CliResult r = Cluster(leader, {"add", "4", RaftAddress(4), "--voter", "--timeout", "20s"});
  ASSERT_EQ(r.code, 0) << r.out;
  r = Cluster(leader, {"status"});
  auto members = ParseStatus(r.out);
  ASSERT_EQ(members.size(), 4u) << r.out;
  EXPECT_EQ(members[3].id, "4");
  EXPECT_EQ(members[3].role, "follower") << r.out;

  // Writes reach it (the old one through the catch-up, the new one through replication).
  ASSERT_EQ(Api(Url(leader)).Put("/v1/kv/after-join", "2").body, "true");
  Api four(Url(4));
  EXPECT_TRUE(
      WaitFor([&] { return four.Get("/v1/kv/before-join?stale").ok(); }, kConvergeDeadlineMs));
  EXPECT_TRUE(
      WaitFor([&] { return four.Get("/v1/kv/after-join?stale").ok(); }, kConvergeDeadlineMs));

  r = Cluster(leader, {"remove", "4"});
  ASSERT_EQ(r.code, 0) << r.out;
  r = Cluster(leader, {"status"});
  EXPECT_EQ(ParseStatus(r.out).size(), 3u) << r.out;
  EXPECT_EQ(r.out.find(RaftAddress(4)), std::string::npos) << r.out;
}

TEST_F(ClusterAdminTest, RemoveAVoterLeavesTwoThatStillCommit) {
  int leader = LeaderId();
  int gone = leader % 3 + 1;
  CliResult r = Cluster(leader, {"remove", std::to_string(gone)});
  ASSERT_EQ(r.code, 0) << r.out;
  r = Cluster(leader, {"status"});
  EXPECT_EQ(ParseStatus(r.out).size(), 2u) << r.out;
  servers_[gone - 1]->Kill();
  EXPECT_EQ(Api(Url(leader)).Put("/v1/kv/after-remove", "v").body, "true");
}

}  // namespace
}  // namespace haven::itest
