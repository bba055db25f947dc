// FramedTransport: opaque frames between cluster nodes over TCP (4-byte big-endian length, then
// the bytes): a listener that hands every frame it receives to a callback, and one outbound
// connection per peer address with a bounded queue. Delivery is best effort by design: the
// protocols on top (Raft) retransmit, so a frame for an unreachable or slow peer is dropped (and
// counted) rather than queued without bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/status.h"

namespace haven::net {

struct FramedTransportOptions {
  std::string listen = "127.0.0.1:0";           // HOST:PORT (an IP address); port 0 = ephemeral
  size_t max_frame_bytes = 64 << 20;            // larger frames are refused (sender) or end the
                                                // connection (receiver)
  size_t max_queued_bytes_per_peer = 64 << 20;  // beyond it new frames for the peer are dropped
  size_t max_inbound_connections = 256;
  int64_t connect_timeout_ms = 1'000;
  int64_t reconnect_backoff_ms = 100;  // after a failed connect, frames for the peer are dropped
                                       // for this long
};

class FramedTransport {
 public:
  // Called on the transport's own thread for every frame received, in order per connection.
  using OnFrame = std::function<void(std::string frame)>;

  FramedTransport(FramedTransportOptions opts, OnFrame on_frame);
  ~FramedTransport();  // Stop()s
  FramedTransport(const FramedTransport&) = delete;
  FramedTransport& operator=(const FramedTransport&) = delete;

  Status Start();               // binds and starts the thread
  std::string address() const;  // "127.0.0.1:PORT" as bound
  void Stop();                  // closes everything; frames queued are dropped

  // Thread-safe. Queues `frame` for the peer at HOST:PORT, connecting when needed.
  void Send(const std::string& peer, std::string frame);

  struct Stats {
    uint64_t frames_sent = 0, frames_received = 0, frames_dropped = 0, connect_failures = 0;
  };
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace haven::net
