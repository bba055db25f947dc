// Least request by power of two choices: sample two eligible endpoints, take the one with fewer
// outstanding requests per unit of weight. Avoids the herd effect of a global minimum.
#include "lb/policies.h"

namespace haven::lb::internal {
namespace {

class LeastRequestBalancer final : public Balancer {
 public:
  explicit LeastRequestBalancer(uint64_t seed) : rng_(seed) {}

  void SetEndpoints(std::vector<Endpoint> endpoints) override {
    ReplaceEndpoints(std::move(endpoints));
  }

  std::optional<size_t> Pick(const PickContext& ctx) override {
    auto two = PickTwo(endpoints_, ctx, rng_, scratch_);
    if (!two) return std::nullopt;
    auto [a, b] = *two;
    // Compare outstanding/weight by cross-multiplying: exact, no floating point.
    int64_t load_a = outstanding_[a] * EffectiveWeight(endpoints_[b]);
    int64_t load_b = outstanding_[b] * EffectiveWeight(endpoints_[a]);
    if (load_a != load_b) return load_a < load_b ? a : b;
    return a;  // a tie goes to the first draw: random and weighted, so idle endpoints follow
               // weights
  }

 private:
  std::mt19937_64 rng_;
  std::vector<size_t> scratch_;
};

}  // namespace

std::unique_ptr<Balancer> MakeLeastRequest(uint64_t seed) {
  return std::make_unique<LeastRequestBalancer>(seed);
}

}  // namespace haven::lb::internal
