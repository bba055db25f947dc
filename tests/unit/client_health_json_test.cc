// Unit tests for the client's discovery JSON mapping and its input checks.
#include <chrono>

#include <gtest/gtest.h>

#include "client/health_json.h"
#include "client/service_client.h"

namespace haven::client {
namespace {

TEST(ClientHealthJson, ServiceAddressWins) {
  auto r = ParseHealthEntries(R"([{"Node":{"Node":"n1","Address":"10.0.0.1"},
    "Service":{"ID":"web-1","Address":"10.0.0.9","Port":8080,"Weights":{"Passing":3,"Warning":1}}}])");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id, "web-1");
  EXPECT_EQ((*r)[0].host, "10.0.0.9");
  EXPECT_EQ((*r)[0].port, 8080);
  EXPECT_EQ((*r)[0].weight, 3);
}

TEST(ClientHealthJson, EmptyServiceAddressFallsBackToNode) {
  auto r = ParseHealthEntries(R"([{"Node":{"Node":"n1","Address":"10.0.0.1"},
    "Service":{"ID":"web-1","Address":"","Port":80}}])");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].host, "10.0.0.1");
  EXPECT_EQ((*r)[0].weight, 1);  // no Weights: default
}

TEST(ClientHealthJson, WeightsAreClamped) {
  auto r = ParseHealthEntries(R"([
    {"Node":{"Address":"h"},"Service":{"ID":"a","Port":1,"Weights":{"Passing":0}}},
    {"Node":{"Address":"h"},"Service":{"ID":"b","Port":2,"Weights":{"Passing":99999999}}},
    {"Node":{"Address":"h"},"Service":{"ID":"c","Port":3,"Weights":{"Passing":"x"}}}])");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].weight, 1);
  EXPECT_EQ((*r)[1].weight, lb::kMaxWeight);
  EXPECT_EQ((*r)[2].weight, 1);
}

TEST(ClientHealthJson, MissingIdUsesHostPort) {
  auto r = ParseHealthEntries(R"([{"Node":{"Address":"1.2.3.4"},"Service":{"Port":99}}])");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id, "1.2.3.4:99");
}

TEST(ClientHealthJson, SkipsUnusableEntries) {
  auto r = ParseHealthEntries(R"([1, "x", {}, {"Service":{"ID":"noaddr","Port":80}},
    {"Node":{"Address":"h"},"Service":{"ID":"badport","Port":70000}},
    {"Node":{"Address":"h"},"Service":{"ID":"zero","Port":0}},
    {"Node":{"Address":"h"},"Service":{"ID":"ok","Port":80}}])");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id, "ok");
}

TEST(ClientHealthJson, SameIdOnTwoNodesStaysDistinct) {
  auto r = ParseHealthEntries(R"([
    {"Node":{"Node":"n1","Address":"a"},"Service":{"ID":"web","Port":80}},
    {"Node":{"Node":"n2","Address":"b"},"Service":{"ID":"web","Port":80}}])");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].id, "web");
  EXPECT_EQ((*r)[1].id, "n2/web");
}

TEST(ClientHealthJson, EmptyArrayIsNoInstances) {
  auto r = ParseHealthEntries("[]");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

TEST(ClientHealthJson, BadBodiesAreErrors) {
  for (const char* body : {"", "{", "{}", "null", "42", "[{\"Service\":"}) {
    auto r = ParseHealthEntries(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << body;
  }
}

TEST(ClientServiceClient, RejectsBadInputWithoutNetwork) {
  ClientOptions opts;
  opts.registry = "http://127.0.0.1:1";
  ServiceClient c(opts);
  EXPECT_EQ(c.Instances("").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(c.Instances("a/b").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(c.Instances(std::string(300, 'a')).status().code(), Code::kInvalidArgument);
  Request bad;
  bad.target = "no-slash";
  EXPECT_EQ(c.Call("web", bad).status().code(), Code::kInvalidArgument);
}

TEST(ClientServiceClient, UnreachableRegistryFailsFast) {
  ClientOptions opts;
  opts.registry = "http://127.0.0.1:1";  // nothing listens on port 1
  opts.retry.per_try_timeout_ms = 2000;
  ServiceClient c(opts);
  auto start = std::chrono::steady_clock::now();
  auto r = c.Call("web", Request{});
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  start)
                .count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_LT(ms, 2500);
}

TEST(HealthJsonTest, BlockingQueryTargetAndIndex) {
  EXPECT_EQ(HealthQueryTarget("web", 0, 60000), "/v1/health/service/web?passing");
  EXPECT_EQ(HealthQueryTarget("web", 42, 500),
            "/v1/health/service/web?passing&index=42&wait=500ms");
  std::string ok = "17", bad = "x";
  EXPECT_EQ(ParseConsulIndex(&ok), 17u);
  EXPECT_EQ(ParseConsulIndex(&bad), 0u);
  EXPECT_EQ(ParseConsulIndex(nullptr), 0u);
}

TEST(HealthJsonTest, SameEndpointsComparesAddressesAndWeights) {
  std::vector<lb::Endpoint> a{{"a", "10.0.0.1", 80, 1}, {"b", "10.0.0.2", 80, 1}};
  auto b = a;
  EXPECT_TRUE(SameEndpoints(a, b));
  b[1].weight = 2;
  EXPECT_FALSE(SameEndpoints(a, b));
  b = a;
  b.pop_back();
  EXPECT_FALSE(SameEndpoints(a, b));
}

}  // namespace
}  // namespace haven::client
