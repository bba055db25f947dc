// Balancer: picks an upstream endpoint per attempt under one of the load-balancing policies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::lb {

enum class Policy { kRoundRobin, kLeastRequest, kEwma, kRingHash, kRandom };
// Accepts "round_robin|least_request|ewma|ring_hash|random"; anything else is InvalidArgument.
Result<Policy> ParsePolicy(std::string_view name);
std::string_view PolicyName(Policy p);

// Endpoint lists longer than this are truncated by SetEndpoints (bounds memory and ring size).
inline constexpr size_t kMaxEndpoints = 10'000;

struct PickContext {
  MonoMs now = 0;
  // ring_hash key (the shell hashes a header or client address); absent -> random.
  std::optional<uint64_t> hash;
  // nullptr = all; false for ejected, draining, full, or already-tried endpoints.
  std::function<bool(size_t)> eligible;
};

// Picks endpoints; tracks what the policy needs (outstanding requests, latency). Not thread-safe:
// each proxy worker owns its own balancer (share-nothing).
class Balancer {
 public:
  virtual ~Balancer() = default;
  // Replaces the endpoint list. State (outstanding counts, EWMA) is kept for ids still present;
  // ring_hash rebuilds its ring so that only keys of removed/added endpoints move.
  virtual void SetEndpoints(std::vector<Endpoint> endpoints) = 0;
  const std::vector<Endpoint>& endpoints() const { return endpoints_; }
  // Index into endpoints(), or nullopt when no eligible endpoint exists.
  virtual std::optional<size_t> Pick(const PickContext& ctx) = 0;
  // The shell reports every attempt: started, then finished with its latency and whether it failed.
  // Indexes refer to the current endpoints(); an out-of-range index is ignored. After SetEndpoints
  // the shell must translate indexes of attempts in flight (by id) or drop their reports.
  virtual void OnStart(size_t index, MonoMs now);
  virtual void OnFinish(size_t index, MonoMs now, int64_t latency_us, bool failed);
  int64_t outstanding(size_t index) const;

 protected:
  // Installs the new list (deduplicated by id, truncated to kMaxEndpoints) and carries outstanding
  // counts over by id. Returns, per new index, the old index of the same id (if any), so a
  // subclass can carry its own state over.
  std::vector<std::optional<size_t>> ReplaceEndpoints(std::vector<Endpoint> endpoints);
  bool IsEligible(const PickContext& ctx, size_t index) const {
    return !ctx.eligible || ctx.eligible(index);
  }

  std::vector<Endpoint> endpoints_;
  std::vector<int64_t> outstanding_;
};

std::unique_ptr<Balancer> MakeBalancer(Policy policy, uint64_t seed);

}  // namespace haven::lb
