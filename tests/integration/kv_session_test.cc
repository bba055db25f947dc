// KV operations and session locks through the Consul HTTP API.
#include <atomic>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "base/base64.h"
#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

class KvSessionTest : public ServerTest {
 protected:
  // ModifyIndex of `key`, 0 when absent.
  uint64_t ModifyIndex(const std::string& key) {
    json::value v = ParseJson(api_->Get("/v1/kv/" + key).body);
    if (!v.is_array() || v.as_array().empty()) return 0;
    return v.as_array()[0].as_object().at("ModifyIndex").to_number<uint64_t>();
  }
  std::string CreateSession(const std::string& body) {
    Reply r = api_->Put("/v1/session/create", body);
    EXPECT_EQ(r.status, 200) << r.body;
    json::value v = ParseJson(r.body);
    if (!v.is_object() || !v.as_object().contains("ID")) return "";
    return std::string(v.as_object().at("ID").as_string());
  }
};

TEST_F(KvSessionTest, PutGetRawRecurseKeysDelete) {
  ASSERT_EQ(api_->Put("/v1/kv/app/db/host", "10.0.0.1").body, "true");
  ASSERT_EQ(api_->Put("/v1/kv/app/db/port", "5432").body, "true");
  ASSERT_EQ(api_->Put("/v1/kv/app/name?flags=42", "shop").body, "true");
  ASSERT_EQ(api_->Put("/v1/kv/other", "x").body, "true");

  Reply get = api_->Get("/v1/kv/app/name");
  ASSERT_EQ(get.status, 200) << get.body;
  json::value v = ParseJson(get.body);
  ASSERT_TRUE(v.is_array() && v.as_array().size() == 1) << get.body;
  const json::object& e = v.as_array()[0].as_object();
  EXPECT_EQ(e.at("Key").as_string(), "app/name");
  auto value = Base64Decode(std::string(e.at("Value").as_string()));
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, "shop");
  EXPECT_EQ(e.at("Flags").to_number<uint64_t>(), 42u);
  EXPECT_GT(e.at("CreateIndex").to_number<uint64_t>(), 0u);

  Reply raw = api_->Get("/v1/kv/app/db/host?raw");
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.body, "10.0.0.1");

  json::value rec = ParseJson(api_->Get("/v1/kv/app?recurse").body);
  ASSERT_TRUE(rec.is_array());
  EXPECT_EQ(rec.as_array().size(), 3u) << "app/db/host, app/db/port, app/name";

  json::value keys = ParseJson(api_->Get("/v1/kv/app/?keys&separator=/").body);
  EXPECT_EQ(json::serialize(keys), R"(["app/db/","app/name"])");
  json::value all_keys = ParseJson(api_->Get("/v1/kv/?keys").body);
  ASSERT_TRUE(all_keys.is_array());
  EXPECT_EQ(all_keys.as_array().size(), 4u);

  EXPECT_EQ(api_->Delete("/v1/kv/app/db/host").body, "true");
  EXPECT_EQ(api_->Get("/v1/kv/app/db/host").status, 404);
  EXPECT_EQ(api_->Delete("/v1/kv/app?recurse").body, "true");
  EXPECT_EQ(api_->Get("/v1/kv/app?recurse").status, 404);
  EXPECT_EQ(api_->Get("/v1/kv/other?raw").body, "x") << "delete recurse must stay in its prefix";
}

TEST_F(KvSessionTest, CheckAndSet) {
  // cas=0 creates only when absent.
  EXPECT_EQ(api_->Put("/v1/kv/c?cas=0", "one").body, "true");
  EXPECT_EQ(api_->Put("/v1/kv/c?cas=0", "two").body, "false");
  const uint64_t idx = ModifyIndex("c");
  ASSERT_GT(idx, 0u);
  EXPECT_EQ(api_->Put("/v1/kv/c?cas=" + std::to_string(idx), "three").body, "true");
  // The index we used is now stale.
  EXPECT_EQ(api_->Put("/v1/kv/c?cas=" + std::to_string(idx), "four").body, "false");
  EXPECT_EQ(api_->Get("/v1/kv/c?raw").body, "three");
  EXPECT_EQ(api_->Delete("/v1/kv/c?cas=" + std::to_string(idx)).body, "false");
  EXPECT_EQ(api_->Delete("/v1/kv/c?cas=" + std::to_string(ModifyIndex("c"))).body, "true");
  EXPECT_EQ(api_->Get("/v1/kv/c").status, 404);
}

TEST_F(KvSessionTest, TwoSessionsContendForOneLock) {
  const std::string a = CreateSession(R"({"Name":"a","LockDelay":"0s"})");
  const std::string b = CreateSession(R"({"Name":"b","LockDelay":"0s"})");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  ASSERT_NE(a, b);

  // Both race for the key at once; exactly one wins.
  std::string result_a, result_b;
  std::atomic<int> ready{0};
  auto contend = [&](const std::string& session, std::string* out) {
    Api api(server_->base_url());
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    *out = api.Put("/v1/kv/leader?acquire=" + session, session).body;
  };
  std::thread ta(contend, a, &result_a);
  std::thread tb(contend, b, &result_b);
  ta.join();
  tb.join();
  ASSERT_TRUE((result_a == "true") != (result_b == "true")) << result_a << " / " << result_b;
  ASSERT_TRUE(result_a == "false" || result_b == "false") << result_a << " / " << result_b;
  const std::string& winner = result_a == "true" ? a : b;
  const std::string& loser = result_a == "true" ? b : a;

  json::value held = ParseJson(api_->Get("/v1/kv/leader").body);
  ASSERT_TRUE(held.is_array());
  EXPECT_EQ(held.as_array()[0].as_object().at("Session").as_string(), winner);
  EXPECT_EQ(api_->Put("/v1/kv/leader?acquire=" + loser, "again").body, "false");

  ASSERT_EQ(api_->Put("/v1/session/destroy/" + winner).body, "true");
  // Destroying the holder releases the lock (behavior "release"); the key stays.
  EXPECT_EQ(api_->Put("/v1/kv/leader?acquire=" + loser, loser).body, "true");
  EXPECT_EQ(api_->Get("/v1/kv/leader?raw").body, loser);

  // Release by the holder, then anyone may take it.
  EXPECT_EQ(api_->Put("/v1/kv/leader?release=" + loser).body, "true");
  json::value released = ParseJson(api_->Get("/v1/kv/leader").body);
  ASSERT_TRUE(released.is_array());
  EXPECT_FALSE(released.as_array()[0].as_object().contains("Session") &&
               !released.as_array()[0].as_object().at("Session").as_string().empty())
      << json::serialize(released);
}

TEST_F(KvSessionTest, LockDelayHoldsKeyAfterInvalidation) {
  const std::string a = CreateSession(R"({"Name":"a","LockDelay":"1s"})");
  const std::string b = CreateSession(R"({"Name":"b","LockDelay":"0s"})");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  ASSERT_EQ(api_->Put("/v1/kv/ld?acquire=" + a, "a").body, "true");
  ASSERT_EQ(api_->Put("/v1/session/destroy/" + a).body, "true");
  const int64_t destroyed_at = NowMs();
  EXPECT_EQ(api_->Put("/v1/kv/ld?acquire=" + b, "b").body, "false") << "lock delay not honoured";
  ASSERT_TRUE(
      WaitFor([&] { return api_->Put("/v1/kv/ld?acquire=" + b, "b").body == "true"; }, 3000, 50));
  EXPECT_GE(NowMs() - destroyed_at, 800) << "acquired before the 1 s lock delay ended";
}

TEST_F(KvSessionTest, SessionInfoAndDestroyedSessionCannotLock) {
  const std::string s = CreateSession(R"({"Name":"worker","LockDelay":"0s"})");
  ASSERT_FALSE(s.empty());
  json::value info = ParseJson(api_->Get("/v1/session/info/" + s).body);
  ASSERT_TRUE(info.is_array() && info.as_array().size() == 1) << json::serialize(info);
  EXPECT_EQ(info.as_array()[0].as_object().at("Name").as_string(), "worker");
  ASSERT_EQ(api_->Put("/v1/session/destroy/" + s).body, "true");
  json::value gone = ParseJson(api_->Get("/v1/session/info/" + s).body);
  EXPECT_TRUE(gone.is_array() && gone.as_array().empty()) << json::serialize(gone);
  Reply r = api_->Put("/v1/kv/x?acquire=" + s, "v");
  EXPECT_NE(r.body, "true") << "a destroyed session must not acquire";
  EXPECT_NE(r.status, 0) << r.body;
  EXPECT_EQ(api_->Get("/v1/kv/x").status, 404) << "nothing written for a refused acquire";
}

}  // namespace
}  // namespace haven::itest

namespace haven::itest {
namespace {

class TombstoneReapTest : public ServerTest {
 protected:
  std::vector<std::string> ExtraArgs() override { return {"--tombstone-ttl", "200ms"}; }
};

// Deleted keys are remembered for blocking queries, then reaped after 1 to 2 TTLs; the index a
// query sees never goes back.
TEST_F(TombstoneReapTest, TombstonesAreReapedAndIndexesStayMonotonic) {
  for (int i = 0; i < 5; ++i) {
    std::string key = "/v1/kv/gone/" + std::to_string(i);
    ASSERT_EQ(api_->Put(key, "x").body, "true");
    ASSERT_EQ(api_->Delete(key).body, "true");
  }
  uint64_t before = api_->Get("/v1/kv/gone/?recurse").index;
  auto tombstones = [&] {
    return MetricValue(api_->Get("/metrics").body, "haven_kv_tombstones").value_or(-1);
  };
  EXPECT_EQ(tombstones(), 5);
  ASSERT_TRUE(WaitFor([&] { return tombstones() == 0; }, 5000)) << "tombstones not reaped";
  EXPECT_GE(api_->Get("/v1/kv/gone/?recurse").index, before);
}

}  // namespace
}  // namespace haven::itest
