#include "node/consul_api.h"

#include <algorithm>
#include <chrono>
#include <random>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/duration.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/uuid.h"
#include "node/consul_json.h"
#include "node/http_replies.h"

namespace haven::node {

namespace pb = registry::pb;
namespace json = boost::json;
using net::HttpRequest;
using net::HttpResponse;
using net::Responder;
using registry::Table;

namespace {

constexpr const char* kVersion = "1.15.0";  // the Consul API version whose behaviour we follow

HttpResponse Json(const json::value& v, uint64_t index = 0) {
  HttpResponse r;
  r.body = consul::ToJson(v);
  if (index > 0) r.headers.emplace_back("X-Consul-Index", std::to_string(index));
  return r;
}

HttpResponse Bool(bool v) { return Json(json::value(v)); }

// Consul never answers index 0: clients would treat it as "no blocking" and spin.
uint64_t ClientIndex(uint64_t index) { return std::max<uint64_t>(index, 1); }

std::vector<std::string> QueryAll(const HttpRequest& req, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& [k, v] : req.query) {
    if (k == name) out.push_back(v);
  }
  return out;
}

Result<uint64_t> QueryUint(const HttpRequest& req, std::string_view name, uint64_t dflt) {
  const std::string* v = req.Query(name);
  if (!v || v->empty()) return dflt;
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v->c_str(), &end, 10);
  if (*end != '\0' || errno != 0 || (*v)[0] == '-') {
    return Status::InvalidArgument(
        fmt::format("Invalid {} \"{}\": expected an unsigned integer", name, *v));
  }
  return static_cast<uint64_t>(n);
}

// A raft member id from ?id: 1 .. 2^62 (as --node-id).
Result<uint64_t> QueryMemberId(const HttpRequest& req, bool required) {
  auto id = QueryUint(req, "id", 0);
  if (!id.ok()) return id.status();
  if (*id == 0 && required) return Status::InvalidArgument("Missing id: the raft member id");
  if (*id > (uint64_t{1} << 62)) return Status::InvalidArgument("Invalid id: at most 2^62");
  return *id;
}

// HOST:PORT with a port from 1 to 65535 (the raft transport connects to it as given).
Status CheckRaftAddress(const std::string& addr) {
  auto colon = addr.rfind(':');
  if (addr.empty() || addr.size() > 256 || colon == std::string::npos || colon == 0) {
    return Status::InvalidArgument("Invalid address \"" + addr + "\": expected HOST:PORT");
  }
  std::string port = addr.substr(colon + 1);
  bool digits = !port.empty() && port.size() <= 5 &&
                std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || std::stoi(port) < 1 || std::stoi(port) > 65535) {
    return Status::InvalidArgument("Invalid address \"" + addr + "\": port must be 1 to 65535");
  }
  return Status::Ok();
}

bool Contains(const google::protobuf::RepeatedField<uint64_t>& ids, uint64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// GETs of the replicated state (catalog, health, KV, sessions) honour ?stale and ?consistent; the
// agent, status and operator endpoints answer from this node's own view.
bool ReadsReplicatedState(const std::string& route) {
  for (const char* p : {"/v1/catalog/", "/v1/health/", "/v1/kv/", "/v1/session/"}) {
    if (route.rfind(p, 0) == 0) return true;
  }
  return false;
}

enum class Consistency { kDefault, kStale, kConsistent };

Result<Consistency> ParseConsistency(const HttpRequest& req) {
  bool stale = req.Query("stale") != nullptr;
  bool consistent = req.Query("consistent") != nullptr;
  if (stale && consistent) {
    return Status::InvalidArgument(
        "Cannot specify ?stale with ?consistent, conflicting semantics.");
  }
  if (stale) return Consistency::kStale;
  return consistent ? Consistency::kConsistent : Consistency::kDefault;
}

// X-Haven-Request-Id: a client's id for one write, kept across its retries ("" when absent).
constexpr size_t kMaxRequestIdBytes = 128;

Result<std::string> ClientRequestId(const HttpRequest& req) {
  const std::string* id = req.Header("x-haven-request-id");
  if (!id) return std::string();
  bool printable = std::all_of(id->begin(), id->end(), [](char c) { return c >= ' ' && c < 127; });
  if (id->empty() || id->size() > kMaxRequestIdBytes || !printable) {
    return Status::InvalidArgument(fmt::format(
        "Invalid X-Haven-Request-Id: expected 1 to {} printable ASCII bytes", kMaxRequestIdBytes));
  }
  return *id;
}

bool AllPassing(const std::vector<const pb::Check*>& checks) {
  return std::all_of(checks.begin(), checks.end(),
                     [](const pb::Check* c) { return c->status() == "passing"; });
}

}  // namespace

ConsulApi::ConsulApi(RegistryNode& node, ConsulApiOptions opts)
    : node_(node), opts_(std::move(opts)) {
  routes_ = {
      {"GET", "/v1/agent/services", &ConsulApi::AgentServices},
      {"GET", "/v1/agent/checks", &ConsulApi::AgentChecks},
      {"GET", "/v1/agent/self", &ConsulApi::AgentSelf},
      {"GET", "/v1/agent/members", &ConsulApi::AgentMembers},
      {"PUT", "/v1/agent/service/register", &ConsulApi::AgentServiceRegister},
      {"PUT", "/v1/agent/service/deregister/", &ConsulApi::AgentServiceDeregister},
      {"PUT", "/v1/agent/check/pass/", &ConsulApi::AgentCheckPass},
      {"PUT", "/v1/agent/check/warn/", &ConsulApi::AgentCheckWarn},
      {"PUT", "/v1/agent/check/fail/", &ConsulApi::AgentCheckFail},
      {"PUT", "/v1/agent/check/update/", &ConsulApi::AgentCheckUpdate},
      {"GET", "/v1/agent/metrics", &ConsulApi::Metrics},
      {"GET", "/v1/catalog/services", &ConsulApi::CatalogServices},
      {"GET", "/v1/catalog/service/", &ConsulApi::CatalogService},
      {"GET", "/v1/catalog/nodes", &ConsulApi::CatalogNodes},
      {"GET", "/v1/catalog/node/", &ConsulApi::CatalogNode},
      {"PUT", "/v1/catalog/register", &ConsulApi::CatalogRegister},
      {"PUT", "/v1/catalog/deregister", &ConsulApi::CatalogDeregister},
      {"GET", "/v1/health/service/", &ConsulApi::HealthService},
      {"GET", "/v1/health/checks/", &ConsulApi::HealthChecks},
      {"GET", "/v1/health/state/", &ConsulApi::HealthState},
      {"GET", "/v1/health/node/", &ConsulApi::HealthNode},
      {"GET", "/v1/kv/", &ConsulApi::KvGet},
      {"PUT", "/v1/kv/", &ConsulApi::KvPut},
      {"DELETE", "/v1/kv/", &ConsulApi::KvDelete},
      {"PUT", "/v1/txn", &ConsulApi::Txn},
      {"PUT", "/v1/session/create", &ConsulApi::SessionCreate},
      {"PUT", "/v1/session/destroy/", &ConsulApi::SessionDestroy},
      {"PUT", "/v1/session/renew/", &ConsulApi::SessionRenew},
      {"GET", "/v1/session/info/", &ConsulApi::SessionInfo},
      {"GET", "/v1/session/list", &ConsulApi::SessionList},
      {"GET", "/v1/session/node/", &ConsulApi::SessionNode},
      {"GET", "/v1/status/leader", &ConsulApi::StatusLeader},
      {"GET", "/v1/status/peers", &ConsulApi::StatusPeers},
      {"GET", "/metrics", &ConsulApi::Metrics},
      {"GET", "/v1/operator/raft/configuration", &ConsulApi::OperatorRaftConfiguration},
      {"DELETE", "/v1/operator/raft/peer", &ConsulApi::OperatorRaftPeerRemove},
      {"PUT", "/v1/operator/raft/peer", &ConsulApi::OperatorRaftPeerAdd},
      {"PUT", "/v1/operator/raft/peer/address", &ConsulApi::OperatorRaftPeerAddress},
      {"PUT", "/v1/operator/raft/transfer-leader", &ConsulApi::OperatorRaftTransferLeader},
  };
}

void ConsulApi::Handle(const HttpRequest& req, Responder respond) {
  const Route* match = nullptr;
  bool path_known = false;
  std::string tail;
  // Consul accepts POST wherever it takes PUT.
  std::string method = req.method == "POST" ? "PUT" : req.method;
  if (method == "HEAD") method = "GET";
  for (const auto& r : routes_) {
    bool prefix = r.path.back() == '/';
    bool hit = prefix ? req.path.rfind(r.path, 0) == 0 : req.path == r.path;
    if (!hit) continue;
    path_known = true;
    if (r.method == method) {
      match = &r;
      tail = prefix ? req.path.substr(r.path.size()) : "";
      break;
    }
  }
  std::string endpoint = match ? match->path : (path_known ? "method_not_allowed" : "not_found");
  auto start = std::chrono::steady_clock::now();
  Responder timed = [respond = std::move(respond), endpoint, start](HttpResponse r) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    auto& reg = metrics::Registry::Default();
    reg.GetCounter("haven_http_requests_total", "HTTP requests by endpoint and status",
                   {{"endpoint", endpoint}, {"code", std::to_string(r.status)}})
        .Inc();
    reg.GetHistogram("haven_http_request_duration_seconds",
                     "HTTP request latency by endpoint (blocking queries include their wait)",
                     {{"endpoint", endpoint}})
        .Observe(secs);
    respond(std::move(r));
  };
  if (!match) {
    timed(path_known ? Text(405, "method " + req.method + " not allowed on " + req.path)
                     : Text(404, "no such endpoint: " + req.path));
    return;
  }
  if (method == "GET" && ReadsReplicatedState(match->path)) {
    return HandleRead(req, tail, match->handler, std::move(timed));
  }
  (this->*(match->handler))(req, tail, timed);
}

// Consul's three read modes. Default: the leader answers from its state; a follower first waits
// until it has applied what the leader had committed (a ReadIndex round trip), so a read on any
// node sees every write acknowledged before it. ?consistent: the leader, too, confirms with a
// quorum that it still leads. ?stale: any node answers at once from what it has.
void ConsulApi::HandleRead(const HttpRequest& req, const std::string& tail, Handler handler,
                           Responder respond) {
  auto mode = ParseConsistency(req);
  if (!mode.ok()) return respond(Error(mode.status()));
  const char* effective = *mode == Consistency::kStale        ? "stale"
                          : *mode == Consistency::kConsistent ? "consistent"
                                                              : "leader";
  Responder annotated = [this, respond = std::move(respond), effective](HttpResponse r) {
    if (r.status == 200) AddReadHeaders(r, effective);
    respond(std::move(r));
  };
  bool leads = node_.raft_status().node.role == raft::Role::kLeader;
  if (*mode == Consistency::kStale || (*mode == Consistency::kDefault && leads)) {
    return (this->*handler)(req, tail, annotated);
  }
  node_.ReadBarrier([this, req, tail, handler, annotated](const Status& s) mutable {
    if (!s.ok()) return annotated(Error(s));
    (this->*handler)(req, tail, annotated);
  });
}

void ConsulApi::AddReadHeaders(HttpResponse& r, const char* effective) const {
  RaftLogStatus st = node_.raft_status();
  r.headers.emplace_back("X-Consul-KnownLeader", st.node.leader != 0 ? "true" : "false");
  r.headers.emplace_back("X-Consul-LastContact",
                         std::to_string(std::max<int64_t>(st.last_leader_contact_ms, 0)));
  r.headers.emplace_back("X-Consul-Effective-Consistency", effective);
}

// ---------------------------------------------------------------- helpers

void ConsulApi::Blocking(const HttpRequest& req, Responder& respond,
                         const std::vector<Table>& tables, IndexFn index_fn, RenderFn render) {
  auto min_index = QueryUint(req, "index", 0);
  if (!min_index.ok()) return respond(Error(min_index.status()));
  int64_t wait_ms = opts_.default_wait_ms;
  if (const std::string* w = req.Query("wait"); w && !w->empty()) {
    auto parsed = ParseDurationMs(*w);
    if (!parsed.ok() || *parsed < 0) {
      return respond(Text(400, "Invalid wait time \"" + *w + "\""));
    }
    wait_ms = std::min(*parsed, opts_.max_wait_ms);
  }
  if (*min_index == 0 || index_fn() > *min_index) return respond(render());
  // Consul's jitter: up to wait/16 more, so that many watchers do not all return at once.
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  wait_ms += wait_ms / 16 > 0 ? static_cast<int64_t>(rng() % (wait_ms / 16)) : 0;
  node_.watches().Park(tables, *min_index, std::move(index_fn), wait_ms,
                       [respond, render = std::move(render)] { respond(render()); });
}

void ConsulApi::ProposeAndReply(const HttpRequest& req, pb::Command cmd, Responder& respond,
                                std::function<HttpResponse(const registry::ApplyResult&)> on_ok) {
  auto client_id = ClientRequestId(req);
  if (!client_id.ok()) return respond(Error(client_id.status()));
  node_.Propose(std::move(cmd), std::move(*client_id),
                [respond, on_ok = std::move(on_ok)](const Result<registry::ApplyResult>& r) {
                  if (!r.ok()) return respond(Error(r.status()));
                  respond(on_ok ? on_ok(*r) : Bool(r->success));
                });
}

// ---------------------------------------------------------------- agent

void ConsulApi::AgentServices(const HttpRequest&, const std::string&, Responder& respond) {
  json::object out;
  for (const auto* s : node_.state().NodeServices(node_.node_name())) {
    out[s->id()] = consul::AgentService(*s);
  }
  respond(Json(out));
}

void ConsulApi::AgentChecks(const HttpRequest&, const std::string&, Responder& respond) {
  json::object out;
  for (const auto* c : node_.state().NodeChecks(node_.node_name())) {
    if (c->id() == "serfHealth") continue;  // a cluster check, not an agent check
    out[c->id()] = consul::HealthCheck(*c);
  }
  respond(Json(out));
}

void ConsulApi::AgentSelf(const HttpRequest&, const std::string&, Responder& respond) {
  json::object config{{"Datacenter", "dc1"},
                      {"NodeName", node_.node_name()},
                      {"NodeID", ""},
                      {"Server", true},
                      {"Revision", "haven"},
                      {"Version", kVersion},
                      {"PrimaryDatacenter", "dc1"}};
  json::object member{{"Name", node_.node_name()},
                      {"Addr", node_.advertise_address()},
                      {"Port", 8301},
                      {"Status", 1},
                      {"Tags", json::object{{"role", "consul"}, {"dc", "dc1"}}}};
  respond(Json(json::object{{"Config", config}, {"Member", member}, {"Meta", json::object{}}}));
}

void ConsulApi::AgentMembers(const HttpRequest&, const std::string&, Responder& respond) {
  json::object member{{"Name", node_.node_name()},
                      {"Addr", node_.advertise_address()},
                      {"Port", 8301},
                      {"Status", 1},
                      {"Tags", json::object{{"role", "consul"}, {"dc", "dc1"}}}};
  respond(Json(json::array{member}));
}

void ConsulApi::AgentServiceRegister(const HttpRequest& req, const std::string&,
                                     Responder& respond) {
  auto reg = consul::ParseAgentServiceRegister(req.body, node_.node_name());
  if (!reg.ok()) return respond(Error(reg.status()));
  pb::Command cmd;
  auto* rs = cmd.mutable_register_service();
  rs->mutable_node()->set_name(node_.node_name());
  rs->mutable_node()->set_address(node_.advertise_address());
  *rs->mutable_service() = std::move(reg->service);
  for (auto& c : reg->checks) *rs->add_checks() = std::move(c);
  ProposeAndReply(req, std::move(cmd), respond, [](const auto&) { return Text(200, ""); });
}

void ConsulApi::AgentServiceDeregister(const HttpRequest& req, const std::string& id,
                                       Responder& respond) {
  if (id.empty()) return respond(Text(400, "Missing service ID"));
  pb::Command cmd;
  cmd.mutable_deregister()->set_node(node_.node_name());
  cmd.mutable_deregister()->set_service_id(id);
  ProposeAndReply(req, std::move(cmd), respond, [](const auto&) { return Text(200, ""); });
}

void ConsulApi::TtlUpdate(const std::string& check_id, const std::string& status,
                          const std::string& note, Responder& respond) {
  if (check_id.empty()) return respond(Text(400, "Missing check ID"));
  node_.UpdateTtl(check_id, status, note,
                  [respond](const Status& s) { respond(s.ok() ? Text(200, "") : Error(s)); });
}

void ConsulApi::AgentCheckPass(const HttpRequest& req, const std::string& id, Responder& r) {
  const std::string* note = req.Query("note");
  TtlUpdate(id, "passing", note ? *note : "", r);
}

void ConsulApi::AgentCheckWarn(const HttpRequest& req, const std::string& id, Responder& r) {
  const std::string* note = req.Query("note");
  TtlUpdate(id, "warning", note ? *note : "", r);
}

void ConsulApi::AgentCheckFail(const HttpRequest& req, const std::string& id, Responder& r) {
  const std::string* note = req.Query("note");
  TtlUpdate(id, "critical", note ? *note : "", r);
}

void ConsulApi::AgentCheckUpdate(const HttpRequest& req, const std::string& id, Responder& r) {
  auto upd = consul::ParseCheckUpdate(req.body);
  if (!upd.ok()) return r(Error(upd.status()));
  TtlUpdate(id, upd->status, upd->output, r);
}

// ---------------------------------------------------------------- catalog

void ConsulApi::CatalogServices(const HttpRequest& req, const std::string&, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kServices}, [&sm] { return sm.TableIndex(Table::kServices); },
      [&sm] {
        json::object out;
        for (const auto& [name, tags] : sm.ServiceNames()) {
          json::array arr;
          for (const auto& t : tags) arr.emplace_back(t);
          out[name] = std::move(arr);
        }
        return Json(out, ClientIndex(sm.TableIndex(Table::kServices)));
      });
}

void ConsulApi::CatalogService(const HttpRequest& req, const std::string& name,
                               Responder& respond) {
  if (name.empty()) return respond(Text(400, "Missing service name"));
  const auto& sm = node_.state();
  auto tags = QueryAll(req, "tag");
  auto index = [&sm, name] { return sm.ServiceNameIndex(name); };
  Blocking(req, respond, {Table::kServices, Table::kNodes}, index, [&sm, name, tags, index] {
    json::array out;
    for (const auto* s : sm.ServiceInstances(name, tags)) {
      if (const auto* n = sm.GetNode(s->node())) out.push_back(consul::CatalogService(*n, *s));
    }
    return Json(out, ClientIndex(index()));
  });
}

void ConsulApi::CatalogNodes(const HttpRequest& req, const std::string&, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kNodes}, [&sm] { return sm.TableIndex(Table::kNodes); },
      [&sm] {
        json::array out;
        for (const auto* n : sm.Nodes()) out.push_back(consul::CatalogNode(*n));
        return Json(out, ClientIndex(sm.TableIndex(Table::kNodes)));
      });
}

void ConsulApi::CatalogNode(const HttpRequest& req, const std::string& name, Responder& respond) {
  const auto& sm = node_.state();
  auto index = [&sm] {
    return std::max(sm.TableIndex(Table::kServices), sm.TableIndex(Table::kNodes));
  };
  Blocking(req, respond, {Table::kServices, Table::kNodes}, index, [&sm, name, index] {
    const auto* n = sm.GetNode(name);
    if (!n) return Json(nullptr, ClientIndex(index()));
    json::object services;
    for (const auto* s : sm.NodeServices(name)) services[s->id()] = consul::AgentService(*s);
    return Json(json::object{{"Node", consul::CatalogNode(*n)}, {"Services", services}},
                ClientIndex(index()));
  });
}

void ConsulApi::CatalogRegister(const HttpRequest& req, const std::string&, Responder& respond) {
  auto cmd = consul::ParseCatalogRegister(req.body);
  if (!cmd.ok()) return respond(Error(cmd.status()));
  ProposeAndReply(req, std::move(*cmd), respond, [](const auto&) { return Bool(true); });
}

void ConsulApi::CatalogDeregister(const HttpRequest& req, const std::string&, Responder& respond) {
  auto dereg = consul::ParseCatalogDeregister(req.body);
  if (!dereg.ok()) return respond(Error(dereg.status()));
  pb::Command cmd;
  *cmd.mutable_deregister() = std::move(*dereg);
  ProposeAndReply(req, std::move(cmd), respond, [](const auto&) { return Bool(true); });
}

// ---------------------------------------------------------------- health

void ConsulApi::HealthService(const HttpRequest& req, const std::string& name, Responder& respond) {
  if (name.empty()) return respond(Text(400, "Missing service name"));
  const auto& sm = node_.state();
  auto tags = QueryAll(req, "tag");
  bool passing_only = req.HasQuery("passing") && *req.Query("passing") != "false";
  // Per service name, as Consul does: a change to another service does not wake this query.
  auto index = [&sm, name] { return sm.ServiceNameIndex(name); };
  Blocking(req, respond, {Table::kServices, Table::kChecks, Table::kNodes}, index,
           [&sm, name, tags, passing_only, index] {
             json::array out;
             for (const auto* s : sm.ServiceInstances(name, tags)) {
               const auto* n = sm.GetNode(s->node());
               if (!n) continue;
               std::vector<const pb::Check*> checks;
               for (const auto* c : sm.NodeChecks(s->node())) {
                 if (c->service_id().empty() || c->service_id() == s->id()) checks.push_back(c);
               }
               if (passing_only && !AllPassing(checks)) continue;
               out.push_back(consul::HealthServiceEntry(*n, *s, checks));
             }
             return Json(out, ClientIndex(index()));
           });
}

void ConsulApi::HealthChecks(const HttpRequest& req, const std::string& name, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kChecks}, [&sm] { return sm.TableIndex(Table::kChecks); },
      [&sm, name] {
        json::array out;
        for (const auto* c : sm.ChecksOfServiceName(name)) out.push_back(consul::HealthCheck(*c));
        return Json(out, ClientIndex(sm.TableIndex(Table::kChecks)));
      });
}

void ConsulApi::HealthState(const HttpRequest& req, const std::string& state, Responder& respond) {
  if (state != "any" && state != "passing" && state != "warning" && state != "critical") {
    return respond(
        Text(400, "Invalid state \"" + state + "\": expected any, passing, warning or critical"));
  }
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kChecks}, [&sm] { return sm.TableIndex(Table::kChecks); },
      [&sm, state] {
        json::array out;
        for (const auto* c : sm.ChecksInState(state)) out.push_back(consul::HealthCheck(*c));
        return Json(out, ClientIndex(sm.TableIndex(Table::kChecks)));
      });
}

void ConsulApi::HealthNode(const HttpRequest& req, const std::string& node, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kChecks}, [&sm] { return sm.TableIndex(Table::kChecks); },
      [&sm, node] {
        json::array out;
        for (const auto* c : sm.NodeChecks(node)) out.push_back(consul::HealthCheck(*c));
        return Json(out, ClientIndex(sm.TableIndex(Table::kChecks)));
      });
}

// ---------------------------------------------------------------- kv

void ConsulApi::KvGet(const HttpRequest& req, const std::string& key, Responder& respond) {
  const auto& sm = node_.state();
  bool keys = req.HasQuery("keys");
  bool recurse = req.HasQuery("recurse") || keys;
  bool raw = req.HasQuery("raw");
  const std::string* sep_q = req.Query("separator");
  std::string sep = sep_q ? *sep_q : "";
  if (!recurse && key.empty()) return respond(Text(400, "Missing key name"));
  auto index = [&sm, key, recurse] { return sm.KVQueryIndex(key, recurse); };
  Blocking(req, respond, {Table::kKV}, index, [&sm, key, keys, recurse, raw, sep, index] {
    uint64_t idx = ClientIndex(index());
    HttpResponse r;
    if (keys) {
      json::array out;
      for (const auto& k : sm.KeysKV(key, sep)) out.emplace_back(k);
      r = out.empty() ? Text(404, "") : Json(out, idx);
    } else if (recurse) {
      json::array out;
      for (const auto* e : sm.ListKV(key)) out.push_back(consul::KVEntry(*e));
      r = out.empty() ? Text(404, "") : Json(out, idx);
    } else if (const auto* e = sm.GetKV(key)) {
      if (raw) {
        r.content_type = "application/octet-stream";
        r.body = e->value();
      } else {
        r = Json(json::array{consul::KVEntry(*e)}, idx);
      }
    } else {
      r = Text(404, "");
    }
    if (r.headers.empty()) r.headers.emplace_back("X-Consul-Index", std::to_string(idx));
    if (r.status == 404) r.body.clear();
    return r;
  });
}

void ConsulApi::KvPut(const HttpRequest& req, const std::string& key, Responder& respond) {
  if (key.empty()) return respond(Text(400, "Missing key name"));
  if (req.body.size() > opts_.max_kv_value_bytes) {
    return respond(Text(413, fmt::format("Value exceeds {} byte limit ({} bytes)",
                                         opts_.max_kv_value_bytes, req.body.size())));
  }
  auto flags = QueryUint(req, "flags", 0);
  if (!flags.ok()) return respond(Error(flags.status()));
  pb::Command cmd;
  auto* op = cmd.mutable_kv();
  op->set_key(key);
  op->set_value(req.body);
  op->set_flags(*flags);
  const std::string* acquire = req.Query("acquire");
  const std::string* release = req.Query("release");
  if (acquire && release) return respond(Text(400, "Conflicting flags: acquire and release"));
  if (acquire) {
    op->set_verb(pb::KVOp::LOCK);
    op->set_session(*acquire);
  } else if (release) {
    op->set_verb(pb::KVOp::UNLOCK);
    op->set_session(*release);
  } else if (req.HasQuery("cas")) {
    auto cas = QueryUint(req, "cas", 0);
    if (!cas.ok()) return respond(Error(cas.status()));
    op->set_verb(pb::KVOp::CAS);
    op->set_cas_index(*cas);
  } else {
    op->set_verb(pb::KVOp::SET);
  }
  ProposeAndReply(req, std::move(cmd), respond);
}

void ConsulApi::KvDelete(const HttpRequest& req, const std::string& key, Responder& respond) {
  bool recurse = req.HasQuery("recurse");
  if (key.empty() && !recurse) return respond(Text(400, "Missing key name"));
  pb::Command cmd;
  auto* op = cmd.mutable_kv();
  op->set_key(key);
  if (recurse) {
    op->set_verb(pb::KVOp::DELETE_TREE);
  } else if (req.HasQuery("cas")) {
    auto cas = QueryUint(req, "cas", 0);
    if (!cas.ok()) return respond(Error(cas.status()));
    op->set_verb(pb::KVOp::DELETE_CAS);
    op->set_cas_index(*cas);
  } else {
    op->set_verb(pb::KVOp::DELETE);
  }
  ProposeAndReply(req, std::move(cmd), respond);
}

void ConsulApi::Txn(const HttpRequest& req, const std::string&, Responder& respond) {
  auto txn = consul::ParseTxn(req.body);
  if (!txn.ok()) return respond(Error(txn.status()));
  pb::Command cmd;
  *cmd.mutable_txn() = *txn;
  const auto& sm = node_.state();
  // Consul answers every write op with the entry it left (deletes with nothing); the state read
  // here is the one right after this txn applied, since the answer runs straight after the apply.
  ProposeAndReply(req, std::move(cmd), respond, [&sm, ops = std::move(*txn)](const auto& r) {
    if (!r.success) {
      json::object err{{"OpIndex", r.failed_op}, {"What", "failed: a precondition did not hold"}};
      HttpResponse resp = Json(json::object{{"Results", nullptr}, {"Errors", json::array{err}}});
      resp.status = 409;
      return resp;
    }
    json::array results;
    for (const auto& op : ops.ops()) {
      if (op.verb() == pb::KVOp::DELETE || op.verb() == pb::KVOp::DELETE_CAS ||
          op.verb() == pb::KVOp::DELETE_TREE) {
        continue;
      }
      if (const auto* e = sm.GetKV(op.key())) {
        auto entry = consul::KVEntry(*e);
        entry["Value"] = nullptr;  // Consul leaves values out of write results
        results.push_back(json::object{{"KV", entry}});
      }
    }
    return Json(json::object{{"Results", results}, {"Errors", nullptr}},
                ClientIndex(sm.last_applied()));
  });
}

// ---------------------------------------------------------------- session

void ConsulApi::SessionCreate(const HttpRequest& req, const std::string&, Responder& respond) {
  auto session = consul::ParseSessionCreate(req.body, node_.node_name());
  if (!session.ok()) return respond(Error(session.status()));
  std::string id = NewUuid();
  session->set_id(id);
  pb::Command cmd;
  *cmd.mutable_session_create()->mutable_session() = std::move(*session);
  // A retry of a create that applied before is answered with the session it created.
  ProposeAndReply(req, std::move(cmd), respond, [id](const auto& r) {
    return Json(json::object{{"ID", r.created_id.empty() ? id : r.created_id}});
  });
}

void ConsulApi::SessionDestroy(const HttpRequest& req, const std::string& id, Responder& respond) {
  if (id.empty()) return respond(Text(400, "Missing session"));
  pb::Command cmd;
  cmd.mutable_session_destroy()->set_id(id);
  ProposeAndReply(req, std::move(cmd), respond, [](const auto&) { return Bool(true); });
}

void ConsulApi::SessionRenew(const HttpRequest&, const std::string& id, Responder& respond) {
  if (id.empty()) return respond(Text(400, "Missing session"));
  Status s = node_.RenewSession(id);
  if (!s.ok()) return respond(Error(s));
  const auto* session = node_.state().GetSession(id);
  respond(Json(json::array{consul::Session(*session)},
               ClientIndex(node_.state().TableIndex(Table::kSessions))));
}

void ConsulApi::SessionInfo(const HttpRequest& req, const std::string& id, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kSessions}, [&sm] { return sm.TableIndex(Table::kSessions); },
      [&sm, id] {
        json::array out;
        if (const auto* s = sm.GetSession(id)) out.push_back(consul::Session(*s));
        return Json(out, ClientIndex(sm.TableIndex(Table::kSessions)));
      });
}

void ConsulApi::SessionList(const HttpRequest& req, const std::string&, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kSessions}, [&sm] { return sm.TableIndex(Table::kSessions); },
      [&sm] {
        json::array out;
        for (const auto* s : sm.Sessions()) out.push_back(consul::Session(*s));
        return Json(out, ClientIndex(sm.TableIndex(Table::kSessions)));
      });
}

void ConsulApi::SessionNode(const HttpRequest& req, const std::string& node, Responder& respond) {
  const auto& sm = node_.state();
  Blocking(
      req, respond, {Table::kSessions}, [&sm] { return sm.TableIndex(Table::kSessions); },
      [&sm, node] {
        json::array out;
        for (const auto* s : sm.NodeSessions(node)) out.push_back(consul::Session(*s));
        return Json(out, ClientIndex(sm.TableIndex(Table::kSessions)));
      });
}

// ---------------------------------------------------------------- status, metrics

// As Consul: the leader's server (Raft) address, "" while there is none.
void ConsulApi::StatusLeader(const HttpRequest&, const std::string&, Responder& respond) {
  RaftLogStatus st = node_.raft_status();
  auto it = st.peers.find(st.node.leader);
  respond(Json(json::value(it == st.peers.end() ? "" : it->second)));
}

// As Consul: the Raft addresses of the voters.
void ConsulApi::StatusPeers(const HttpRequest&, const std::string&, Responder& respond) {
  RaftLogStatus st = node_.raft_status();
  json::array peers;
  for (uint64_t id : st.node.conf.voters()) {
    if (auto it = st.peers.find(id); it != st.peers.end()) peers.emplace_back(it->second);
  }
  respond(Json(json::value(std::move(peers))));
}

void ConsulApi::Metrics(const HttpRequest&, const std::string&, Responder& respond) {
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = metrics::Registry::Default().RenderPrometheus();
  respond(std::move(r));
}

// ---------------------------------------------------------------- operator

// As Consul, plus haven's MatchIndex (leader only: how far each member has replicated, 0
// elsewhere) and CommitIndex, so `haven cluster add` can tell when a learner has caught up.
void ConsulApi::OperatorRaftConfiguration(const HttpRequest&, const std::string&,
                                          Responder& respond) {
  RaftLogStatus st = node_.raft_status();
  std::map<uint64_t, uint64_t> match;
  for (const auto& p : st.node.progress) match[p.id] = p.match;
  json::array servers;
  auto add = [&](uint64_t id, bool voter) {
    auto addr = st.peers.find(id);
    servers.push_back(json::object{
        {"ID", std::to_string(id)},
        {"Node", std::to_string(id)},
        {"Address", addr == st.peers.end() ? "" : addr->second},
        {"Leader", id == st.node.leader},
        {"Voter", voter},
        {"ProtocolVersion", "3"},
        {"MatchIndex", match.count(id) ? match[id] : 0},
    });
  };
  for (uint64_t id : st.node.conf.voters()) add(id, true);
  for (uint64_t id : st.node.conf.learners()) {
    if (!Contains(st.node.conf.voters(), id)) add(id, false);
  }
  respond(Json(json::object{{"Servers", std::move(servers)},
                            {"Index", st.node.commit},
                            {"CommitIndex", st.node.commit},
                            {"LeaderID", std::to_string(st.node.leader)}}));
}

// As Consul: ?id=ID (or ?address=HOST:PORT) leaves the configuration.
void ConsulApi::OperatorRaftPeerRemove(const HttpRequest& req, const std::string&,
                                       Responder& respond) {
  auto id = QueryMemberId(req, false);
  if (!id.ok()) return respond(Error(id.status()));
  RaftLogStatus st = node_.raft_status();
  if (*id == 0) {
    const std::string* addr = req.Query("address");
    if (!addr || addr->empty()) return respond(Text(400, "Must specify either ?id or ?address"));
    for (const auto& [pid, paddr] : st.peers) {
      if (paddr == *addr) *id = pid;
    }
    if (*id == 0) return respond(Text(404, "address \"" + *addr + "\" is not a raft member"));
  }
  if (!Contains(st.node.conf.voters(), *id) && !Contains(st.node.conf.learners(), *id)) {
    return respond(Text(404, "node " + std::to_string(*id) + " is not a raft member"));
  }
  raft::pb::ConfChange cc;
  cc.set_type(raft::pb::CONF_REMOVE);
  cc.set_node_id(*id);
  node_.ChangeMembership(
      std::move(cc), [respond](const Status& s) { respond(s.ok() ? Text(200, "") : Error(s)); });
}

// haven's own: ?id=ID&address=HOST:PORT adds a learner; &voter=true promotes a learner (add it
// as a learner first, promote once it has caught up: a voter that is far behind would stall
// commits).
void ConsulApi::OperatorRaftPeerAdd(const HttpRequest& req, const std::string&,
                                    Responder& respond) {
  auto id = QueryMemberId(req, true);
  if (!id.ok()) return respond(Error(id.status()));
  const std::string* voter_q = req.Query("voter");
  std::string voter_text = voter_q ? *voter_q : "false";
  if (voter_text != "true" && voter_text != "false") {
    return respond(Text(400, "Invalid voter \"" + voter_text + "\": expected true or false"));
  }
  bool voter = voter_text == "true";
  RaftLogStatus st = node_.raft_status();
  bool is_voter = Contains(st.node.conf.voters(), *id);
  bool is_learner = !is_voter && Contains(st.node.conf.learners(), *id);
  const std::string* addr_q = req.Query("address");
  std::string addr = addr_q ? *addr_q : "";
  if (addr.empty() && (is_voter || is_learner) && st.peers.count(*id)) addr = st.peers[*id];
  if (Status s = CheckRaftAddress(addr); !s.ok()) return respond(Error(s));
  if (is_voter) {
    if (voter) return respond(Text(200, ""));  // already done: a retry is harmless
    return respond(Text(409, "node " + std::to_string(*id) + " is already a voter"));
  }
  if (voter && !is_learner) {
    return respond(Text(400, "node " + std::to_string(*id) +
                                 " is not a member: add it as a learner first, then promote it "
                                 "once it has caught up"));
  }
  if (is_learner && !voter && st.peers.count(*id) && st.peers[*id] == addr) {
    return respond(Text(200, ""));
  }
  raft::pb::ConfChange cc;
  cc.set_type(voter ? raft::pb::CONF_ADD_VOTER : raft::pb::CONF_ADD_LEARNER);
  cc.set_node_id(*id);
  cc.set_context(addr);
  node_.ChangeMembership(
      std::move(cc), [respond](const Status& s) { respond(s.ok() ? Text(200, "") : Error(s)); });
}

// haven's: ?id=ID&address=HOST:PORT records a member's new raft address in the log (a node moved
// to another address keeps its id and data), so every member, also after a restart, reaches it
// there. The member keeps its role.
void ConsulApi::OperatorRaftPeerAddress(const HttpRequest& req, const std::string&,
                                        Responder& respond) {
  auto id = QueryMemberId(req, true);
  if (!id.ok()) return respond(Error(id.status()));
  const std::string* addr_q = req.Query("address");
  std::string addr = addr_q ? *addr_q : "";
  if (Status s = CheckRaftAddress(addr); !s.ok()) return respond(Error(s));
  RaftLogStatus st = node_.raft_status();
  bool is_voter = Contains(st.node.conf.voters(), *id);
  if (!is_voter && !Contains(st.node.conf.learners(), *id)) {
    return respond(Text(404, "node " + std::to_string(*id) + " is not a member"));
  }
  raft::pb::ConfChange cc;
  cc.set_type(is_voter ? raft::pb::CONF_ADD_VOTER : raft::pb::CONF_ADD_LEARNER);
  cc.set_node_id(*id);
  cc.set_context(addr);
  node_.ChangeMembership(
      std::move(cc), [respond](const Status& s) { respond(s.ok() ? Text(200, "") : Error(s)); });
}

// As Consul's: ?id=ID optional (default: the most caught-up voter); answers once it moved.
void ConsulApi::OperatorRaftTransferLeader(const HttpRequest& req, const std::string&,
                                           Responder& respond) {
  auto id = QueryMemberId(req, false);
  if (!id.ok()) return respond(Error(id.status()));
  constexpr int64_t kTransferWaitMs = 10'000;
  node_.TransferLeadership(*id, kTransferWaitMs, [respond](const Status& s) {
    respond(s.ok() ? Json(json::object{{"Success", true}}) : Error(s));
  });
}

}  // namespace haven::node
