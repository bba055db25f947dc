// TTL checks end to end: heartbeats, expiry to critical, reaping, warn/fail/update, flap damping.
#include <iostream>
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

class HealthTtlTest : public ServerTest {};

// True when /v1/health/service/NAME?passing lists the instance `id`.
bool PassingListsInstance(Api& api, const std::string& name, const std::string& id) {
  Reply r = api.Get("/v1/health/service/" + name + "?passing");
  json::value v = ParseJson(r.body);
  if (!r.ok() || !v.is_array()) return false;
  for (const auto& e : v.as_array()) {
    const auto* svc = e.is_object() ? e.as_object().if_contains("Service") : nullptr;
    const auto* sid = svc && svc->is_object() ? svc->as_object().if_contains("ID") : nullptr;
    if (sid && sid->is_string() && sid->as_string() == id) return true;
  }
  return false;
}

TEST_F(HealthTtlTest, HeartbeatExpiryAndReap) {
  Reply reg = api_->Put("/v1/agent/service/register",
                        R"({"ID":"web1","Name":"web","Port":8080,
                            "Check":{"TTL":"1s","DeregisterCriticalServiceAfter":"2s"}})");
  ASSERT_EQ(reg.status, 200) << reg.body;
  const std::string check = "service:web1";
  EXPECT_EQ(CheckStatus(*api_, "web", check), "critical");
  EXPECT_FALSE(PassingListsInstance(*api_, "web", "web1"));

  const int64_t beat_sent = NowMs();  // the server's TTL starts no earlier than this
  Reply pass = api_->Put("/v1/agent/check/pass/" + check + "?note=ok");
  ASSERT_EQ(pass.status, 200) << pass.body;
  EXPECT_EQ(CheckStatus(*api_, "web", check), "passing");
  EXPECT_TRUE(PassingListsInstance(*api_, "web", "web1"));

  // The note shows as the check's output, as in Consul.
  Reply checks = api_->Get("/v1/health/checks/web");
  EXPECT_NE(checks.body.find("\"ok\""), std::string::npos) << checks.body;

  // No more heartbeats: critical after about the TTL (1 s), not long before it.
  ASSERT_TRUE(WaitFor([&] { return CheckStatus(*api_, "web", check) == "critical"; }, 2500, 20));
  const int64_t critical_after = NowMs() - beat_sent;
  EXPECT_GE(critical_after, 700) << "went critical before its TTL";
  EXPECT_FALSE(PassingListsInstance(*api_, "web", "web1"));

  // Critical for DeregisterCriticalServiceAfter (2 s): reaped from the catalog. The lower bound
  // counts from the heartbeat, not from when this test saw the check critical: a server stalled
  // for a second (a slow fsync on a busy machine) turns critical on time but is seen late.
  const int64_t critical_at = NowMs();
  ASSERT_TRUE(WaitFor([&] { return CatalogCount(*api_, "web") == 0; }, 2000 + 3000, 50))
      << "still registered " << NowMs() - critical_at << " ms after going critical";
  EXPECT_GE(NowMs() - beat_sent + 200, 1000 + 2000)
      << "reaped before TTL + DeregisterCriticalServiceAfter after the last heartbeat";
  EXPECT_EQ(CheckStatus(*api_, "web", check), "");
}

TEST_F(HealthTtlTest, WarnFailUpdate) {
  Reply reg = api_->Put("/v1/agent/service/register",
                        R"({"ID":"db1","Name":"db","Port":5432,"Check":{"TTL":"30s"}})");
  ASSERT_EQ(reg.status, 200) << reg.body;
  const std::string check = "service:db1";

  ASSERT_EQ(api_->Put("/v1/agent/check/warn/" + check + "?note=slow").status, 200);
  EXPECT_EQ(CheckStatus(*api_, "db", check), "warning");
  ASSERT_EQ(api_->Put("/v1/agent/check/fail/" + check + "?note=down").status, 200);
  EXPECT_EQ(CheckStatus(*api_, "db", check), "critical");
  ASSERT_EQ(api_->Put("/v1/agent/check/pass/" + check).status, 200);
  EXPECT_EQ(CheckStatus(*api_, "db", check), "passing");

  Reply upd = api_->Put("/v1/agent/check/update/" + check,
                        R"({"Status":"warning","Output":"disk 91% full"})");
  ASSERT_EQ(upd.status, 200) << upd.body;
  EXPECT_EQ(CheckStatus(*api_, "db", check), "warning");
  Reply checks = api_->Get("/v1/health/checks/db");
  EXPECT_NE(checks.body.find("disk 91% full"), std::string::npos) << checks.body;

  // A status outside passing|warning|critical is refused and changes nothing.
  Reply bad = api_->Put("/v1/agent/check/update/" + check, R"({"Status":"sleepy"})");
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(CheckStatus(*api_, "db", check), "warning");

  // Unknown check ids are an error, not a silent success.
  Reply unknown = api_->Put("/v1/agent/check/pass/service:nope");
  EXPECT_GE(unknown.status, 400) << unknown.body;
  EXPECT_LT(unknown.status, 500) << unknown.body;
}

// After a crash the status survives, and the restarted leader gives the TTL a full period of grace
// before expiring it, since it cannot know when the last heartbeat arrived.
TEST_F(HealthTtlTest, RestartKeepsStatusAndGivesTtlGrace) {
  ASSERT_EQ(api_->Put("/v1/agent/service/register",
                      R"({"ID":"g1","Name":"grace","Port":1,"Check":{"TTL":"1s"}})")
                .status,
            200);
  ASSERT_EQ(api_->Put("/v1/agent/check/pass/service:g1").status, 200);
  ASSERT_TRUE(server_->Kill().ok());
  ASSERT_TRUE(server_->Start().ok());
  const int64_t restarted_at = NowMs();
  api_ = std::make_unique<Api>(server_->base_url());
  EXPECT_EQ(CheckStatus(*api_, "grace", "service:g1"), "passing") << "status lost in the crash";
  ASSERT_TRUE(
      WaitFor([&] { return CheckStatus(*api_, "grace", "service:g1") == "critical"; }, 3000, 20))
      << "TTL never expired after the restart";
  EXPECT_GE(NowMs() - restarted_at, 800) << "expired without a full TTL of grace";
  // A heartbeat revives it.
  ASSERT_EQ(api_->Put("/v1/agent/check/pass/service:g1").status, 200);
  EXPECT_EQ(CheckStatus(*api_, "grace", "service:g1"), "passing");
}

TEST_F(HealthTtlTest, FailuresBeforeCriticalDampsFlaps) {
  Backend backend;
  ASSERT_TRUE(backend.start_status().ok()) << backend.start_status().ToString();
  const std::string body =
      R"({"ID":"api1","Name":"api","Port":)" + std::to_string(backend.port()) +
      R"(,"Check":{"HTTP":"http://127.0.0.1:)" + std::to_string(backend.port()) +
      R"(/health","Interval":"200ms","Timeout":"1s","FailuresBeforeCritical":3}})";
  ASSERT_EQ(api_->Put("/v1/agent/service/register", body).status, 200);
  const std::string check = "service:api1";
  ASSERT_TRUE(WaitFor([&] { return CheckStatus(*api_, "api", check) == "passing"; }, 3000, 20));

  const int64_t errors_before = backend.errors();
  backend.set_status(500);
  // Poll faster than the interval so a premature flip is seen before the third failure.
  ASSERT_TRUE(WaitFor([&] { return CheckStatus(*api_, "api", check) == "critical"; }, 4000, 10));
  const int64_t failures_seen = backend.errors() - errors_before;
  EXPECT_GE(failures_seen, 3) << "critical after only " << failures_seen << " failed probes";
  std::cout << "critical after " << failures_seen << " failed probes\n";

  // One success brings it back (SuccessBeforePassing defaults to 0).
  backend.set_status(200);
  EXPECT_TRUE(WaitFor([&] { return CheckStatus(*api_, "api", check) == "passing"; }, 3000, 20));
}

}  // namespace
}  // namespace haven::itest
