// Balancer base: endpoint bookkeeping shared by every policy, policy names, and the factory.
#include "lb/balancer.h"

#include <string>
#include <unordered_map>
#include <unordered_set>

#include "lb/policies.h"

namespace haven::lb {
namespace {

struct PolicyNameEntry {
  Policy policy;
  std::string_view name;
};
constexpr PolicyNameEntry kPolicyNames[] = {
    {Policy::kRoundRobin, "round_robin"},
    {Policy::kLeastRequest, "least_request"},
    {Policy::kEwma, "ewma"},
    {Policy::kRingHash, "ring_hash"},
    {Policy::kRandom, "random"},
};

}  // namespace

Result<Policy> ParsePolicy(std::string_view name) {
  for (const auto& e : kPolicyNames) {
    if (e.name == name) return e.policy;
  }
  constexpr size_t kMaxEcho = 64;  // do not echo an unbounded input back
  return Status::InvalidArgument("unknown load-balancing policy '" +
                                 std::string(name.substr(0, kMaxEcho)) +
                                 "' (want round_robin, least_request, ewma, ring_hash or random)");
}

std::string_view PolicyName(Policy p) {
  for (const auto& e : kPolicyNames) {
    if (e.policy == p) return e.name;
  }
  return "unknown";
}

void Balancer::OnStart(size_t index, MonoMs /*now*/) {
  if (index < outstanding_.size()) ++outstanding_[index];
}

void Balancer::OnFinish(size_t index, MonoMs /*now*/, int64_t /*latency_us*/, bool /*failed*/) {
  // Clamped at zero: a report that straddled SetEndpoints must not drive the count negative.
  if (index < outstanding_.size() && outstanding_[index] > 0) --outstanding_[index];
}

int64_t Balancer::outstanding(size_t index) const {
  return index < outstanding_.size() ? outstanding_[index] : 0;
}

std::vector<std::optional<size_t>> Balancer::ReplaceEndpoints(std::vector<Endpoint> endpoints) {
  std::unordered_map<std::string, size_t> old_index;
  for (size_t i = 0; i < endpoints_.size(); ++i) old_index.emplace(endpoints_[i].id, i);

  std::vector<Endpoint> unique;
  std::unordered_set<std::string> seen;
  for (auto& e : endpoints) {
    if (unique.size() >= kMaxEndpoints) break;
    if (seen.insert(e.id).second) unique.push_back(std::move(e));
  }

  std::vector<std::optional<size_t>> carried(unique.size());
  std::vector<int64_t> outstanding(unique.size(), 0);
  for (size_t i = 0; i < unique.size(); ++i) {
    auto it = old_index.find(unique[i].id);
    if (it == old_index.end()) continue;
    carried[i] = it->second;
    outstanding[i] = outstanding_[it->second];
  }
  endpoints_ = std::move(unique);
  outstanding_ = std::move(outstanding);
  return carried;
}

std::unique_ptr<Balancer> MakeBalancer(Policy policy, uint64_t seed) {
  switch (policy) {
    case Policy::kRoundRobin:
      return internal::MakeRoundRobin();
    case Policy::kLeastRequest:
      return internal::MakeLeastRequest(seed);
    case Policy::kEwma:
      return internal::MakeEwma(seed);
    case Policy::kRingHash:
      return internal::MakeRingHash(seed);
    case Policy::kRandom:
      return internal::MakeRandom(seed);
  }
  return internal::MakeLeastRequest(seed);  // unreachable for valid enum values
}

}  // namespace haven::lb
