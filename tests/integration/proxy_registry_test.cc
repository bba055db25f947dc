// haven proxy in registry mode: it follows a service's passing instances with blocking queries, so
// a newly registered instance gets traffic at once and a deregistered one stops getting it.
#include <string>

#include <gtest/gtest.h>

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

TEST_F(ProxyRegistryTest, UnknownServiceAnswers503NamingIt) {
  proxy_ = StartProxy({"--service", "nosuch", "--registry", server_->base_url(), "--threads", "1"});
  Api api(Url(proxy_->Port("proxy")), 5000);
  Reply r = api.Get("/");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "no healthy instance for service nosuch\n");
}

}  // namespace
}  // namespace haven::itest
