// Smooth weighted round robin (nginx): each pick adds every eligible endpoint's weight to its
// running score, takes the highest score, and subtracts the total from the winner. Weights are
// honoured exactly and heavy endpoints are interleaved rather than picked in bursts.
#include "lb/policies.h"

namespace haven::lb::internal {
namespace {

class RoundRobinBalancer final : public Balancer {
 public:
  void SetEndpoints(std::vector<Endpoint> endpoints) override {
    auto carried = ReplaceEndpoints(std::move(endpoints));
    std::vector<int64_t> current(endpoints_.size(), 0);
    for (size_t i = 0; i < carried.size(); ++i) {
      if (carried[i]) current[i] = current_[*carried[i]];
    }
    current_ = std::move(current);
  }

  std::optional<size_t> Pick(const PickContext& ctx) override {
    std::optional<size_t> best;
    int64_t total = 0;
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      if (!IsEligible(ctx, i)) continue;
      int64_t w = EffectiveWeight(endpoints_[i]);
      current_[i] += w;
      total += w;
      if (!best || current_[i] > current_[*best]) best = i;
    }
    if (best) current_[*best] -= total;
    return best;
  }

 private:
  // Scores stay within [-total weight, total weight], so they never overflow.
  std::vector<int64_t> current_;
};

}  // namespace

std::unique_ptr<Balancer> MakeRoundRobin() { return std::make_unique<RoundRobinBalancer>(); }

}  // namespace haven::lb::internal
