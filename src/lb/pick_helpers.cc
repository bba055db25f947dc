// Random choices shared by the policies: weighted random, two-choice sampling, key mixing.
#include "lb/policies.h"

namespace haven::lb::internal {

size_t UniformIndex(std::mt19937_64& rng, size_t n) {
  return std::uniform_int_distribution<size_t>(0, n - 1)(rng);
}

std::optional<size_t> PickWeightedRandom(const std::vector<Endpoint>& eps, const PickContext& ctx,
                                         std::mt19937_64& rng) {
  // Weights are <= kMaxWeight and endpoints <= kMaxEndpoints, so the sum fits easily.
  int64_t total = 0;
  for (size_t i = 0; i < eps.size(); ++i) {
    if (!ctx.eligible || ctx.eligible(i)) total += EffectiveWeight(eps[i]);
  }
  if (total == 0) return std::nullopt;
  int64_t target = std::uniform_int_distribution<int64_t>(0, total - 1)(rng);
  for (size_t i = 0; i < eps.size(); ++i) {
    if (ctx.eligible && !ctx.eligible(i)) continue;
    target -= EffectiveWeight(eps[i]);
    if (target < 0) return i;
  }
  return std::nullopt;  // unreachable unless `eligible` changes its answers mid-pick
}

namespace {

// Weighted draw among `candidates`, leaving out position `skip` (or none when skip >= size).
size_t DrawWeighted(const std::vector<Endpoint>& eps, const std::vector<size_t>& candidates,
                    size_t skip, std::mt19937_64& rng) {
  int64_t total = 0;
  for (size_t k = 0; k < candidates.size(); ++k) {
    if (k != skip) total += EffectiveWeight(eps[candidates[k]]);
  }
  int64_t target = std::uniform_int_distribution<int64_t>(0, total - 1)(rng);
  for (size_t k = 0; k < candidates.size(); ++k) {
    if (k == skip) continue;
    target -= EffectiveWeight(eps[candidates[k]]);
    if (target < 0) return k;
  }
  return skip == 0 ? 1 : 0;  // unreachable: the weights add up to total
}

}  // namespace

std::optional<std::pair<size_t, size_t>> PickTwo(const std::vector<Endpoint>& eps,
                                                 const PickContext& ctx, std::mt19937_64& rng,
                                                 std::vector<size_t>& scratch) {
  scratch.clear();
  for (size_t i = 0; i < eps.size(); ++i) {
    if (!ctx.eligible || ctx.eligible(i)) scratch.push_back(i);
  }
  if (scratch.empty()) return std::nullopt;
  if (scratch.size() == 1) return std::make_pair(scratch[0], scratch[0]);
  size_t a = DrawWeighted(eps, scratch, scratch.size(), rng);
  size_t b = DrawWeighted(eps, scratch, a, rng);
  return std::make_pair(scratch[a], scratch[b]);
}

uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace haven::lb::internal
