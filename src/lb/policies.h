// Internal to src/lb: the concrete balancers behind MakeBalancer and the helpers they share.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "lb/balancer.h"

namespace haven::lb::internal {

std::unique_ptr<Balancer> MakeRoundRobin();
std::unique_ptr<Balancer> MakeLeastRequest(uint64_t seed);
std::unique_ptr<Balancer> MakeEwma(uint64_t seed);
std::unique_ptr<Balancer> MakeRingHash(uint64_t seed);
std::unique_ptr<Balancer> MakeRandom(uint64_t seed);

// Uniform in [0, n); n > 0.
size_t UniformIndex(std::mt19937_64& rng, size_t n);

// Weighted random choice among eligible endpoints, or nullopt when none is eligible.
std::optional<size_t> PickWeightedRandom(const std::vector<Endpoint>& eps, const PickContext& ctx,
                                         std::mt19937_64& rng);

// Two distinct eligible endpoints, each drawn with probability proportional to its weight (the
// same one twice when only one is eligible), for power-of-two-choices policies. Weighted sampling
// makes weights hold when endpoints are idle; the cost comparison (divided by weight) keeps them
// under load. `scratch` is reused to avoid allocating per pick.
std::optional<std::pair<size_t, size_t>> PickTwo(const std::vector<Endpoint>& eps,
                                                 const PickContext& ctx, std::mt19937_64& rng,
                                                 std::vector<size_t>& scratch);

// A strong 64-bit mixer (splitmix64 finalizer): spreads weak keys evenly over the ring.
uint64_t Mix64(uint64_t x);

}  // namespace haven::lb::internal
