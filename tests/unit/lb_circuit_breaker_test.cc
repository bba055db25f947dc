// Circuit breaker: per-endpoint limits on pending requests and connections.
#include "lb/circuit_breaker.h"

#include <gtest/gtest.h>

namespace haven::lb {
namespace {

TEST(CircuitBreaker, RefusesBeyondMaxPendingPerEndpoint) {
  CircuitBreaker cb({.max_connections = 10, .max_pending = 2});
  EXPECT_TRUE(cb.TryAcquire("a"));
  EXPECT_TRUE(cb.TryAcquire("a"));
  EXPECT_TRUE(cb.IsFull("a"));
  EXPECT_FALSE(cb.TryAcquire("a"));
  EXPECT_EQ(cb.pending("a"), 2);
  EXPECT_TRUE(cb.TryAcquire("b"));  // limits are per endpoint
  cb.Release("a");
  EXPECT_FALSE(cb.IsFull("a"));
  EXPECT_TRUE(cb.TryAcquire("a"));
}

TEST(CircuitBreaker, ConnectionsCountedSeparately) {
  CircuitBreaker cb({.max_connections = 1, .max_pending = 5});
  EXPECT_TRUE(cb.TryAcquireConnection("a"));
  EXPECT_FALSE(cb.TryAcquireConnection("a"));
  EXPECT_TRUE(cb.TryAcquire("a"));
  EXPECT_EQ(cb.connections("a"), 1);
  cb.ReleaseConnection("a");
  EXPECT_TRUE(cb.TryAcquireConnection("a"));
}

TEST(CircuitBreaker, ExtraReleasesAreHarmless) {
  CircuitBreaker cb({.max_connections = 1, .max_pending = 1});
  cb.Release("nobody");
  cb.ReleaseConnection("nobody");
  EXPECT_TRUE(cb.TryAcquire("a"));
  cb.Release("a");
  cb.Release("a");
  EXPECT_EQ(cb.pending("a"), 0);
  EXPECT_TRUE(cb.TryAcquire("a"));
  EXPECT_FALSE(cb.TryAcquire("a"));
}

TEST(CircuitBreaker, ZeroLimitsStillAllowOne) {
  CircuitBreaker cb({.max_connections = 0, .max_pending = -3});
  EXPECT_TRUE(cb.TryAcquire("a"));
  EXPECT_FALSE(cb.TryAcquire("a"));
  EXPECT_TRUE(cb.TryAcquireConnection("a"));
}

}  // namespace
}  // namespace haven::lb
