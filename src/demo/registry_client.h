// RegistryClient: Consul-API calls for the demo (register, heartbeat, deregister, leader, passing
// instances) that move to the next registry node when one does not answer.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "net/http_client.h"

namespace haven::demo {

class RegistryClient {
 public:
  // `urls`: "http://127.0.0.1:PORT" of every node, at least one.
  explicit RegistryClient(std::vector<std::string> urls, int64_t timeout_ms = 5000);

  // One request; a transport error or a 5xx moves to the next node, each node tried once.
  Result<net::HttpClientResult> Request(std::string_view method, std::string_view target,
                                        std::string_view body = {});
  // PUT /v1/agent/service/register with a TTL check and an HTTP check, both passing at first.
  Status Register(const std::string& service, const std::string& id, int port, int64_t ttl_ms,
                  int64_t check_interval_ms);
  Status Heartbeat(const std::string& id);
  Status Deregister(const std::string& id);
  // IDs of the passing instances of `service`.
  Result<std::set<std::string>> Passing(const std::string& service);
  // The leader's Raft address ("127.0.0.1:PORT"), "" while there is none.
  Result<std::string> LeaderRaftAddress();

 private:
  std::vector<std::string> urls_;
  std::vector<std::unique_ptr<net::HttpClient>> clients_;
  size_t current_ = 0;
};

// The check ids the demo gives an instance's two checks.
std::string TtlCheckId(const std::string& instance_id);
std::string HttpCheckId(const std::string& instance_id);

}  // namespace haven::demo
