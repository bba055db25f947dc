// Balancer policies: distributions, weights, load- and latency-awareness, endpoints coming and
// going.
#include "lb/balancer.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace haven::lb {
namespace {

std::vector<Endpoint> Eps(std::initializer_list<std::pair<const char*, int>> list) {
  std::vector<Endpoint> out;
  uint16_t port = 8000;
  for (auto [id, w] : list) out.push_back({id, "127.0.0.1", port++, w});
  return out;
}

PickContext At(MonoMs now) {
  PickContext ctx;
  ctx.now = now;
  return ctx;
}

std::map<std::string, int> CountPicks(Balancer& b, int n, const PickContext& ctx = {}) {
  std::map<std::string, int> counts;
  for (int i = 0; i < n; ++i) {
    auto idx = b.Pick(ctx);
    if (!idx) continue;
    ++counts[b.endpoints()[*idx].id];
  }
  return counts;
}

TEST(PolicyNames, ParseAndNameRoundTrip) {
  for (auto p : {Policy::kRoundRobin, Policy::kLeastRequest, Policy::kEwma, Policy::kRingHash,
                 Policy::kRandom}) {
    auto parsed = ParsePolicy(PolicyName(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, p);
  }
  auto bad = ParsePolicy("fastest");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("fastest"), std::string::npos);
  EXPECT_FALSE(ParsePolicy("").ok());
  EXPECT_FALSE(ParsePolicy("ROUND_ROBIN").ok());
}

TEST(RoundRobin, SmoothWeightedExactSequence) {
  auto b = MakeBalancer(Policy::kRoundRobin, 1);
  b->SetEndpoints(Eps({{"a", 5}, {"b", 1}, {"c", 1}}));
  std::string seq;
  for (int i = 0; i < 14; ++i) seq += b->endpoints()[*b->Pick({})].id;
  EXPECT_EQ(seq, "aabacaaaabacaa");
}

TEST(RoundRobin, EqualWeightsCycle) {
  auto b = MakeBalancer(Policy::kRoundRobin, 1);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}}));
  std::string seq;
  for (int i = 0; i < 6; ++i) seq += b->endpoints()[*b->Pick({})].id;
  EXPECT_EQ(seq, "abcabc");
}

TEST(RoundRobin, SkipsIneligibleAndKeepsWeights) {
  auto b = MakeBalancer(Policy::kRoundRobin, 1);
  b->SetEndpoints(Eps({{"a", 3}, {"b", 1}, {"c", 5}}));
  PickContext ctx;
  ctx.eligible = [](size_t i) { return i != 2; };
  auto counts = CountPicks(*b, 400, ctx);
  EXPECT_EQ(counts["a"], 300);
  EXPECT_EQ(counts["b"], 100);
  EXPECT_EQ(counts.count("c"), 0u);
}

TEST(RoundRobin, NonPositiveWeightCountsAsOne) {
  auto b = MakeBalancer(Policy::kRoundRobin, 1);
  b->SetEndpoints(Eps({{"a", 0}, {"b", -7}}));
  auto counts = CountPicks(*b, 100);
  EXPECT_EQ(counts["a"], 50);
  EXPECT_EQ(counts["b"], 50);
}

// Every policy must honour weights within tolerance when nothing else differs.
class WeightedDistribution : public ::testing::TestWithParam<Policy> {};

TEST_P(WeightedDistribution, HonoursWeights) {
  auto b = MakeBalancer(GetParam(), 42);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 2}, {"c", 5}}));
  const int n = 80'000;
  auto counts = CountPicks(*b, n);
  EXPECT_NEAR(counts["a"], n * 1 / 8, n * 0.02);
  EXPECT_NEAR(counts["b"], n * 2 / 8, n * 0.02);
  EXPECT_NEAR(counts["c"], n * 5 / 8, n * 0.02);
}

TEST_P(WeightedDistribution, NulloptWhenEmptyOrNoneEligible) {
  auto b = MakeBalancer(GetParam(), 42);
  EXPECT_FALSE(b->Pick({}).has_value());
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}}));
  PickContext none;
  none.eligible = [](size_t) { return false; };
  EXPECT_FALSE(b->Pick(none).has_value());
  none.hash = 12345;
  EXPECT_FALSE(b->Pick(none).has_value());
}

TEST_P(WeightedDistribution, OnlyEligiblePicked) {
  auto b = MakeBalancer(GetParam(), 7);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}, {"d", 1}}));
  PickContext ctx;
  ctx.eligible = [](size_t i) { return i == 1 || i == 3; };
  for (int i = 0; i < 1000; ++i) {
    ctx.hash = static_cast<uint64_t>(i) * 7919;
    auto idx = b->Pick(ctx);
    ASSERT_TRUE(idx.has_value());
    EXPECT_TRUE(*idx == 1 || *idx == 3) << *idx;
  }
}

TEST_P(WeightedDistribution, EndpointsComeAndGo) {
  auto b = MakeBalancer(GetParam(), 9);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}}));
  b->OnStart(1, 0);
  b->OnStart(1, 0);
  b->OnStart(2, 0);
  // "b" survives at a new index with its outstanding count; "c" is gone; "d" is new.
  b->SetEndpoints(Eps({{"b", 1}, {"d", 1}}));
  ASSERT_EQ(b->endpoints().size(), 2u);
  EXPECT_EQ(b->outstanding(0), 2);
  EXPECT_EQ(b->outstanding(1), 0);
  for (int i = 0; i < 500; ++i) {
    PickContext ctx;
    ctx.hash = static_cast<uint64_t>(i);
    auto idx = b->Pick(ctx);
    ASSERT_TRUE(idx.has_value());
    ASSERT_LT(*idx, 2u);
    std::string id = b->endpoints()[*idx].id;
    EXPECT_TRUE(id == "b" || id == "d") << id;
  }
  b->SetEndpoints({});
  EXPECT_FALSE(b->Pick({}).has_value());
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, WeightedDistribution,
                         ::testing::Values(Policy::kRoundRobin, Policy::kLeastRequest,
                                           Policy::kEwma, Policy::kRingHash, Policy::kRandom),
                         [](const auto& info) { return std::string(PolicyName(info.param)); });

TEST(BalancerBase, OutstandingBookkeepingIsBounded) {
  auto b = MakeBalancer(Policy::kLeastRequest, 1);
  b->SetEndpoints(Eps({{"a", 1}}));
  b->OnStart(0, 0);
  b->OnFinish(0, 1, 100, false);
  b->OnFinish(0, 1, 100, false);  // an extra report must not drive the count negative
  EXPECT_EQ(b->outstanding(0), 0);
  b->OnStart(99, 0);  // out of range: ignored, no crash
  b->OnFinish(99, 0, 1, true);
  EXPECT_EQ(b->outstanding(99), 0);
}

TEST(BalancerBase, DuplicateIdsAreDropped) {
  auto b = MakeBalancer(Policy::kRoundRobin, 1);
  b->SetEndpoints(Eps({{"a", 1}, {"a", 5}, {"b", 1}}));
  ASSERT_EQ(b->endpoints().size(), 2u);
  EXPECT_EQ(b->endpoints()[0].weight, 1);
}

TEST(LeastRequest, AvoidsLoadedEndpoint) {
  auto b = MakeBalancer(Policy::kLeastRequest, 3);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}}));
  for (int i = 0; i < 50; ++i) b->OnStart(0, 0);  // "a" is stuck with 50 requests
  auto counts = CountPicks(*b, 3000);
  EXPECT_EQ(counts.count("a"), 0u);  // P2C never prefers a loaded endpoint over an idle one
  EXPECT_NEAR(counts["b"], 1500, 150);
}

TEST(LeastRequest, BalancesOutstandingUnderLoad) {
  auto b = MakeBalancer(Policy::kLeastRequest, 5);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}, {"d", 1}}));
  for (int i = 0; i < 400; ++i) b->OnStart(*b->Pick({}), 0);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(b->outstanding(i), 100, 10);
}

TEST(LeastRequest, WeightsHoldUnderLoad) {
  auto b = MakeBalancer(Policy::kLeastRequest, 6);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 3}}));
  for (int i = 0; i < 4000; ++i) b->OnStart(*b->Pick({}), 0);  // nothing finishes
  EXPECT_NEAR(b->outstanding(0), 1000, 100);
  EXPECT_NEAR(b->outstanding(1), 3000, 100);
}

// Simulates requests that finish at once with a per-endpoint latency (and failure).
std::map<std::string, int> RunEwma(Balancer& b, const std::map<std::string, int64_t>& latency_us,
                                   const std::string& failing, int n) {
  std::map<std::string, int> counts;
  MonoMs now = 1'000;
  for (int i = 0; i < n; ++i, now += 1) {
    size_t idx = *b.Pick(At(now));
    const std::string& id = b.endpoints()[idx].id;
    ++counts[id];
    b.OnStart(idx, now);
    b.OnFinish(idx, now, latency_us.at(id), id == failing);
  }
  return counts;
}

TEST(Ewma, SteersAwayFromSlowEndpoint) {
  auto b = MakeBalancer(Policy::kEwma, 11);
  b->SetEndpoints(Eps({{"fast1", 1}, {"fast2", 1}, {"slow", 1}}));
  auto counts = RunEwma(*b, {{"fast1", 1'000}, {"fast2", 1'200}, {"slow", 100'000}}, "", 3000);
  EXPECT_LT(counts["slow"], 3000 / 20);  // far below its fair third
  EXPECT_GT(counts["fast1"], 1000);
}

TEST(Ewma, SteersAwayFromFailingEndpoint) {
  auto b = MakeBalancer(Policy::kEwma, 12);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"bad", 1}}));
  // "bad" answers fast but fails: failures count as a high latency.
  auto counts = RunEwma(*b, {{"a", 2'000}, {"b", 2'000}, {"bad", 100}}, "bad", 3000);
  EXPECT_LT(counts["bad"], 3000 / 20);
}

TEST(Ewma, SlowEndpointIsProbedAgainAfterDecay) {
  auto b = MakeBalancer(Policy::kEwma, 13);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}}));
  b->OnStart(1, 0);
  b->OnFinish(1, 0, 500'000, false);  // "b" was slow once
  b->OnStart(0, 0);
  b->OnFinish(0, 0, 1'000, false);
  EXPECT_EQ(*b->Pick(At(1)), 0u);
  // 90 s later the old sample has decayed (e^-9) below "a"'s fresh one: "b" gets probed again.
  b->OnStart(0, 90'000);
  b->OnFinish(0, 90'000, 1'000, false);
  auto counts = std::map<size_t, int>{};
  for (int i = 0; i < 100; ++i) ++counts[*b->Pick(At(90'000))];
  EXPECT_GT(counts[1], 0);
}

TEST(Ewma, KeepsLatencyStateForSurvivors) {
  auto b = MakeBalancer(Policy::kEwma, 14);
  b->SetEndpoints(Eps({{"slow", 1}, {"fast", 1}}));
  b->OnStart(0, 0);
  b->OnFinish(0, 0, 900'000, false);
  b->OnStart(1, 0);
  b->OnFinish(1, 0, 1'000, false);
  b->SetEndpoints(Eps({{"new", 1}, {"fast", 1}, {"slow", 1}}));
  for (int i = 0; i < 200; ++i) {
    PickContext ctx = At(10);
    ctx.eligible = [](size_t i) { return i != 0; };  // compare only the two survivors
    EXPECT_EQ(b->endpoints()[*b->Pick(ctx)].id, "fast");
  }
}

TEST(Random, UniformWithoutWeights) {
  auto b = MakeBalancer(Policy::kRandom, 99);
  b->SetEndpoints(Eps({{"a", 1}, {"b", 1}, {"c", 1}, {"d", 1}}));
  auto counts = CountPicks(*b, 40'000);
  for (const char* id : {"a", "b", "c", "d"}) EXPECT_NEAR(counts[id], 10'000, 500) << id;
}

TEST(Random, SameSeedSameSequence) {
  auto b1 = MakeBalancer(Policy::kRandom, 5);
  auto b2 = MakeBalancer(Policy::kRandom, 5);
  b1->SetEndpoints(Eps({{"a", 1}, {"b", 3}, {"c", 2}}));
  b2->SetEndpoints(Eps({{"a", 1}, {"b", 3}, {"c", 2}}));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(*b1->Pick({}), *b2->Pick({}));
}

}  // namespace
}  // namespace haven::lb
