// Adaptive per-try timeout: multiple of the recent p99, clamped; fixed memory, no allocation.
#include "lb/try_timeout.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace haven::lb {
namespace {

constexpr int kMaxMultiplier = 100;
constexpr int64_t kMaxMs = 3'600'000;
constexpr int kMaxMinSamples = 1'000'000;
constexpr int64_t kMinWindowMs = 100;
constexpr double kFirstBucketUs = 100;
constexpr double kBucketRatio = 1.25;

TryTimeoutOptions Clamp(TryTimeoutOptions o) {
  o.multiplier = std::clamp(o.multiplier, 0, kMaxMultiplier);
  o.ceiling_ms = std::clamp<int64_t>(o.ceiling_ms, 1, kMaxMs);
  o.floor_ms = std::clamp<int64_t>(o.floor_ms, 1, o.ceiling_ms);
  o.min_samples = std::clamp(o.min_samples, 1, kMaxMinSamples);
  o.window_ms = std::clamp<int64_t>(o.window_ms, kMinWindowMs, kMaxMs);
  return o;
}

// Upper bounds of the buckets in us, computed once: a sample's bucket is a binary search.
const std::array<int64_t, LatencyWindow::kBuckets>& BucketBounds() {
  static const auto bounds = [] {
    std::array<int64_t, LatencyWindow::kBuckets> b{};
    for (size_t i = 0; i < b.size(); ++i) {
      b[i] = static_cast<int64_t>(kFirstBucketUs * std::pow(kBucketRatio, static_cast<double>(i)));
    }
    return b;
  }();
  return bounds;
}

int64_t BucketUpperUs(size_t i) { return BucketBounds()[i]; }

}  // namespace

Status ValidateTryTimeoutOptions(const TryTimeoutOptions& o) {
  if (o.multiplier < 0 || o.multiplier > kMaxMultiplier) {
    return Status::InvalidArgument("try-timeout multiplier must be in [0, 100]");
  }
  if (o.ceiling_ms < 1 || o.ceiling_ms > kMaxMs || o.floor_ms < 1 || o.floor_ms > kMaxMs) {
    return Status::InvalidArgument("try-timeout floor and ceiling must be in [1 ms, 1 h]");
  }
  if (o.min_samples < 1 || o.min_samples > kMaxMinSamples) {
    return Status::InvalidArgument("try-timeout min_samples must be in [1, 1000000]");
  }
  if (o.window_ms < kMinWindowMs || o.window_ms > kMaxMs) {
    return Status::InvalidArgument("try-timeout window must be in [100 ms, 1 h]");
  }
  return Status::Ok();
}

LatencyWindow::LatencyWindow(int64_t window_ms)
    : half_ms_(std::max<int64_t>(1, std::clamp<int64_t>(window_ms, kMinWindowMs, kMaxMs) / 2)) {}

size_t LatencyWindow::BucketOf(int64_t latency_us) {
  const auto& bounds = BucketBounds();
  auto it = std::lower_bound(bounds.begin(), bounds.end(), latency_us);
  return it == bounds.end() ? kBuckets - 1 : static_cast<size_t>(it - bounds.begin());
}

bool LatencyWindow::Live(const Generation& g, MonoMs now) const {
  int64_t slot = std::max<MonoMs>(now, 0) / half_ms_;
  return g.slot == slot || g.slot == slot - 1;
}

void LatencyWindow::Record(MonoMs now, int64_t latency_us) {
  int64_t slot = std::max<MonoMs>(now, 0) / half_ms_;
  Generation& g = gens_[static_cast<size_t>(slot % 2)];
  if (g.slot != slot) g = Generation{slot, 0, {}};
  ++g.counts[BucketOf(std::max<int64_t>(0, latency_us))];
  ++g.total;
}

int64_t LatencyWindow::count(MonoMs now) const {
  int64_t n = 0;
  for (const Generation& g : gens_) {
    if (Live(g, now)) n += g.total;
  }
  return n;
}

int64_t LatencyWindow::QuantileUs(MonoMs now, double q) const {
  int64_t total = count(now);
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  auto rank = static_cast<int64_t>(std::ceil(q * static_cast<double>(total)));
  rank = std::max<int64_t>(rank, 1);
  int64_t seen = 0;
  for (size_t b = 0; b < kBuckets; ++b) {
    for (const Generation& g : gens_) {
      if (Live(g, now)) seen += g.counts[b];
    }
    if (seen >= rank) return BucketUpperUs(b);
  }
  return BucketUpperUs(kBuckets - 1);
}

TryTimeout::TryTimeout(TryTimeoutOptions opts) : opts_(Clamp(opts)), window_(opts_.window_ms) {}

void TryTimeout::OnSuccess(MonoMs now, int64_t latency_us) { window_.Record(now, latency_us); }

int64_t TryTimeout::TimeoutMs(MonoMs now) const {
  if (opts_.multiplier == 0 || window_.count(now) < opts_.min_samples) return opts_.ceiling_ms;
  int64_t p99_ms = (window_.QuantileUs(now, 0.99) + 999) / 1000;
  return std::clamp<int64_t>(p99_ms * opts_.multiplier, opts_.floor_ms, opts_.ceiling_ms);
}

}  // namespace haven::lb
