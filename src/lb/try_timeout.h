// TryTimeout: the per-try timeout of retryable requests, derived from the latency the cluster
// answers with lately (a multiple of the recent p99, within a floor and a ceiling), so that a hung
// instance costs a request tens of milliseconds instead of a fixed seconds-long timeout.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "base/clock.h"
#include "base/status.h"

namespace haven::lb {

struct TryTimeoutOptions {
  int multiplier = 3;          // timeout = multiplier x recent p99; 0 = off (the ceiling always)
  int64_t floor_ms = 25;       // never below: a healthy instance's jitter is not a hang
  int64_t ceiling_ms = 5'000;  // never above: the configured per-try timeout
  int min_samples = 20;        // fewer recent answers than this: the ceiling (nothing learned)
  int64_t window_ms = 10'000;  // "recent": answers of the last window_ms (two halves)
};

// Checks the options are within sane limits (for flag and config parsing).
Status ValidateTryTimeoutOptions(const TryTimeoutOptions& opts);

// Recent latency quantiles in fixed memory: log-spaced buckets (25% apart, 100 us .. ~65 s) in two
// half-window generations; a quantile is the upper bound of its bucket (over-estimates by <= 25%).
class LatencyWindow {
 public:
  static constexpr size_t kBuckets = 64;

  explicit LatencyWindow(int64_t window_ms);
  void Record(MonoMs now, int64_t latency_us);
  int64_t count(MonoMs now) const;
  // The q-quantile (0 < q <= 1) of the recent samples in us; 0 when there are none.
  int64_t QuantileUs(MonoMs now, double q) const;

 private:
  struct Generation {
    int64_t slot = -1;  // which half window (now / half) the counts belong to
    int64_t total = 0;
    std::array<int64_t, kBuckets> counts{};
  };
  static size_t BucketOf(int64_t latency_us);
  bool Live(const Generation& g, MonoMs now) const;

  int64_t half_ms_;
  std::array<Generation, 2> gens_{};
};

// Not thread-safe: one per proxy worker and cluster (or under the client's service lock).
class TryTimeout {
 public:
  // Out-of-range options are clamped to the nearest valid value.
  explicit TryTimeout(TryTimeoutOptions opts);
  // A successful attempt's latency (failures and timeouts are not "normal latency").
  void OnSuccess(MonoMs now, int64_t latency_us);
  // The per-try timeout of a retryable request starting now.
  int64_t TimeoutMs(MonoMs now) const;
  int64_t p99_us(MonoMs now) const { return window_.QuantileUs(now, 0.99); }
  const TryTimeoutOptions& options() const { return opts_; }

 private:
  TryTimeoutOptions opts_;
  LatencyWindow window_;
};

}  // namespace haven::lb
