// Ring hash: key stickiness and minimal movement when endpoints come and go.
#include <gtest/gtest.h>

#include <string>

#include "lb/balancer.h"

namespace haven::lb {
namespace {

std::vector<Endpoint> Numbered(int n) {
  std::vector<Endpoint> out;
  for (int i = 0; i < n; ++i) {
    out.push_back({"instance-" + std::to_string(i), "10.0.0." + std::to_string(i),
                   static_cast<uint16_t>(8000 + i), 1});
  }
  return out;
}

constexpr int kKeys = 20'000;

std::vector<std::string> Owners(Balancer& b) {
  std::vector<std::string> owners;
  for (int k = 0; k < kKeys; ++k) {
    PickContext ctx;
    ctx.hash = static_cast<uint64_t>(k);  // deliberately weak keys: the ring must mix them
    owners.push_back(b.endpoints()[*b.Pick(ctx)].id);
  }
  return owners;
}

TEST(RingHash, SameKeySameEndpoint) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  b->SetEndpoints(Numbered(5));
  auto first = Owners(*b);
  EXPECT_EQ(Owners(*b), first);
  // Another balancer (another worker) with another seed agrees: the ring depends on ids only.
  auto other = MakeBalancer(Policy::kRingHash, 777);
  auto reversed = Numbered(5);
  std::reverse(reversed.begin(), reversed.end());
  other->SetEndpoints(reversed);
  EXPECT_EQ(Owners(*other), first);
}

TEST(RingHash, AddingOneOfTenMovesAboutOneEleventh) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  b->SetEndpoints(Numbered(10));
  auto before = Owners(*b);
  b->SetEndpoints(Numbered(11));
  auto after = Owners(*b);
  int moved = 0;
  for (int k = 0; k < kKeys; ++k) {
    if (before[k] != after[k]) {
      ++moved;
      EXPECT_EQ(after[k], "instance-10");  // keys only move to the new endpoint
    }
  }
  EXPECT_GT(moved, kKeys / 11 / 2);
  EXPECT_LT(moved, kKeys / 5);
}

TEST(RingHash, RemovingOneMovesOnlyItsKeys) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  b->SetEndpoints(Numbered(10));
  auto before = Owners(*b);
  auto eps = Numbered(10);
  eps.erase(eps.begin() + 3);
  b->SetEndpoints(eps);
  auto after = Owners(*b);
  int moved = 0;
  for (int k = 0; k < kKeys; ++k) {
    if (before[k] == "instance-3") {
      EXPECT_NE(after[k], "instance-3");
      ++moved;
    } else {
      EXPECT_EQ(after[k], before[k]);
    }
  }
  EXPECT_NEAR(moved, kKeys / 10, kKeys / 20);
}

TEST(RingHash, IneligibleOwnerWalksToNextAndOthersStay) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  b->SetEndpoints(Numbered(6));
  auto before = Owners(*b);
  for (int k = 0; k < kKeys; ++k) {
    PickContext ctx;
    ctx.hash = static_cast<uint64_t>(k);
    ctx.eligible = [](size_t i) { return i != 2; };
    std::string owner = b->endpoints()[*b->Pick(ctx)].id;
    if (before[k] == "instance-2") {
      EXPECT_NE(owner, "instance-2");
    } else {
      EXPECT_EQ(owner, before[k]);
    }
  }
}

TEST(RingHash, SpreadsKeysEvenly) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  b->SetEndpoints(Numbered(4));
  std::map<std::string, int> counts;
  for (const auto& o : Owners(*b)) ++counts[o];
  for (const auto& [id, c] : counts) EXPECT_NEAR(c, kKeys / 4, kKeys / 4 * 0.25) << id;
}

TEST(RingHash, ManyHeavyEndpointsStayBounded) {
  auto b = MakeBalancer(Policy::kRingHash, 1);
  auto eps = Numbered(2000);
  for (auto& e : eps) e.weight = 1000;  // 2e8 points unbounded; the ring caps it
  b->SetEndpoints(eps);
  PickContext ctx;
  ctx.hash = 42;
  EXPECT_TRUE(b->Pick(ctx).has_value());
}

}  // namespace
}  // namespace haven::lb
