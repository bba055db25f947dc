// HTTP and TCP checks run by the server against real sockets: status follows what the probe sees.
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

class HealthProbeTest : public ServerTest {};

// Several intervals (200 ms) of slack, for two busy cores.
constexpr int64_t kFlipDeadlineMs = 3000;

TEST_F(HealthProbeTest, HttpCheckFollowsBackendStatus) {
  Backend backend;
  ASSERT_TRUE(backend.start_status().ok()) << backend.start_status().ToString();
  const std::string port = std::to_string(backend.port());
  const std::string body = R"({"ID":"h1","Name":"httpsvc","Port":)" + port +
                           R"(,"Check":{"CheckID":"h1-http","HTTP":"http://127.0.0.1:)" + port +
                           R"(/health","Interval":"200ms","Timeout":"1s"}})";
  Reply reg = api_->Put("/v1/agent/service/register", body);
  ASSERT_EQ(reg.status, 200) << reg.body;

  auto status_is = [&](const char* want) {
    return WaitFor([&] { return CheckStatus(*api_, "httpsvc", "h1-http") == want; },
                   kFlipDeadlineMs, 20);
  };
  EXPECT_TRUE(status_is("passing"));
  EXPECT_GT(backend.hits(), 0);

  backend.set_status(500);
  EXPECT_TRUE(status_is("critical"));
  Reply checks = api_->Get("/v1/health/checks/httpsvc");
  EXPECT_NE(checks.body.find("500"), std::string::npos) << "output should name the status code";

  backend.set_status(429);
  EXPECT_TRUE(status_is("warning"));

  backend.set_status(200);
  EXPECT_TRUE(status_is("passing"));
}

TEST_F(HealthProbeTest, HttpCheckAgainstClosedPortIsCritical) {
  int dead_port = 0;
  {
    ListeningSocket probe_port;  // reserve then release a port nobody listens on
    ASSERT_TRUE(probe_port.ok());
    dead_port = probe_port.port();
  }
  const std::string body = R"({"ID":"h2","Name":"deadsvc","Port":1,"Check":{"CheckID":"h2-http",)"
                           R"("HTTP":"http://127.0.0.1:)" +
                           std::to_string(dead_port) +
                           R"(/","Interval":"200ms","Timeout":"500ms"}})";
  ASSERT_EQ(api_->Put("/v1/agent/service/register", body).status, 200);
  // Critical from the start and still critical after several probes have run.
  EXPECT_EQ(CheckStatus(*api_, "deadsvc", "h2-http"), "critical");
  EXPECT_FALSE(
      WaitFor([&] { return CheckStatus(*api_, "deadsvc", "h2-http") != "critical"; }, 800, 50));
}

TEST_F(HealthProbeTest, TcpCheckFollowsListener) {
  ListeningSocket listener;
  ASSERT_TRUE(listener.ok());
  const std::string port = std::to_string(listener.port());
  const std::string body = R"({"ID":"t1","Name":"tcpsvc","Port":)" + port +
                           R"(,"Check":{"CheckID":"t1-tcp","TCP":"127.0.0.1:)" + port +
                           R"(","Interval":"200ms","Timeout":"500ms"}})";
  Reply reg = api_->Put("/v1/agent/service/register", body);
  ASSERT_EQ(reg.status, 200) << reg.body;

  EXPECT_TRUE(WaitFor([&] { return CheckStatus(*api_, "tcpsvc", "t1-tcp") == "passing"; },
                      kFlipDeadlineMs, 20));
  listener.Close();
  EXPECT_TRUE(WaitFor([&] { return CheckStatus(*api_, "tcpsvc", "t1-tcp") == "critical"; },
                      kFlipDeadlineMs, 20));
}

}  // namespace
}  // namespace haven::itest
