// Retry decisions: active failover at once when nothing reached the instance, jittered backoff for
// "try again" answers, all bounded by attempts, the deadline and a retry budget.
#include "lb/retry_policy.h"

#include <algorithm>
#include <cmath>

namespace haven::lb {
namespace {

constexpr int kMaxAttempts = 10;
constexpr int64_t kMaxTimeoutMs = 3'600'000;
constexpr int64_t kMaxBackoffMs = 600'000;
constexpr int64_t kMinWindowMs = 100;
constexpr int kMaxMinRetries = 1'000'000;

RetryOptions Clamp(RetryOptions o) {
  o.max_attempts = std::clamp(o.max_attempts, 1, kMaxAttempts);
  o.per_try_timeout_ms = std::clamp<int64_t>(o.per_try_timeout_ms, 1, kMaxTimeoutMs);
  o.overall_timeout_ms = std::clamp<int64_t>(o.overall_timeout_ms, 1, kMaxTimeoutMs);
  o.backoff_base_ms = std::clamp<int64_t>(o.backoff_base_ms, 0, kMaxBackoffMs);
  o.backoff_max_ms = std::clamp<int64_t>(o.backoff_max_ms, o.backoff_base_ms, kMaxBackoffMs);
  if (!(o.budget_ratio >= 0)) o.budget_ratio = 0;  // also catches NaN
  o.budget_ratio = std::min(o.budget_ratio, 1.0);
  o.budget_window_ms = std::clamp<int64_t>(o.budget_window_ms, kMinWindowMs, kMaxTimeoutMs);
  o.budget_min_retries = std::clamp(o.budget_min_retries, 0, kMaxMinRetries);
  return o;
}

enum class RetryKind { kNone, kImmediate, kBackoff };
struct Classified {
  RetryKind kind;
  std::string reason;
};

bool IsRetryableStatus(int status) { return status == 502 || status == 503 || status == 504; }

// The table of issue 3: what a failure allows, before attempts, deadline and budget are checked.
Classified Classify(const RequestTraits& req, const AttemptResult& r) {
  if (!req.body_buffered) return {RetryKind::kNone, "request body was not buffered"};
  switch (r.failure) {
    case AttemptFailure::kConnectFailed:
      return {RetryKind::kImmediate, "connect failed"};
    case AttemptFailure::kClosedBeforeResponse:
      if (!r.request_sent) return {RetryKind::kImmediate, "closed before the request was sent"};
      if (req.idempotent) return {RetryKind::kImmediate, "closed before any response"};
      return {RetryKind::kNone, "closed after the request was sent; method not idempotent"};
    case AttemptFailure::kTimeout:
      // No wait: the instance that did not answer is not asked again while another exists, and
      // the timeout itself was the wait.
      if (req.idempotent) return {RetryKind::kImmediate, "per-try timeout"};
      return {RetryKind::kNone, "per-try timeout; method not idempotent"};
    case AttemptFailure::kBadGateway:
      if (req.idempotent) return {RetryKind::kImmediate, "bad response from upstream"};
      return {RetryKind::kNone, "bad response from upstream; method not idempotent"};
    case AttemptFailure::kStatus:
      if (!IsRetryableStatus(r.status)) {
        return {RetryKind::kNone, "status " + std::to_string(r.status) + " is not retryable"};
      }
      if (req.idempotent) return {RetryKind::kBackoff, "status " + std::to_string(r.status)};
      return {RetryKind::kNone, "status " + std::to_string(r.status) + "; method not idempotent"};
  }
  return {RetryKind::kNone, "unknown failure"};
}

}  // namespace

Status ValidateRetryOptions(const RetryOptions& o) {
  if (o.max_attempts < 1 || o.max_attempts > kMaxAttempts) {
    return Status::InvalidArgument("retry max_attempts must be in [1, 10]");
  }
  if (o.per_try_timeout_ms < 1 || o.per_try_timeout_ms > kMaxTimeoutMs ||
      o.overall_timeout_ms < 1 || o.overall_timeout_ms > kMaxTimeoutMs) {
    return Status::InvalidArgument("retry timeouts must be in [1 ms, 1 h]");
  }
  if (o.backoff_base_ms < 0 || o.backoff_max_ms < o.backoff_base_ms ||
      o.backoff_max_ms > kMaxBackoffMs) {
    return Status::InvalidArgument("retry backoff must satisfy 0 <= base <= max <= 10 min");
  }
  if (!(o.budget_ratio >= 0 && o.budget_ratio <= 1)) {
    return Status::InvalidArgument("retry budget_ratio must be in [0, 1]");
  }
  if (o.budget_window_ms < kMinWindowMs || o.budget_window_ms > kMaxTimeoutMs) {
    return Status::InvalidArgument("retry budget_window_ms must be in [100 ms, 1 h]");
  }
  if (o.budget_min_retries < 0 || o.budget_min_retries > kMaxMinRetries) {
    return Status::InvalidArgument("retry budget_min_retries must be in [0, 1000000]");
  }
  return Status::Ok();
}

bool IsIdempotentMethod(std::string_view method) {
  // Methods are case-sensitive (RFC 9110); POST and PATCH are the non-idempotent ones in practice.
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "PUT" ||
         method == "DELETE" || method == "TRACE";
}

RetryPolicy::RetryPolicy(RetryOptions opts, uint64_t seed) : opts_(Clamp(opts)), rng_(seed) {}

void RetryPolicy::OnRequest(MonoMs now) { ++CurrentBucket(now).requests; }

RetryDecision RetryPolicy::Decide(const RequestTraits& req, const AttemptResult& r, int attempt,
                                  MonoMs now, MonoMs deadline) {
  attempt = std::max(attempt, 1);
  const bool uncounted =
      r.instance_dead && opts_.max_attempts > 1 && r.dead_tries <= opts_.max_attempts;
  if (!uncounted && attempt >= opts_.max_attempts) return {false, 0, "max attempts reached"};
  Classified c = Classify(req, r);
  if (c.kind == RetryKind::kNone) return {false, 0, std::move(c.reason)};
  int64_t delay = c.kind == RetryKind::kBackoff ? BackoffMs(attempt) : 0;
  if (now + delay >= deadline) return {false, 0, "deadline reached (" + c.reason + ")"};
  if (budget_remaining(now) <= 0) return {false, 0, "retry budget exhausted (" + c.reason + ")"};
  ++CurrentBucket(now).retries;
  return {true, delay, std::move(c.reason)};
}

int64_t RetryPolicy::BackoffMs(int attempt) {
  // base * 2^(attempt-1), doubling only while below the cap so it cannot overflow.
  int64_t cap = opts_.backoff_base_ms;
  for (int i = 1; i < attempt && cap < opts_.backoff_max_ms; ++i) cap *= 2;
  cap = std::min(cap, opts_.backoff_max_ms);
  if (cap <= 0) return 0;
  return std::uniform_int_distribution<int64_t>(0, cap)(rng_);
}

int64_t RetryPolicy::budget_remaining(MonoMs now) const {
  int64_t current = std::max<MonoMs>(now, 0) / SliceMs();
  int64_t requests = 0, retries = 0;
  for (const Bucket& b : buckets_) {
    if (b.slot > current - kBuckets && b.slot <= current) {
      requests += b.requests;
      retries += b.retries;
    }
  }
  auto earned =
      static_cast<int64_t>(std::floor(opts_.budget_ratio * static_cast<double>(requests)));
  return opts_.budget_min_retries + earned - retries;
}

RetryPolicy::Bucket& RetryPolicy::CurrentBucket(MonoMs now) {
  int64_t slot = std::max<MonoMs>(now, 0) / SliceMs();
  Bucket& b = buckets_[static_cast<size_t>(slot % kBuckets)];
  if (b.slot != slot) b = Bucket{slot, 0, 0};
  return b;
}

int64_t RetryPolicy::SliceMs() const {
  return std::max<int64_t>(1, opts_.budget_window_ms / kBuckets);
}

}  // namespace haven::lb
