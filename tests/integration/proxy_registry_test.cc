// haven proxy in registry mode: it follows a service's passing instances with blocking queries, so
// a newly registered instance gets traffic at once and a deregistered one stops getting it.
#include <signal.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "client/service_client.h"
#include "harness.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

class ProxyRegistryTest : public ServerTest {
 protected:
  // Registers backend `b` as an instance of "web" with a TTL check, and passes the check.
  void RegisterPassing(const std::string& id, const ChildProcess& b) {
    std::string body = R"({"ID":")" + id + R"(","Name":"web","Address":"127.0.0.1","Port":)" +
                       std::to_string(b.Port("backend")) + R"(,"Check":{"TTL":"60s"}})";
    ASSERT_EQ(api_->Put("/v1/agent/service/register", body).status, 200);
    ASSERT_EQ(api_->Put("/v1/agent/check/pass/service:" + id).status, 200);
  }
  void TearDown() override {
    if (HasFailure() && proxy_) std::cerr << "proxy log:\n" << proxy_->ReadLog() << "\n";
    ServerTest::TearDown();
  }
  std::unique_ptr<ChildProcess> proxy_;
};

TEST_F(ProxyRegistryTest, FollowsPassingInstances) {
  auto b0 = StartBackend("b0");
  auto b1 = StartBackend("b1");
  auto b2 = StartBackend("b2");
  RegisterPassing("web0", *b0);
  RegisterPassing("web1", *b1);
  proxy_ = StartProxy({"--service", "web", "--registry", server_->base_url(), "--threads", "2",
                       "--lb", "round_robin"});
  const int port = proxy_->Port("proxy");
  ASSERT_GT(port, 0);

  Load load(port, 4);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto by = load.by_backend();
        return by["b0"] > 0 && by["b1"] > 0;
      },
      10000))
      << "both registered instances should get traffic";

  const int64_t registered_at = NowMs();
  RegisterPassing("web2", *b2);
  ASSERT_TRUE(WaitFor([&] { return load.by_backend()["b2"] > 0; }, 5000, 1))
      << "a new instance should get traffic";
  const int64_t took = NowMs() - registered_at;
  std::cout << "new instance got traffic " << took << " ms after its check passed\n";
  RecordProperty("new_instance_traffic_ms", std::to_string(took));
  EXPECT_LE(took, 500);

  // Deregistered: it stops getting new requests, and no client request fails.
  ASSERT_EQ(api_->Put("/v1/agent/service/deregister/web0").status, 200);
  Api admin(Url(proxy_->Port("admin")), 5000);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string status = admin.Get("/status").body;
        return !status.empty() && status.find("\"id\":\"web0\"") == std::string::npos &&
               status.find("\"id\":\"web1\"") != std::string::npos;
      },
      5000))
      << "every worker should drop web0";
  // Requests already in flight to web0 finish there (draining): let every load thread complete
  // two more before counting.
  const int64_t ok_dropped = load.ok();
  ASSERT_TRUE(WaitFor([&] { return load.ok() >= ok_dropped + 8; }, 5000));
  const int64_t b0_after = load.by_backend()["b0"];
  const int64_t ok_now = load.ok();
  ASSERT_TRUE(WaitFor([&] { return load.ok() > ok_now + 500; }, 10000));
  load.Stop();
  EXPECT_EQ(load.by_backend()["b0"], b0_after) << "a deregistered instance still got requests";
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
}

// The registry stops listing the only instance as passing (its check failed; in the demo, an HTTP
// check that timed out under load) while it still runs: the proxy keeps it for panic picks, so
// requests still get answers instead of "no healthy instance" (issue 6).
TEST_F(ProxyRegistryTest, LastInstanceFailingItsCheckStillGetsFirstTries) {
  auto b0 = StartBackend("b0");
  RegisterPassing("web0", *b0);
  proxy_ = StartProxy({"--service", "web", "--registry", server_->base_url(), "--threads", "2",
                       "--log-level", "info"});
  Api api(Url(proxy_->Port("proxy")), 5000);
  ASSERT_TRUE(WaitFor([&] { return api.Get("/").status == 200; }, 10000));
  ASSERT_EQ(api_->Put("/v1/agent/check/fail/service:web0").status, 200);
  // Both workers got the empty list.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string log = proxy_->ReadLog();
        size_t first = log.find("event=proxy_last_resort");
        return first != std::string::npos &&
               log.find("event=proxy_last_resort", first + 1) != std::string::npos;
      },
      5000))
      << "the proxy never saw the empty passing list";
  for (int i = 0; i < 20; ++i) {
    Reply r = api.Get("/");
    EXPECT_EQ(r.status, 200) << r.body;
  }
  Reply m = Api(Url(proxy_->Port("admin")), 5000).Get("/metrics");
  EXPECT_GE(MetricValue(m.body, "haven_proxy_panic_picks_total{service=\"web\"}").value_or(0), 20)
      << m.body;

  // Gone for good: a fast 503, not a hang.
  b0->Kill();
  const int64_t t0 = NowMs();
  Reply gone = api.Get("/");
  EXPECT_EQ(gone.status, 503);
  EXPECT_LT(NowMs() - t0, 1000);
}

TEST_F(ProxyRegistryTest, UnknownServiceAnswers503NamingIt) {
  proxy_ = StartProxy({"--service", "nosuch", "--registry", server_->base_url(), "--threads", "1"});
  Api api(Url(proxy_->Port("proxy")), 5000);
  Reply r = api.Get("/");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "no healthy instance for service nosuch\n");
}

// A 3-node registry cluster behind one proxy and one ServiceClient, both given every node's URL:
// killing the node they watch through (the leader, so that the others answer "not leader" for a
// while too) costs no request, and what is registered afterwards still reaches them.
class ProxyRegistryClusterTest : public ::testing::Test {
 protected:
  static constexpr int kNodes = 3;

  void SetUp() override {
    auto ports = PickFreePorts(2 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      peers += (i ? "," : "") + std::to_string(i + 1) +
               "=127.0.0.1:" + std::to_string((*ports)[static_cast<size_t>(kNodes + i)]);
    }
    for (int i = 0; i < kNodes; ++i) {
      ServerSpec spec;
      spec.http = "127.0.0.1:" + std::to_string((*ports)[static_cast<size_t>(i)]);
      spec.node_name = "n" + std::to_string(i + 1);
      spec.extra_args = {
          "--node-id", std::to_string(i + 1),
          "--raft",    "127.0.0.1:" + std::to_string((*ports)[static_cast<size_t>(kNodes + i)]),
          "--peers",   peers};
      urls_.push_back("http://" + spec.http);
      nodes_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (auto& n : nodes_) {
      Status s = n->Start();
      ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << n->ReadLog();
    }
  }

  void TearDown() override {
    if (HasFailure() && proxy_) std::cerr << "proxy log:\n" << proxy_->ReadLog() << "\n";
    proxy_.reset();
    for (auto& n : nodes_) n->Signal(SIGCONT);  // a paused node must not outlive the test
    for (auto& n : nodes_) (void)n->Kill();
  }

  // The node every live node agrees leads (-1 while there is none).
  int AgreedLeader() {
    int leader = -1;
    std::vector<uint64_t> ids;
    for (int i = 0; i < kNodes; ++i) {
      if (!nodes_[static_cast<size_t>(i)]->running()) continue;
      RaftView v = ReadRaftView(urls_[static_cast<size_t>(i)], 1000);
      if (!v.up) return -1;
      if (v.leader) leader = i;
      ids.push_back(v.leader_id);
    }
    for (uint64_t id : ids) {
      if (leader < 0 || id != static_cast<uint64_t>(leader) + 1) return -1;
    }
    return leader;
  }

  // Registers backend `b` as instance `id` of "web" through `url` with a passing TTL check;
  // retried until `deadline_ms` (an election may be under way).
  bool RegisterPassing(const std::string& url, const std::string& id, const ChildProcess& b,
                       int64_t deadline_ms) {
    Api api(url, 2000);
    std::string body = R"({"ID":")" + id + R"(","Name":"web","Address":"127.0.0.1","Port":)" +
                       std::to_string(b.Port("backend")) + R"(,"Check":{"TTL":"60s"}})";
    return WaitFor(
        [&] {
          return api.Put("/v1/agent/service/register", body).status == 200 &&
                 api.Put("/v1/agent/check/pass/service:" + id).status == 200;
        },
        deadline_ms, 50);
  }

  std::string AllUrls() const {
    std::string all;
    for (const auto& u : urls_) all += (all.empty() ? "" : ",") + u;
    return all;
  }

  std::vector<std::string> urls_;
  std::vector<std::unique_ptr<ServerProcess>> nodes_;
  std::unique_ptr<ChildProcess> proxy_;
};

TEST_F(ProxyRegistryClusterTest, KillingTheWatchedNodeLosesNoRequest) {
  int leader = -1;
  ASSERT_TRUE(WaitFor([&] { return (leader = AgreedLeader()) >= 0; }, 15000, 20));
  const int survivor = (leader + 1) % kNodes;
  auto b0 = StartBackend("b0");
  auto b1 = StartBackend("b1");
  auto b2 = StartBackend("b2");
  ASSERT_TRUE(RegisterPassing(urls_[static_cast<size_t>(survivor)], "web0", *b0, 10000));
  ASSERT_TRUE(RegisterPassing(urls_[static_cast<size_t>(survivor)], "web1", *b1, 10000));

  // The leader's URL first: both watch through the node about to be killed.
  std::string urls = urls_[static_cast<size_t>(leader)];
  for (int i = 0; i < kNodes; ++i) {
    if (i != leader) urls += "," + urls_[static_cast<size_t>(i)];
  }
  proxy_ = StartProxy({"--service", "web", "--registry", urls, "--threads", "2", "--lb",
                       "round_robin", "--watch-wait", "30s"});
  const int port = proxy_->Port("proxy");
  ASSERT_GT(port, 0);
  client::ClientOptions co;
  co.registry = urls;
  co.policy = lb::Policy::kRoundRobin;
  client::ServiceClient sdk(co);

  Load load(port, 4);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> sdk_ok{0}, sdk_failed{0};
  std::atomic<int64_t> sdk_b2{0};
  std::string sdk_first_failure;
  std::thread sdk_thread([&] {
    while (!stop) {
      client::Request req;
      req.target = "/id";
      auto r = sdk.Call("web", req);
      if (r.ok() && r->status == 200) {
        ++sdk_ok;
        if (r->body == "b2") ++sdk_b2;
      } else if (sdk_failed++ == 0) {
        sdk_first_failure = r.ok() ? std::to_string(r->status) : r.status().ToString();
      }
    }
  });
  ASSERT_TRUE(WaitFor(
      [&] {
        auto by = load.by_backend();
        return by["b0"] > 0 && by["b1"] > 0 && sdk_ok > 0;
      },
      10000));

  const int64_t killed_at = NowMs();
  ASSERT_TRUE(nodes_[static_cast<size_t>(leader)]->Kill().ok());
  // The registration goes to a survivor as soon as a new leader takes it.
  ASSERT_TRUE(RegisterPassing(urls_[static_cast<size_t>(survivor)], "web2", *b2, 20000))
      << "no new leader took the registration";
  const int64_t registered_at = NowMs();
  const bool proxy_saw = WaitFor([&] { return load.by_backend()["b2"] > 0; }, 15000, 5);
  const int64_t proxy_ms = NowMs() - registered_at;
  const bool sdk_saw = WaitFor([&] { return sdk_b2 > 0; }, 15000, 5);
  const int64_t sdk_ms = NowMs() - registered_at;
  // A while longer on the survivors: nothing fails after the switch either.
  const int64_t ok_now = load.ok();
  EXPECT_TRUE(WaitFor([&] { return load.ok() > ok_now + 500; }, 10000));
  stop = true;
  sdk_thread.join();
  load.Stop();

  std::cout << "new leader took the registration " << registered_at - killed_at
            << " ms after the kill; the proxy sent it traffic " << proxy_ms
            << " ms after, the client " << sdk_ms << " ms after; requests: proxy " << load.ok()
            << " ok, client " << sdk_ok << " ok\n";
  EXPECT_TRUE(proxy_saw) << "the proxy did not pick up an instance registered after the kill";
  EXPECT_TRUE(sdk_saw) << "the client did not pick up an instance registered after the kill";
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  EXPECT_EQ(sdk_failed, 0) << sdk_first_failure;

  Reply m = Api(Url(proxy_->Port("admin")), 5000).Get("/metrics");
  EXPECT_GE(MetricValue(m.body, "haven_proxy_registry_switches_total").value_or(0), 1)
      << "the proxy should count its switch to another node";
  EXPECT_GE(MetricValue(m.body, "haven_proxy_discovery_errors_total").value_or(0), 1);
  EXPECT_NE(proxy_->ReadLog().find("registry_switch"), std::string::npos);
}

// A node that stops answering (SIGSTOP: its sockets stay open, so nothing is refused or reset) is
// left once the watch passes its bound, watch-wait + wait/16 + 5 s.
TEST_F(ProxyRegistryClusterTest, StalledNodeIsLeftAfterTheWatchBound) {
  int leader = -1;
  ASSERT_TRUE(WaitFor([&] { return (leader = AgreedLeader()) >= 0; }, 15000, 20));
  const int stalled = (leader + 1) % kNodes;  // a follower: the cluster keeps its leader
  auto b0 = StartBackend("b0");
  auto b1 = StartBackend("b1");
  ASSERT_TRUE(RegisterPassing(urls_[static_cast<size_t>(leader)], "web0", *b0, 10000));
  std::string urls = urls_[static_cast<size_t>(stalled)];
  for (int i = 0; i < kNodes; ++i) {
    if (i != stalled) urls += "," + urls_[static_cast<size_t>(i)];
  }
  proxy_ =
      StartProxy({"--service", "web", "--registry", urls, "--threads", "1", "--watch-wait", "2s"});
  const int port = proxy_->Port("proxy");
  ASSERT_GT(port, 0);
  Load load(port, 2);
  ASSERT_TRUE(WaitFor([&] { return load.by_backend()["b0"] > 0; }, 10000));

  nodes_[static_cast<size_t>(stalled)]->Signal(SIGSTOP);
  const int64_t stopped_at = NowMs();
  ASSERT_TRUE(RegisterPassing(urls_[static_cast<size_t>(leader)], "web1", *b1, 10000));
  // Bound: 2 s wait + 1/16 + 5 s slack for the query in flight, then the next node at once.
  const bool saw = WaitFor([&] { return load.by_backend()["b1"] > 0; }, 15000, 5);
  const int64_t took = NowMs() - stopped_at;
  load.Stop();
  std::cout << "stalled registry node left; new instance got traffic " << took
            << " ms after the SIGSTOP\n";
  EXPECT_TRUE(saw) << "the proxy stayed on the stalled node";
  EXPECT_LE(took, 2000 + 125 + 5000 + 3000);
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  EXPECT_NE(proxy_->ReadLog().find("timed out"), std::string::npos)
      << "the switch should come from the watch's timeout";
}

}  // namespace
}  // namespace haven::itest
