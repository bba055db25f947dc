// ConsulApi: the Consul-compatible HTTP API (agent, catalog, health, kv, session, status) over a
// RegistryNode, with blocking queries, Consul's status codes and errors, and /metrics.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "net/http_types.h"
#include "node/registry_node.h"

namespace haven::node {

struct ConsulApiOptions {
  size_t max_kv_value_bytes = size_t{512} * 1024;  // Consul's kv_max_value_size
  int64_t default_wait_ms = int64_t{5} * 60 * 1000;
  int64_t max_wait_ms = int64_t{10} * 60 * 1000;
};

class ConsulApi {
 public:
  ConsulApi(RegistryNode& node, ConsulApiOptions opts);

  // The HttpHandler. Must run on the node's executor.
  void Handle(const net::HttpRequest& req, net::Responder respond);

 private:
  struct Route;
  using Handler = void (ConsulApi::*)(const net::HttpRequest&, const std::string& tail,
                                      net::Responder&);
  struct Route {
    std::string method;
    std::string path;  // exact, or a prefix when it ends with '/'
    Handler handler;
  };

  // agent
  void AgentServices(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentChecks(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentSelf(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentMembers(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentServiceRegister(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentServiceDeregister(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentCheckPass(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentCheckWarn(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentCheckFail(const net::HttpRequest&, const std::string&, net::Responder&);
  void AgentCheckUpdate(const net::HttpRequest&, const std::string&, net::Responder&);
  // catalog
  void CatalogServices(const net::HttpRequest&, const std::string&, net::Responder&);
  void CatalogService(const net::HttpRequest&, const std::string&, net::Responder&);
  void CatalogNodes(const net::HttpRequest&, const std::string&, net::Responder&);
  void CatalogNode(const net::HttpRequest&, const std::string&, net::Responder&);
  void CatalogRegister(const net::HttpRequest&, const std::string&, net::Responder&);
  void CatalogDeregister(const net::HttpRequest&, const std::string&, net::Responder&);
  // health
  void HealthService(const net::HttpRequest&, const std::string&, net::Responder&);
  void HealthChecks(const net::HttpRequest&, const std::string&, net::Responder&);
  void HealthState(const net::HttpRequest&, const std::string&, net::Responder&);
  void HealthNode(const net::HttpRequest&, const std::string&, net::Responder&);
  // kv
  void KvGet(const net::HttpRequest&, const std::string&, net::Responder&);
  void KvPut(const net::HttpRequest&, const std::string&, net::Responder&);
  void KvDelete(const net::HttpRequest&, const std::string&, net::Responder&);
  void Txn(const net::HttpRequest&, const std::string&, net::Responder&);
  // session
  void SessionCreate(const net::HttpRequest&, const std::string&, net::Responder&);
  void SessionDestroy(const net::HttpRequest&, const std::string&, net::Responder&);
  void SessionRenew(const net::HttpRequest&, const std::string&, net::Responder&);
  void SessionInfo(const net::HttpRequest&, const std::string&, net::Responder&);
  void SessionList(const net::HttpRequest&, const std::string&, net::Responder&);
  void SessionNode(const net::HttpRequest&, const std::string&, net::Responder&);
  // status, metrics
  void StatusLeader(const net::HttpRequest&, const std::string&, net::Responder&);
  void StatusPeers(const net::HttpRequest&, const std::string&, net::Responder&);
  void Metrics(const net::HttpRequest&, const std::string&, net::Responder&);
  // operator (Consul's raft configuration and peer removal; haven's add/promote, address update
  // and transfer)
  void OperatorRaftConfiguration(const net::HttpRequest&, const std::string&, net::Responder&);
  void OperatorRaftPeerRemove(const net::HttpRequest&, const std::string&, net::Responder&);
  void OperatorRaftPeerAdd(const net::HttpRequest&, const std::string&, net::Responder&);
  void OperatorRaftPeerAddress(const net::HttpRequest&, const std::string&, net::Responder&);
  void OperatorRaftTransferLeader(const net::HttpRequest&, const std::string&, net::Responder&);

  // A GET of the replicated state, in the consistency mode the query asks (?stale, ?consistent).
  void HandleRead(const net::HttpRequest& req, const std::string& tail, Handler handler,
                  net::Responder respond);
  void AddReadHeaders(net::HttpResponse& r, const char* effective) const;

  void TtlUpdate(const std::string& check_id, const std::string& status, const std::string& note,
                 net::Responder& respond);
  // Answers a read now, or parks it until the data it reads changes past ?index (blocking query).
  using IndexFn = std::function<uint64_t()>;
  using RenderFn = std::function<net::HttpResponse()>;
  void Blocking(const net::HttpRequest& req, net::Responder& respond,
                const std::vector<registry::Table>& tables, IndexFn index_fn, RenderFn render);
  // Proposes and answers with `true`/`false` (or `on_ok` for other bodies) once applied. A request
  // with X-Haven-Request-Id is applied at most once across its retries (a retry gets the first
  // outcome); a malformed id gets 400.
  void ProposeAndReply(const net::HttpRequest& req, registry::pb::Command cmd,
                       net::Responder& respond,
                       std::function<net::HttpResponse(const registry::ApplyResult&)> on_ok = {});

  RegistryNode& node_;
  ConsulApiOptions opts_;
  std::vector<Route> routes_;
};

}  // namespace haven::node
