// haven proxy --mode tcp: connections spliced to instances picked by the balancer; a refused
// connect fails over at once; with every instance down a client connection is closed promptly.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"
#include "net/http_client.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

// One GET /id on a fresh connection through `port`: "STATUS BODY", or "error ..." on failure.
std::string GetOnNewConnection(int port) {
  net::HttpClient client(Url(port), 5000);
  auto r = client.Request("GET", "/id");
  if (!r.ok()) return "error " + r.status().ToString();
  return std::to_string(r->status) + " " + r->body;
}

class ProxyTcpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    b0_ = StartBackend("b0");
    b1_ = StartBackend("b1");
    ASSERT_GT(b0_->Port("backend"), 0);
    ASSERT_GT(b1_->Port("backend"), 0);
    proxy_ = StartProxy({"--mode", "tcp", "--lb", "round_robin", "--threads", "2", "--upstream",
                         "127.0.0.1:" + std::to_string(b0_->Port("backend")), "--upstream",
                         "127.0.0.1:" + std::to_string(b1_->Port("backend"))});
    port_ = proxy_->ListenerPort(0);
    admin_port_ = proxy_->Port("admin");
    ASSERT_GT(port_, 0) << proxy_->ReadLog();
    ASSERT_GT(admin_port_, 0);
  }
  void TearDown() override {
    if (HasFailure() && proxy_) std::cerr << "proxy log:\n" << proxy_->ReadLog() << "\n";
  }
  double Metric(const std::string& name) {
    return MetricValue(Api(Url(admin_port_), 5000).Get("/metrics").body, name).value_or(-1);
  }

  std::unique_ptr<ChildProcess> b0_, b1_, proxy_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(ProxyTcpTest, ConnectionsSpreadFailOverAndCloseWhenAllAreDown) {
  std::map<std::string, int> by;
  for (int i = 0; i < 20; ++i) ++by[GetOnNewConnection(port_)];
  EXPECT_EQ(by.size(), 2u) << "only b0 and b1 should answer: " << by.begin()->first;
  EXPECT_GT(by["200 b0"], 0);
  EXPECT_GT(by["200 b1"], 0);

  // Keep-alive through one spliced connection: every request on it reaches the same backend.
  {
    net::HttpClient client(Url(port_), 5000);
    std::map<std::string, int> one;
    for (int i = 0; i < 10; ++i) {
      auto r = client.Request("GET", "/id");
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ++one[r->body];
    }
    EXPECT_EQ(one.size(), 1u) << "one client connection is one upstream connection";
  }

  b1_->Kill();
  int failed = 0;
  std::string first_failure;
  for (int i = 0; i < 200; ++i) {
    std::string got = GetOnNewConnection(port_);
    if (got != "200 b0") {
      ++failed;
      if (first_failure.empty()) first_failure = got;
    }
  }
  EXPECT_EQ(failed, 0) << "a refused connect must fail over at once; first: " << first_failure;
  EXPECT_GE(Metric("haven_proxy_upstream_connect_errors_total"), 1);

  b0_->Kill();
  const int64_t start = NowMs();
  std::string reply = SendRaw(port_, "GET /id HTTP/1.1\r\nHost: x\r\n\r\n", 3000);
  const int64_t took = NowMs() - start;
  std::cout << "with every instance down the connection closed after " << took << " ms\n";
  EXPECT_EQ(reply, "") << "nothing can answer";
  EXPECT_LT(took, 1000) << "the proxy must close the connection, not hang";
  EXPECT_GE(Metric("haven_proxy_tcp_connections_total"), 20 + 1 + 200 + 1);
  EXPECT_GE(Metric("haven_proxy_tcp_connections_total{service=\"static\"}"), 222);
}

}  // namespace
}  // namespace haven::itest
