#include "demo/registry_client.h"

#include <fmt/format.h>
#include <boost/json.hpp>

namespace haven::demo {

namespace json = boost::json;

std::string TtlCheckId(const std::string& instance_id) { return "ttl:" + instance_id; }
std::string HttpCheckId(const std::string& instance_id) { return "http:" + instance_id; }

RegistryClient::RegistryClient(std::vector<std::string> urls, int64_t timeout_ms)
    : urls_(std::move(urls)) {
  for (const std::string& u : urls_)
    clients_.push_back(std::make_unique<net::HttpClient>(u, timeout_ms));
}

Result<net::HttpClientResult> RegistryClient::Request(std::string_view method,
                                                      std::string_view target,
                                                      std::string_view body) {
  if (clients_.empty()) return Status::InvalidArgument("no registry address");
  Status last = Status::Unavailable("no registry answered");
  for (size_t tried = 0; tried < clients_.size(); ++tried) {
    size_t i = (current_ + tried) % clients_.size();
    auto r = clients_[i]->Request(method, target, body);
    if (r.ok() && r->status < 500) {
      current_ = i;
      return r;
    }
    last = r.ok() ? Status::Unavailable(fmt::format("{} {}: HTTP {} {}", method, target, r->status,
                                                    r->body.substr(0, 200)))
                  : r.status();
  }
  current_ = (current_ + 1) % clients_.size();
  return last;
}

namespace {
Status ExpectOk(const Result<net::HttpClientResult>& r, std::string_view what) {
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return Status::Unavailable(
        fmt::format("{}: HTTP {} {}", what, r->status, r->body.substr(0, 200)));
  }
  return Status::Ok();
}
}  // namespace

Status RegistryClient::Register(const std::string& service, const std::string& id, int port,
                                int64_t ttl_ms, int64_t check_interval_ms) {
  json::object ttl{{"CheckID", TtlCheckId(id)},
                   {"TTL", fmt::format("{}ms", ttl_ms)},
                   {"Status", "passing"},
                   {"DeregisterCriticalServiceAfter", "1m"}};
  json::object http{{"CheckID", HttpCheckId(id)},
                    {"HTTP", fmt::format("http://127.0.0.1:{}/health", port)},
                    {"Interval", fmt::format("{}ms", check_interval_ms)},
                    {"Timeout", fmt::format("{}ms", check_interval_ms)},
                    {"Status", "passing"}};
  json::object body{{"Name", service},
                    {"ID", id},
                    {"Address", "127.0.0.1"},
                    {"Port", port},
                    {"Checks", json::array{ttl, http}}};
  return ExpectOk(Request("PUT", "/v1/agent/service/register", json::serialize(body)),
                  "register " + id);
}

Status RegistryClient::Heartbeat(const std::string& id) {
  return ExpectOk(Request("PUT", "/v1/agent/check/pass/" + TtlCheckId(id)), "heartbeat " + id);
}

Status RegistryClient::Deregister(const std::string& id) {
  return ExpectOk(Request("PUT", "/v1/agent/service/deregister/" + id), "deregister " + id);
}

Result<std::set<std::string>> RegistryClient::Passing(const std::string& service) {
  auto r = Request("GET", "/v1/health/service/" + service + "?passing");
  if (Status s = ExpectOk(r, "health " + service); !s.ok()) return s;
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  if (ec || !v.is_array()) return Status::IoError("health " + service + ": not a JSON array");
  std::set<std::string> ids;
  for (const json::value& e : v.get_array()) {
    const json::object* o = e.if_object();
    const json::value* svc = o ? o->if_contains("Service") : nullptr;
    const json::value* id = svc && svc->is_object() ? svc->get_object().if_contains("ID") : nullptr;
    if (id && id->is_string()) ids.insert(std::string(id->get_string()));
  }
  return ids;
}

Result<std::string> RegistryClient::LeaderRaftAddress() {
  auto r = Request("GET", "/v1/status/leader");
  if (Status s = ExpectOk(r, "leader"); !s.ok()) return s;
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  if (ec || !v.is_string()) return Status::IoError("leader: not a JSON string");
  return std::string(v.get_string());
}

}  // namespace haven::demo
