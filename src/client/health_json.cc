#include "client/health_json.h"

#include <algorithm>
#include <charconv>

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_set>

#include <boost/json.hpp>

namespace haven::client {
namespace {

namespace json = boost::json;

// Bounds what a hostile or broken registry can make us allocate.
constexpr size_t kMaxBodyBytes = 64 << 20;

std::string StringField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (!v || !v->is_string()) return {};
  return std::string(v->as_string());
}

const json::object* ObjectField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v && v->is_object() ? &v->as_object() : nullptr;
}

int64_t IntField(const json::object& o, std::string_view key, int64_t fallback) {
  const json::value* v = o.if_contains(key);
  if (!v) return fallback;
  if (v->is_int64()) return v->as_int64();
  if (v->is_uint64()) return v->as_uint64() > INT64_MAX ? INT64_MAX : int64_t(v->as_uint64());
  if (v->is_double()) return static_cast<int64_t>(v->as_double());
  return fallback;
}

// One health entry -> endpoint; false when it has no usable address or port.
bool ToEndpoint(const json::object& entry, lb::Endpoint& out, std::string& node_name) {
  const json::object* service = ObjectField(entry, "Service");
  if (!service) return false;
  const json::object* node = ObjectField(entry, "Node");
  node_name = node ? StringField(*node, "Node") : "";
  out.host = StringField(*service, "Address");
  if (out.host.empty() && node) out.host = StringField(*node, "Address");
  int64_t port = IntField(*service, "Port", 0);
  if (out.host.empty() || port < 1 || port > 65535) return false;
  out.port = static_cast<uint16_t>(port);
  out.id = StringField(*service, "ID");
  if (out.id.empty()) out.id = out.host + ":" + std::to_string(port);
  int64_t weight = 1;
  if (const json::object* w = ObjectField(*service, "Weights")) weight = IntField(*w, "Passing", 1);
  out.weight = static_cast<int>(std::clamp<int64_t>(weight, 1, lb::kMaxWeight));
  return true;
}

}  // namespace

Result<std::vector<lb::Endpoint>> ParseHealthEntries(std::string_view text) {
  if (text.size() > kMaxBodyBytes) return Status::TooLarge("health answer larger than 64 MiB");
  json::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec) return Status::InvalidArgument("health answer is not JSON: " + ec.message());
  if (!root.is_array()) return Status::InvalidArgument("health answer is not a JSON array");
  std::vector<lb::Endpoint> out;
  std::unordered_set<std::string> ids;
  for (const json::value& v : root.as_array()) {
    if (out.size() >= kMaxHealthEntries) break;
    if (!v.is_object()) continue;
    lb::Endpoint ep;
    std::string node_name;
    if (!ToEndpoint(v.as_object(), ep, node_name)) continue;
    // Service IDs are unique per node only: qualify a repeated one with its node.
    if (ids.count(ep.id)) ep.id = node_name + "/" + ep.id;
    if (!ids.insert(ep.id).second) continue;
    out.push_back(std::move(ep));
  }
  return out;
}

std::string HealthQueryTarget(const std::string& service, uint64_t index, int64_t wait_ms) {
  std::string t = "/v1/health/service/" + service + "?passing";
  if (index > 0) t += "&index=" + std::to_string(index) + "&wait=" + std::to_string(wait_ms) + "ms";
  return t;
}

uint64_t ParseConsulIndex(const std::string* header) {
  uint64_t index = 0;
  if (header) std::from_chars(header->data(), header->data() + header->size(), index);
  return index;
}

bool SameEndpoints(const std::vector<lb::Endpoint>& a, const std::vector<lb::Endpoint>& b) {
  return std::equal(
      a.begin(), a.end(), b.begin(), b.end(), [](const lb::Endpoint& x, const lb::Endpoint& y) {
        return x.id == y.id && x.host == y.host && x.port == y.port && x.weight == y.weight;
      });
}

}  // namespace haven::client
