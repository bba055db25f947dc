// Random: each pick is an independent weighted draw among eligible endpoints.
#include "lb/policies.h"

namespace haven::lb::internal {
namespace {

class RandomBalancer final : public Balancer {
 public:
  explicit RandomBalancer(uint64_t seed) : rng_(seed) {}

  void SetEndpoints(std::vector<Endpoint> endpoints) override {
    ReplaceEndpoints(std::move(endpoints));
  }

  std::optional<size_t> Pick(const PickContext& ctx) override {
    return PickWeightedRandom(endpoints_, ctx, rng_);
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

std::unique_ptr<Balancer> MakeRandom(uint64_t seed) {
  return std::make_unique<RandomBalancer>(seed);
}

}  // namespace haven::lb::internal
