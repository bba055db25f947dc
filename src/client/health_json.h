// Health JSON: turns a /v1/health/service/NAME answer into the endpoints the balancer uses.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "lb/balancer.h"
#include "lb/endpoint.h"

namespace haven::client {

// Entries beyond this many are dropped (bounds memory; same as the balancer's limit).
inline constexpr size_t kMaxHealthEntries = lb::kMaxEndpoints;

// id = Service.ID (or "host:port" when absent), host = Service.Address or else Node.Address,
// port = Service.Port (1..65535), weight = Service.Weights.Passing (default 1). Entries without a
// usable address or port are skipped; a body that is not a JSON array is InvalidArgument.
Result<std::vector<lb::Endpoint>> ParseHealthEntries(std::string_view json);

// The blocking query for a service's passing instances: after `index` (0: answer at once), waiting
// at most wait_ms.
std::string HealthQueryTarget(const std::string& service, uint64_t index, int64_t wait_ms);
// The X-Consul-Index header's value (0 when absent or not a number).
uint64_t ParseConsulIndex(const std::string* header);
// Same instances with the same addresses and weights, in the same order.
bool SameEndpoints(const std::vector<lb::Endpoint>& a, const std::vector<lb::Endpoint>& b);

}  // namespace haven::client
