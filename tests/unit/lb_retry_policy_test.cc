// Retry decisions: the failover table of issue 3, attempts, deadline, budget, backoff bounds.
#include "lb/retry_policy.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace haven::lb {
namespace {

constexpr MonoMs kNow = 1'000'000;
constexpr MonoMs kFar = kNow + 60'000;

RequestTraits Idempotent() { return {.idempotent = true, .body_buffered = true}; }
RequestTraits NonIdempotent() { return {.idempotent = false, .body_buffered = true}; }
AttemptResult Fail(AttemptFailure f, bool sent, int status = 0) { return {f, sent, status}; }

RetryOptions NoBudgetLimit() {
  RetryOptions o;
  o.budget_min_retries = 1'000'000;
  return o;
}

TEST(RetryPolicy, ActiveFailoverAnyMethodNoDelay) {
  RetryPolicy p(NoBudgetLimit(), 1);
  for (auto req : {Idempotent(), NonIdempotent()}) {
    auto d = p.Decide(req, Fail(AttemptFailure::kConnectFailed, false), 1, kNow, kFar);
    EXPECT_TRUE(d.retry) << d.reason;
    EXPECT_EQ(d.delay_ms, 0);
    d = p.Decide(req, Fail(AttemptFailure::kClosedBeforeResponse, false), 1, kNow, kFar);
    EXPECT_TRUE(d.retry) << d.reason;
    EXPECT_EQ(d.delay_ms, 0);
  }
}

TEST(RetryPolicy, AfterBytesSentOnlyIdempotent) {
  RetryPolicy p(NoBudgetLimit(), 1);
  auto closed = Fail(AttemptFailure::kClosedBeforeResponse, true);
  EXPECT_TRUE(p.Decide(Idempotent(), closed, 1, kNow, kFar).retry);
  auto d = p.Decide(NonIdempotent(), closed, 1, kNow, kFar);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("idempotent"), std::string::npos);
  EXPECT_FALSE(
      p.Decide(NonIdempotent(), Fail(AttemptFailure::kTimeout, true), 1, kNow, kFar).retry);
  EXPECT_FALSE(
      p.Decide(NonIdempotent(), Fail(AttemptFailure::kStatus, true, 503), 1, kNow, kFar).retry);
  EXPECT_FALSE(
      p.Decide(NonIdempotent(), Fail(AttemptFailure::kBadGateway, true), 1, kNow, kFar).retry);
  EXPECT_TRUE(p.Decide(Idempotent(), Fail(AttemptFailure::kBadGateway, true), 1, kNow, kFar).retry);
}

TEST(RetryPolicy, UnbufferedBodyIsNeverReplayed) {
  RetryPolicy p(NoBudgetLimit(), 1);
  RequestTraits req{.idempotent = true, .body_buffered = false};
  EXPECT_FALSE(p.Decide(req, Fail(AttemptFailure::kConnectFailed, false), 1, kNow, kFar).retry);
}

TEST(RetryPolicy, WaitBasedOnlyFor502To504AndTimeout) {
  RetryOptions o = NoBudgetLimit();
  o.backoff_base_ms = 100;
  o.backoff_max_ms = 100;
  RetryPolicy p(o, 3);
  for (int status : {502, 503, 504}) {
    auto d = p.Decide(Idempotent(), Fail(AttemptFailure::kStatus, true, status), 1, kNow, kFar);
    EXPECT_TRUE(d.retry) << status;
    EXPECT_GE(d.delay_ms, 0);
    EXPECT_LE(d.delay_ms, 100);
  }
  for (int status : {500, 501, 429, 404, 200}) {
    auto d = p.Decide(Idempotent(), Fail(AttemptFailure::kStatus, true, status), 1, kNow, kFar);
    EXPECT_FALSE(d.retry) << status;
  }
  EXPECT_TRUE(p.Decide(Idempotent(), Fail(AttemptFailure::kTimeout, true), 1, kNow, kFar).retry);
  // Backoff is jittered: over many decisions the delays are not all equal.
  std::vector<int64_t> delays;
  for (int i = 0; i < 50; ++i) {
    delays.push_back(
        p.Decide(Idempotent(), Fail(AttemptFailure::kStatus, true, 503), 1, kNow, kFar).delay_ms);
  }
  EXPECT_NE(*std::min_element(delays.begin(), delays.end()),
            *std::max_element(delays.begin(), delays.end()));
}

TEST(RetryPolicy, NeverPastMaxAttempts) {
  RetryOptions o = NoBudgetLimit();
  o.max_attempts = 3;
  RetryPolicy p(o, 1);
  auto r = Fail(AttemptFailure::kConnectFailed, false);
  EXPECT_TRUE(p.Decide(Idempotent(), r, 1, kNow, kFar).retry);
  EXPECT_TRUE(p.Decide(Idempotent(), r, 2, kNow, kFar).retry);
  auto d = p.Decide(Idempotent(), r, 3, kNow, kFar);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("attempts"), std::string::npos);
}

// A worker holding many instances dies: a request's tries meet dead instances (refused, or closed
// before any answer) before a live one. Those tries do not use up attempts, up to max_attempts of
// them; a try on a live instance that timed out or answered 503 still counts.
TEST(RetryPolicy, TriesOnDeadInstancesDoNotUseUpAttempts) {
  RetryOptions o = NoBudgetLimit();
  o.max_attempts = 3;
  RetryPolicy p(o, 1);
  // Two slow tries counted (attempts 1 and 2), then the third attempt's instance dies mid-request.
  AttemptResult closed = Fail(AttemptFailure::kClosedBeforeResponse, true);
  closed.instance_dead = true;
  closed.dead_tries = 1;
  auto d = p.Decide(Idempotent(), closed, 3, kNow, kFar);
  EXPECT_TRUE(d.retry) << d.reason;
  EXPECT_EQ(d.delay_ms, 0);
  // The same failure not known to be a death (e.g. a reset after a connect timeout) counts.
  closed.instance_dead = false;
  EXPECT_FALSE(p.Decide(Idempotent(), closed, 3, kNow, kFar).retry);

  // Dead tries are bounded: at most max_attempts of them beyond the counted ones.
  AttemptResult refused = Fail(AttemptFailure::kConnectFailed, false);
  refused.instance_dead = true;
  for (int dead = 1; dead <= 3; ++dead) {
    refused.dead_tries = dead;
    EXPECT_TRUE(p.Decide(Idempotent(), refused, 3, kNow, kFar).retry) << dead;
  }
  refused.dead_tries = 4;
  d = p.Decide(Idempotent(), refused, 3, kNow, kFar);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("attempts"), std::string::npos);

  // Still never after the request reached an instance, for a non-idempotent request.
  closed.instance_dead = true;
  EXPECT_FALSE(p.Decide(NonIdempotent(), closed, 1, kNow, kFar).retry);

  // max_attempts 1 means no retry at all, dead instance or not.
  RetryOptions one = NoBudgetLimit();
  one.max_attempts = 1;
  RetryPolicy q(one, 1);
  refused.dead_tries = 1;
  EXPECT_FALSE(q.Decide(Idempotent(), refused, 1, kNow, kFar).retry);
}

TEST(RetryPolicy, NeverPastDeadline) {
  RetryOptions o = NoBudgetLimit();
  o.backoff_base_ms = 50;
  o.backoff_max_ms = 50;
  RetryPolicy p(o, 1);
  auto d = p.Decide(Idempotent(), Fail(AttemptFailure::kConnectFailed, false), 1, kNow, kNow);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("deadline"), std::string::npos);
  // A backoff that would end past the deadline is refused too.
  for (int i = 0; i < 50; ++i) {
    auto w = p.Decide(Idempotent(), Fail(AttemptFailure::kStatus, true, 503), 1, kNow, kNow + 30);
    if (w.retry) {
      EXPECT_LT(kNow + w.delay_ms, kNow + 30);
    }
  }
}

TEST(RetryPolicy, BudgetLimitsRetriesToAShareOfRequests) {
  RetryOptions o;
  o.budget_ratio = 0.2;
  o.budget_min_retries = 2;
  o.budget_window_ms = 10'000;
  RetryPolicy p(o, 1);
  for (int i = 0; i < 100; ++i) p.OnRequest(kNow);
  EXPECT_EQ(p.budget_remaining(kNow), 22);
  auto r = Fail(AttemptFailure::kConnectFailed, false);
  int granted = 0;
  for (int i = 0; i < 100; ++i) granted += p.Decide(Idempotent(), r, 1, kNow, kFar).retry;
  EXPECT_EQ(granted, 22);
  auto d = p.Decide(Idempotent(), r, 1, kNow, kFar);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("budget"), std::string::npos);
  // After the window has passed, requests and retries are forgotten: only the minimum remains.
  EXPECT_EQ(p.budget_remaining(kNow + 10'000), 2);
  EXPECT_TRUE(p.Decide(Idempotent(), r, 1, kNow + 10'000, kFar + 10'000).retry);
}

TEST(RetryPolicy, RefusedRetriesDoNotConsumeBudget) {
  RetryOptions o;
  o.budget_ratio = 0;
  o.budget_min_retries = 1;
  RetryPolicy p(o, 1);
  EXPECT_FALSE(
      p.Decide(NonIdempotent(), Fail(AttemptFailure::kTimeout, true), 1, kNow, kFar).retry);
  EXPECT_EQ(p.budget_remaining(kNow), 1);
  EXPECT_TRUE(
      p.Decide(NonIdempotent(), Fail(AttemptFailure::kConnectFailed, false), 1, kNow, kFar).retry);
  EXPECT_EQ(p.budget_remaining(kNow), 0);
}

TEST(RetryPolicy, BackoffWithinFullJitterBounds) {
  RetryOptions o;
  o.backoff_base_ms = 25;
  o.backoff_max_ms = 250;
  RetryPolicy p(o, 77);
  for (int attempt = 1; attempt <= 40; ++attempt) {
    int64_t cap = std::min<int64_t>(250, attempt > 10 ? 250 : 25LL << (attempt - 1));
    int64_t max_seen = 0;
    for (int i = 0; i < 500; ++i) {
      int64_t d = p.BackoffMs(attempt);
      ASSERT_GE(d, 0);
      ASSERT_LE(d, cap) << "attempt " << attempt;
      max_seen = std::max(max_seen, d);
    }
    EXPECT_GT(max_seen, cap / 2) << "attempt " << attempt;  // the range is actually used
  }
  EXPECT_LE(p.BackoffMs(1'000'000), 250);
  EXPECT_GE(p.BackoffMs(-5), 0);
}

TEST(RetryPolicy, IdempotentMethods) {
  for (const char* m : {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}) {
    EXPECT_TRUE(IsIdempotentMethod(m)) << m;
  }
  for (const char* m : {"POST", "PATCH", "CONNECT", "get", ""})
    EXPECT_FALSE(IsIdempotentMethod(m)) << m;
}

TEST(RetryPolicy, ValidatesAndClampsOptions) {
  EXPECT_TRUE(ValidateRetryOptions(RetryOptions{}).ok());
  RetryOptions bad;
  bad.max_attempts = 0;
  EXPECT_FALSE(ValidateRetryOptions(bad).ok());
  bad = {};
  bad.backoff_max_ms = 1;  // below base
  EXPECT_FALSE(ValidateRetryOptions(bad).ok());
  bad = {};
  bad.budget_ratio = -0.1;
  EXPECT_FALSE(ValidateRetryOptions(bad).ok());
  bad = {};
  bad.budget_window_ms = 0;
  EXPECT_FALSE(ValidateRetryOptions(bad).ok());
  RetryOptions wild;
  wild.max_attempts = 1'000'000;
  wild.budget_window_ms = 0;
  RetryPolicy p(wild, 1);
  EXPECT_EQ(p.options().max_attempts, 10);
  EXPECT_GE(p.options().budget_window_ms, 100);
}

}  // namespace
}  // namespace haven::lb
