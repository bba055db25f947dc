// RetryPolicy: decides whether and when a failed upstream attempt is retried (failover, backoff,
// budget).
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "base/clock.h"
#include "base/status.h"

namespace haven::lb {

enum class AttemptFailure {
  kConnectFailed,         // refused/unreachable/connect timeout: nothing reached the instance
  kClosedBeforeResponse,  // reset/EOF before any response byte
  kTimeout,               // per-try timeout with no response
  kBadGateway,            // garbage from upstream
  kStatus,                // a complete response with `status` (only 502/503/504 are retryable)
};
struct AttemptResult {
  AttemptFailure failure;
  bool request_sent = false;
  int status = 0;
  // The instance was found dead: refused, or a fresh connection reset/closed before any answer.
  // Such a try did no work and took no time, so it does not use up an attempt (see Decide).
  bool instance_dead = false;
  int dead_tries = 0;  // tries of this request that found their instance dead, this one included
};
struct RequestTraits {
  bool idempotent = false;  // GET HEAD OPTIONS PUT DELETE TRACE, or marked retryable
  bool body_buffered = true;
};
struct RetryOptions {
  int max_attempts = 3;
  int64_t per_try_timeout_ms = 5'000, overall_timeout_ms = 15'000;
  int64_t backoff_base_ms = 25, backoff_max_ms = 250;  // jittered exponential ("full jitter")
  double budget_ratio = 0.2;
  int64_t budget_window_ms = 10'000;
  int budget_min_retries = 10;
};
struct RetryDecision {
  bool retry = false;
  int64_t delay_ms = 0;
  std::string reason;
};

// Checks the options are within sane limits (for flag and config parsing).
Status ValidateRetryOptions(const RetryOptions& opts);

bool IsIdempotentMethod(std::string_view method);

class RetryPolicy {
 public:
  // Out-of-range options are clamped to the nearest valid value.
  RetryPolicy(RetryOptions opts, uint64_t seed);
  void OnRequest(MonoMs now);  // every new client request (feeds the budget)
  // attempt = 1 for the first try; tries that found their instance dead are not counted in it:
  // when a worker holding many instances dies, a request may meet dead instances before a live
  // one, and each of those tries would otherwise take an attempt a slow but live instance needs.
  // Up to max_attempts such tries per request (when max_attempts > 1) may go past max_attempts.
  // Active failover (connect failed / closed before response with
  // nothing sent, body buffered) -> retry with delay 0, any method. Once bytes reached an instance:
  // only idempotent requests; a per-try timeout is retried at once too (the timeout was the wait).
  // Wait-based (502/503/504, idempotent) -> jittered backoff.
  // Never past max_attempts, never past `deadline`, never beyond the retry budget (a retry consumes
  // it).
  RetryDecision Decide(const RequestTraits& req, const AttemptResult& r, int attempt, MonoMs now,
                       MonoMs deadline);
  const RetryOptions& options() const { return opts_; }
  // Full-jitter backoff before retry number `attempt` (1 = after the first try):
  // uniform in [0, min(backoff_max_ms, backoff_base_ms * 2^(attempt-1))].
  int64_t BackoffMs(int attempt);
  // Retries the budget still allows at `now`.
  int64_t budget_remaining(MonoMs now) const;

 private:
  // The budget window is kept as kBuckets counters so memory stays fixed whatever the request rate.
  static constexpr int kBuckets = 10;
  struct Bucket {
    int64_t slot = -1;  // which window slice (now / slice length) the counts belong to
    int64_t requests = 0;
    int64_t retries = 0;
  };
  Bucket& CurrentBucket(MonoMs now);
  int64_t SliceMs() const;

  RetryOptions opts_;
  std::mt19937_64 rng_;
  std::array<Bucket, kBuckets> buckets_{};
};

}  // namespace haven::lb
