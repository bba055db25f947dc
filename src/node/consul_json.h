// The Consul HTTP API's JSON shapes: request bodies -> registry commands, registry state ->
// answers. One mapping per type, here and nowhere else, so every handler speaks exactly Consul's
// dialect.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "base/status.h"
#include "registry/registry.pb.h"

namespace haven::node::consul {

namespace pb = haven::registry::pb;

// Parsers: every error is Status::InvalidArgument with a one-line message in Consul's style
// ("Request decode failed: ...", "Missing service name", "Invalid check: ..."). Keys match
// case-insensitively, as Go's encoding/json does; unknown keys are ignored.

struct ServiceRegistration {
  pb::Service service;
  std::vector<pb::Check> checks;
};
// PUT /v1/agent/service/register. Node fields are filled with node_name.
Result<ServiceRegistration> ParseAgentServiceRegister(std::string_view body,
                                                      const std::string& node_name);

// PUT /v1/agent/check/update/:id body {"Status": "...", "Output": "..."}.
struct CheckUpdate {
  std::string status;
  std::string output;
};
Result<CheckUpdate> ParseCheckUpdate(std::string_view body);

// PUT /v1/catalog/register: register_service when a Service is given, else register_node.
Result<pb::Command> ParseCatalogRegister(std::string_view body);

// PUT /v1/catalog/deregister: {Node, ServiceID, CheckID, Datacenter}.
Result<pb::Deregister> ParseCatalogDeregister(std::string_view body);

// PUT /v1/session/create (body may be empty). TTL is "" / "0s" (none) or 1s..86400s: Consul wants
// >= 10s, we allow shorter so tests run fast. LockDelay is a duration string, or a number that is
// nanoseconds unless below 1000, then seconds (Consul's own fixup); default 15s, at most 60s.
// Checks / NodeChecks default to ["serfHealth"] only when both are absent. The id is left empty.
// PUT /v1/txn body: [{"KV": {"Verb", "Key", "Value" (base64), "Flags", "Index", "Session"}}, ...].
// Write verbs only: set, cas, lock, unlock, delete, delete-cas, delete-tree (read verbs are refused
// with a clear message). At most registry::kMaxTxnOps operations.
Result<pb::Txn> ParseTxn(std::string_view body);

Result<pb::Session> ParseSessionCreate(std::string_view body, const std::string& node_name);

// Renderers: field names and shapes exactly as Consul answers.
boost::json::object AgentService(const pb::Service& s);  // values of GET /v1/agent/services
boost::json::object HealthCheck(const pb::Check& c);     // /v1/agent/checks, /v1/health/checks
boost::json::object CatalogNode(const pb::Node& n);      // /v1/catalog/nodes items
boost::json::object CatalogService(const pb::Node& n,
                                   const pb::Service& s);  // /v1/catalog/service/:name items
boost::json::object HealthServiceEntry(const pb::Node& n, const pb::Service& s,
                                       const std::vector<const pb::Check*>& checks);
boost::json::object KVEntry(const pb::KVEntry& e);  // Value is base64, null when empty
boost::json::object Session(const pb::Session& s);
std::string ToJson(const boost::json::value& v);  // compact serialisation

}  // namespace haven::node::consul
