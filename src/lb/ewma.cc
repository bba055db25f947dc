// Peak EWMA (Finagle/linkerd): power of two choices on cost = latency estimate * (outstanding + 1).
// The estimate jumps up to any slower sample at once (peak) and decays towards faster ones and,
// while an endpoint is idle, towards zero over ~10 s so that a once-slow endpoint gets probed
// again.
#include <algorithm>
#include <cmath>

#include "lb/policies.h"

namespace haven::lb::internal {
namespace {

constexpr double kDecayMs = 10'000;              // time constant of the moving average
constexpr double kFailurePenaltyUs = 1'000'000;  // a failed attempt counts as at least 1 s
constexpr double kFailureFactor = 5;             // ... or 5x the current estimate
constexpr double kMaxLatencyUs = 60'000'000;     // bounds any single sample
// Cost of an endpoint with no estimate but requests in flight: worse than any measured one, so
// a new endpoint gets one probe at a time until it has a latency.
constexpr double kUnknownBusyCost = 1e15;

struct LatencyEstimate {
  double ewma_us = 0;
  MonoMs last_ms = 0;
};

double DecayFactor(MonoMs from, MonoMs to) {
  double dt = static_cast<double>(std::max<MonoMs>(0, to - from));
  return std::exp(-dt / kDecayMs);
}

class EwmaBalancer final : public Balancer {
 public:
  explicit EwmaBalancer(uint64_t seed) : rng_(seed) {}

  void SetEndpoints(std::vector<Endpoint> endpoints) override {
    auto carried = ReplaceEndpoints(std::move(endpoints));
    std::vector<LatencyEstimate> estimates(endpoints_.size());
    for (size_t i = 0; i < carried.size(); ++i) {
      if (carried[i]) estimates[i] = estimates_[*carried[i]];
    }
    estimates_ = std::move(estimates);
  }

  std::optional<size_t> Pick(const PickContext& ctx) override {
    auto two = PickTwo(endpoints_, ctx, rng_, scratch_);
    if (!two) return std::nullopt;
    auto [a, b] = *two;
    double cost_a = Cost(a, ctx.now);
    double cost_b = Cost(b, ctx.now);
    if (cost_a != cost_b) return cost_a < cost_b ? a : b;
    return a;  // a tie goes to the first draw: random and weighted, so idle endpoints follow
               // weights
  }

  void OnFinish(size_t index, MonoMs now, int64_t latency_us, bool failed) override {
    if (index < estimates_.size())
      Observe(estimates_[index], now, SampleUs(index, latency_us, failed));
    Balancer::OnFinish(index, now, latency_us, failed);
  }

 private:
  double SampleUs(size_t index, int64_t latency_us, bool failed) const {
    double sample = std::clamp(static_cast<double>(latency_us), 0.0, kMaxLatencyUs);
    if (failed) {
      sample = std::max({sample, kFailurePenaltyUs, kFailureFactor * estimates_[index].ewma_us});
    }
    return std::min(sample, kMaxLatencyUs);
  }

  static void Observe(LatencyEstimate& e, MonoMs now, double sample_us) {
    double w = DecayFactor(e.last_ms, now);
    e.ewma_us = sample_us > e.ewma_us ? sample_us : e.ewma_us * w + sample_us * (1 - w);
    e.last_ms = std::max(e.last_ms, now);
  }

  double Cost(size_t i, MonoMs now) const {
    const LatencyEstimate& e = estimates_[i];
    double latency = e.ewma_us * DecayFactor(e.last_ms, now);
    double weight = EffectiveWeight(endpoints_[i]);
    auto outstanding = static_cast<double>(outstanding_[i]);
    if (latency < 1 && outstanding > 0) return (kUnknownBusyCost + outstanding) / weight;
    return latency * (outstanding + 1) / weight;
  }

  std::mt19937_64 rng_;
  std::vector<size_t> scratch_;
  std::vector<LatencyEstimate> estimates_;
};

}  // namespace

std::unique_ptr<Balancer> MakeEwma(uint64_t seed) { return std::make_unique<EwmaBalancer>(seed); }

}  // namespace haven::lb::internal
