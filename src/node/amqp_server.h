// AmqpServer: the AMQP 0-9-1 listener. Accepts TCP connections on the node's executor and runs an
// AmqpConnection for each, all on that one thread (with BrokerNode).
#pragma once

#include <memory>
#include <string>

#include "base/status.h"
#include "net/io_runtime.h"
#include "node/amqp_connection.h"
#include "node/broker_node.h"

namespace haven::node {

class AmqpServer {
 public:
  // `executor` must run one thread (BrokerNode's); `broker` must outlive the server.
  AmqpServer(AmqpServerOptions opts, net::IoRuntime& executor, BrokerNode& broker);
  ~AmqpServer();  // Stop()s
  AmqpServer(const AmqpServer&) = delete;
  AmqpServer& operator=(const AmqpServer&) = delete;

  // Binds and starts accepting. Call from outside the executor, once.
  Status Start();
  // Stops accepting and closes every connection (each detaches from the broker). Call from outside
  // the executor (it waits for the executor); idempotent.
  void Stop();
  // "HOST:PORT" actually bound (after Start).
  std::string address() const;

  struct Core;

 private:
  std::shared_ptr<Core> core_;
  bool stop_requested_ = false;
};

}  // namespace haven::node
