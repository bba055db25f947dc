// MqApi: the HTTP management API of the queues (/v1/mq/...), in the spirit of RabbitMQ's
// management plugin: list queues with their depths and rates, declare and delete them, publish and
// take messages from scripts and `haven mq`. AMQP clients use the AMQP listener; this is for
// people. Also exports the per-queue figures on /metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "net/http_types.h"
#include "node/broker_node.h"

namespace haven::node {

struct MqApiOptions {
  size_t max_body_bytes = size_t{8} << 20;  // a message published over HTTP
  uint64_t max_get_count = 1'000;           // messages one get takes
};

class MqApi {
 public:
  MqApi(BrokerNode& broker, MqApiOptions opts = {});

  // Whether `path` is one of this API's (under /v1/mq/).
  static bool Owns(const std::string& path);
  // Must run on the node's executor.
  void Handle(const net::HttpRequest& req, net::Responder respond);

 private:
  void ListQueues(net::Responder& respond);
  void ShowQueue(const std::string& name, net::Responder& respond);
  void DeclareQueue(const std::string& name, const net::HttpRequest& req, net::Responder& respond);
  void DeleteQueue(const std::string& name, const net::HttpRequest& req, net::Responder& respond);
  void Publish(const net::HttpRequest& req, net::Responder& respond);
  void GetMessages(const std::string& name, const net::HttpRequest& req, net::Responder& respond);
  void RegisterMetrics();
  const std::string& Owner();

  // Publish and deliver rates from counters sampled at least a second apart.
  struct RateSample {
    std::chrono::steady_clock::time_point at{};
    uint64_t published = 0, delivered = 0;
    double publish_rate = 0, deliver_rate = 0;
  };
  RateSample& Rates(const mq::QueueStats& q);

  BrokerNode& broker_;
  MqApiOptions opts_;
  std::string owner_;  // this API's owner id on the broker (made on first use)
  std::map<std::string, RateSample> rates_;
};

}  // namespace haven::node
