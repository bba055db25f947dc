// Ring hash (Ketama): every endpoint owns ~100 points per unit of weight on a 64-bit ring, placed
// by hashing its id, so adding or removing one endpoint moves only the keys next to its points. A
// key goes to the owner of the first point at or after it; ineligible owners are skipped clockwise.
#include <algorithm>
#include <string>

#include "lb/policies.h"

namespace haven::lb::internal {
namespace {

constexpr int64_t kPointsPerWeight = 100;
constexpr int64_t kMaxRingPoints = 200'000;  // bounds memory; points are scaled down beyond it

struct RingPoint {
  uint64_t hash;
  size_t index;
  bool operator<(const RingPoint& o) const {
    return hash != o.hash ? hash < o.hash : index < o.index;
  }
};

// FNV-1a then a strong mix: stable across runs and platforms, unlike std::hash.
uint64_t HashPoint(const std::string& id, int64_t replica) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : id) h = (h ^ c) * 0x100000001b3ULL;
  return Mix64(h ^ Mix64(static_cast<uint64_t>(replica) + 1));
}

class RingHashBalancer final : public Balancer {
 public:
  explicit RingHashBalancer(uint64_t seed) : rng_(seed) {}

  void SetEndpoints(std::vector<Endpoint> endpoints) override {
    ReplaceEndpoints(std::move(endpoints));
    BuildRing();
  }

  std::optional<size_t> Pick(const PickContext& ctx) override {
    if (!ctx.hash) return PickWeightedRandom(endpoints_, ctx, rng_);
    if (ring_.empty()) return std::nullopt;
    uint64_t key = Mix64(*ctx.hash);
    auto it = std::lower_bound(ring_.begin(), ring_.end(), RingPoint{key, 0});
    size_t start = static_cast<size_t>(it - ring_.begin()) % ring_.size();
    return WalkToEligible(start, ctx);
  }

 private:
  void BuildRing() {
    ring_.clear();
    int64_t total_weight = 0;
    for (const auto& e : endpoints_) total_weight += EffectiveWeight(e);
    double scale = std::min(
        1.0, static_cast<double>(kMaxRingPoints) /
                 static_cast<double>(std::max<int64_t>(1, total_weight * kPointsPerWeight)));
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      auto points = static_cast<int64_t>(
          static_cast<double>(EffectiveWeight(endpoints_[i]) * kPointsPerWeight) * scale);
      points = std::max<int64_t>(1, points);
      for (int64_t r = 0; r < points; ++r) ring_.push_back({HashPoint(endpoints_[i].id, r), i});
    }
    std::sort(ring_.begin(), ring_.end());
  }

  // Each endpoint's eligibility is asked at most once per pick, however many of its points we pass.
  std::optional<size_t> WalkToEligible(size_t start, const PickContext& ctx) {
    if (!ctx.eligible) return ring_[start].index;
    verdict_.assign(endpoints_.size(), kUnknown);
    size_t rejected = 0;
    for (size_t step = 0; step < ring_.size() && rejected < endpoints_.size(); ++step) {
      size_t index = ring_[(start + step) % ring_.size()].index;
      if (verdict_[index] == kUnknown) {
        verdict_[index] = ctx.eligible(index) ? kYes : kNo;
        if (verdict_[index] == kNo) ++rejected;
      }
      if (verdict_[index] == kYes) return index;
    }
    return std::nullopt;
  }

  enum Verdict : uint8_t { kUnknown, kYes, kNo };
  std::mt19937_64 rng_;
  std::vector<RingPoint> ring_;
  std::vector<Verdict> verdict_;
};

}  // namespace

std::unique_ptr<Balancer> MakeRingHash(uint64_t seed) {
  return std::make_unique<RingHashBalancer>(seed);
}

}  // namespace haven::lb::internal
