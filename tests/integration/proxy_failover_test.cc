// haven proxy with static upstreams: failover under load when a backend is SIGKILLed, 503 when all
// are down, traffic spread over all backends, bad client input, SIGTERM drain.
#include <signal.h>

#include <map>
#include <set>

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"
#include "net/http_client.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

class ProxyFailoverTest : public ::testing::Test {
 protected:
  void StartBackends(int n) {
    for (int i = 0; i < n; ++i) {
      backends_.push_back(StartBackend("b" + std::to_string(i)));
      ASSERT_GT(backends_.back()->Port("backend"), 0);
    }
  }
  std::vector<std::string> UpstreamArgs() {
    std::vector<std::string> args;
    for (auto& b : backends_) {
      args.push_back("--upstream");
      args.push_back("127.0.0.1:" + std::to_string(b->Port("backend")));
    }
    return args;
  }
  void StartProxyWith(std::vector<std::string> extra) {
    std::vector<std::string> args = UpstreamArgs();
    args.insert(args.end(), extra.begin(), extra.end());
    proxy_ = StartProxy(args);
    port_ = proxy_->Port("proxy");
    admin_port_ = proxy_->Port("admin");
    ASSERT_GT(port_, 0);
    ASSERT_GT(admin_port_, 0);
  }
  double Metric(const std::string& name) {
    Api admin(Url(admin_port_), 5000);
    return MetricValue(admin.Get("/metrics").body, name).value_or(-1);
  }
  void TearDown() override {
    if (HasFailure() && proxy_) std::cerr << "proxy log:\n" << proxy_->ReadLog() << "\n";
  }

  std::vector<std::unique_ptr<ChildProcess>> backends_;
  std::unique_ptr<ChildProcess> proxy_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(ProxyFailoverTest, KillOneBackendUnderLoadLosesNoRequest) {
  StartBackends(3);
  StartProxyWith({"--threads", "4"});
  Load load(port_, 8);
  ASSERT_TRUE(WaitFor([&] { return load.ok() > 300 && load.by_backend().size() == 3; }, 5000))
      << "all 3 backends should get traffic first; ok=" << load.ok();
  backends_[1]->Kill();  // SIGKILL: its keep-alive connections die mid-stream
  const int64_t ok_at_kill = load.ok();
  auto b1_at_kill = load.by_backend()["b1"];
  ASSERT_TRUE(WaitFor([&] { return load.ok() > ok_at_kill + 2000; }, 10000));
  const int64_t until = NowMs() + 2000;
  WaitFor([&] { return NowMs() >= until; }, 3000, 50);  // keep the load on the survivors a while
  load.Stop();
  EXPECT_EQ(load.failed(), 0) << "first failure: " << load.first_failure();
  auto by = load.by_backend();
  // Answers already on their way when it died may be counted after the snapshot: one per client.
  EXPECT_LE(by["b1"], b1_at_kill + 8) << "a killed backend kept answering";
  EXPECT_GT(by["b0"], 0);
  EXPECT_GT(by["b2"], 0);
  EXPECT_GE(Metric("haven_proxy_failovers_total") + Metric("haven_proxy_retries_total"), 1);
  std::cout << "requests ok=" << load.ok() << " failovers=" << Metric("haven_proxy_failovers_total")
            << " ejections=" << Metric("haven_proxy_ejections_total") << "\n";
}

// Active health checks: a SIGKILLed backend turns unhealthy in /status; restarted on its port it
// gets traffic again within about two health intervals, and no client request fails meanwhile.
TEST_F(ProxyFailoverTest, KilledBackendThatComesBackGetsTrafficWithinAHealthPeriod) {
  StartBackends(3);
  StartProxyWith({"--threads", "2", "--health-path", "/id", "--health-interval", "200ms",
                  "--health-timeout", "150ms"});
  const int b1_port = backends_[1]->Port("backend");
  Api admin(Url(admin_port_), 5000);
  auto status = [&] { return admin.Get("/status").body; };
  auto count = [](const std::string& body, const std::string& what) {
    size_t n = 0;
    for (size_t at = body.find(what); at != std::string::npos; at = body.find(what, at + 1)) ++n;
    return n;
  };
  Load load(port_, 4);
  ASSERT_TRUE(WaitFor([&] { return load.ok() > 100 && load.by_backend().size() == 3; }, 5000));
  EXPECT_EQ(count(status(), "\"healthy\":false"), 0u) << status();
  backends_[1]->Kill();
  ASSERT_TRUE(WaitFor([&] { return count(status(), "\"healthy\":false") == 2; }, 3000))
      << "b1 should be unhealthy on both workers: " << status();
  EXPECT_NE(status().find("127.0.0.1:" + std::to_string(b1_port)), std::string::npos);
  EXPECT_GE(Metric("haven_proxy_health_checks_total{service=\"static\",result=\"fail\"}"), 2);
  // Long enough for the outlier detector to have ejected it too: health must end that at once.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t b1_before = load.by_backend()["b1"];
  backends_[1] = StartBackend("b1", b1_port);
  ASSERT_EQ(backends_[1]->Port("backend"), b1_port);
  const int64_t back_at = NowMs();
  ASSERT_TRUE(WaitFor([&] { return load.by_backend()["b1"] > b1_before; }, 5000, 5))
      << "the restarted backend never got traffic: " << status();
  const int64_t took = NowMs() - back_at;
  std::cout << "restarted backend got traffic after " << took << " ms\n";
  EXPECT_LE(took, 1000) << "within about two health intervals of 200 ms";
  ASSERT_TRUE(WaitFor([&] { return count(status(), "\"healthy\":false") == 0; }, 2000)) << status();
  load.Stop();
  EXPECT_EQ(load.failed(), 0) << "first failure: " << load.first_failure();
  EXPECT_GE(Metric("haven_proxy_health_checks_total{service=\"static\",result=\"pass\"}"), 3);
}

TEST_F(ProxyFailoverTest, StoppedBackendTimesOutPerTryAndFailsOver) {
  StartBackends(3);
  StartProxyWith({"--threads", "2", "--per-try-timeout", "300ms"});
  Load load(port_, 8);
  ASSERT_TRUE(WaitFor([&] { return load.ok() > 300 && load.by_backend().size() == 3; }, 5000));
  backends_[2]->Signal(SIGSTOP);  // alive but silent: only the per-try timeout notices
  const int64_t ok_at_stop = load.ok();
  const int64_t stopped_at = NowMs();
  ASSERT_TRUE(WaitFor([&] { return load.ok() > ok_at_stop + 3000 && NowMs() - stopped_at >= 1000; },
                      10000));
  load.Stop();
  backends_[2]->Signal(SIGCONT);
  EXPECT_EQ(load.failed(), 0) << "first failure: " << load.first_failure();
  EXPECT_GE(Metric("haven_proxy_retries_total"), 1);
}

TEST_F(ProxyFailoverTest, InstanceAtItsPendingLimitGetsAFast503) {
  StartBackends(1);
  StartProxyWith({"--threads", "1", "--max-pending", "1"});
  std::thread slow_client([&] { Api(Url(port_), 10000).Get("/id?sleep=1000"); });
  Api admin(Url(admin_port_), 5000);
  ASSERT_TRUE(WaitFor(
      [&] { return admin.Get("/status").body.find("\"pending\":1") != std::string::npos; }, 5000));
  Api api(Url(port_), 5000);
  const int64_t start = NowMs();
  Reply r = api.Get("/id");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_LT(NowMs() - start, 500) << "circuit breaking must answer fast";
  slow_client.join();
  EXPECT_EQ(api.Get("/id").status, 200) << "free again once the slow request finished";
}

TEST_F(ProxyFailoverTest, AllBackendsDownAnswers503WithinTheTimeout) {
  StartBackends(3);
  StartProxyWith({"--threads", "2", "--timeout", "3s", "--per-try-timeout", "1s"});
  for (auto& b : backends_) b->Kill();
  Api api(Url(port_), 10000);
  const int64_t start = NowMs();
  Reply r = api.Get("/id");
  const int64_t took = NowMs() - start;
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("no healthy instance for service"), std::string::npos) << r.body;
  EXPECT_LE(took, 3000 + 500) << "must answer within the overall timeout";
  // Again, many times: once instances are ejected it stays a fast, clear 503.
  for (int i = 0; i < 20; ++i) EXPECT_EQ(api.Get("/id").status, 503);
}

TEST_F(ProxyFailoverTest, TrafficReachesEveryBackend) {
  StartBackends(3);
  StartProxyWith({"--threads", "2", "--lb", "round_robin"});
  Api api(Url(port_), 5000);
  std::map<std::string, int> by;
  for (int i = 0; i < 300; ++i) {
    Reply r = api.Get("/id");
    ASSERT_EQ(r.status, 200) << r.body;
    ++by[r.body];
  }
  ASSERT_EQ(by.size(), 3u);
  for (auto& [name, n] : by) EXPECT_GE(n, 50) << name << " got too little of 300 requests";
}

TEST_F(ProxyFailoverTest, PostFailsOverWhenNothingWasSent) {
  StartBackends(2);
  backends_[0]->Kill();  // refused: the request never reached it, so even POST moves on
  StartProxyWith({"--threads", "1"});
  Api api(Url(port_), 5000);
  for (int i = 0; i < 10; ++i) {
    Reply r = api.Do("POST", "/id", "payload");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, "b1");
  }
}

TEST_F(ProxyFailoverTest, BadClientInputGetsAClearErrorAndTheProxyStaysUp) {
  StartBackends(1);
  StartProxyWith({"--threads", "1"});
  std::string garbage = SendRaw(port_, "this is not http\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  std::string big =
      "GET /id HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(80 * 1024, 'a') + "\r\n\r\n";
  std::string too_large = SendRaw(port_, big);
  EXPECT_EQ(too_large.rfind("HTTP/1.1 431", 0), 0u) << too_large.substr(0, 200);
  std::string huge_body = "POST /id HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n";
  std::string body_reply = SendRaw(port_, huge_body);
  EXPECT_EQ(body_reply.rfind("HTTP/1.1 413", 0), 0u) << body_reply.substr(0, 200);
  Api api(Url(port_), 5000);
  EXPECT_EQ(api.Get("/id").body, "b0");
}

TEST_F(ProxyFailoverTest, SlowClientIsCutByTheHeaderTimeout) {
  StartBackends(1);
  StartProxyWith({"--threads", "1", "--header-timeout", "300ms"});
  const int64_t start = NowMs();
  std::string reply = SendRaw(port_, "GET /id HTTP/1.1\r\nHost: x\r\n", 5000);  // never ends
  EXPECT_LT(NowMs() - start, 2500) << "the proxy must close a request that never completes";
  EXPECT_EQ(reply.find("b0"), std::string::npos);
  EXPECT_EQ(Api(Url(port_), 5000).Get("/id").body, "b0");
}

TEST_F(ProxyFailoverTest, HopByHopHeadersAndForwardedFor) {
  StartBackends(1);
  StartProxyWith({"--threads", "1"});
  std::string reply = SendRaw(port_,
                              "GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\n"
                              "X-Secret: 1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Kept: yes\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_NE(reply.find("x-forwarded-for: 10.0.0.1, 127.0.0.1"), std::string::npos) << reply;
  EXPECT_NE(reply.find("x-kept: yes"), std::string::npos) << reply;
  EXPECT_EQ(reply.find("x-secret"), std::string::npos) << "named by Connection: hop-by-hop";
  EXPECT_NE(reply.find("host: x"), std::string::npos) << "Host is kept";
}

TEST_F(ProxyFailoverTest, SigtermFinishesInFlightRequestsAndExitsZero) {
  StartBackends(1);
  StartProxyWith({"--threads", "2"});
  Reply slow;
  std::thread client([&] {
    Api api(Url(port_), 10000);
    slow = api.Get("/id?sleep=700");
  });
  // Wait until the request is in flight at the backend, then ask the proxy to stop.
  Api admin(Url(admin_port_), 5000);
  ASSERT_TRUE(WaitFor(
      [&] { return admin.Get("/status").body.find("\"inflight\":1") != std::string::npos; }, 5000));
  ExitInfo exit = proxy_->Terminate(10000);
  client.join();
  EXPECT_EQ(slow.status, 200) << slow.body;
  EXPECT_TRUE(exit.exited);
  EXPECT_EQ(exit.code, 0);
}

}  // namespace
}  // namespace haven::itest

namespace haven::itest {
namespace {

// ring_hash keeps a key on one instance: the same --hash-header value always lands on the same
// backend, and different values spread over the backends.
TEST_F(ProxyFailoverTest, RingHashKeepsAKeyOnOneBackend) {
  StartBackends(3);
  StartProxyWith({"--threads", "2", "--lb", "ring_hash", "--hash-header", "X-User"});
  net::HttpClient client(Url(port_), 5000);
  std::map<std::string, std::string> home;  // user -> backend
  std::set<std::string> used;
  for (int u = 0; u < 30; ++u) {
    std::string user = "user-" + std::to_string(u);
    for (int i = 0; i < 5; ++i) {
      auto r = client.Request("GET", "/id", {}, {{"X-User", user}});
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ASSERT_EQ(r->status, 200) << r->body;
      auto [it, first] = home.emplace(user, r->body);
      EXPECT_EQ(it->second, r->body) << user << " moved between backends";
      used.insert(r->body);
    }
  }
  EXPECT_EQ(used.size(), 3u) << "30 keys should reach every one of 3 backends";
}

}  // namespace
}  // namespace haven::itest
