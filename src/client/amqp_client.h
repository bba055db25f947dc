// Blocking AMQP 0-9-1 producer (publisher confirms) and consumer (manual acks) for haven's broker,
// each over one TCP connection that fails over to the next node when its node dies.
//
// Delivery guarantee: at-least-once. A producer re-publishes every message not yet confirmed when
// its connection is lost (the lost connection's broker may already have enqueued it), so a
// message may be enqueued twice: give each one a `message_id` property and dedupe on it in the
// consumer. A consumer's unacked messages come back redelivered (redelivered = true) after its
// connection is lost; acks for messages of a dead connection are dropped (Ack returns Ok without
// sending anything), the redelivery replaces them.
//
// Not thread-safe: one thread per Producer / Consumer.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "mq/amqp_codec.h"

namespace haven::client {

namespace detail {
class AmqpConn;  // one socket + handshake + frame codec (amqp_client.cc)
}  // namespace detail

// Connection settings shared by Producer and Consumer.
struct AmqpOptions {
  std::vector<std::string> addresses;  // "HOST:PORT" of every node (IPv4 or a name), at least one
  std::string user = "guest";
  std::string password = "guest";
  int64_t connect_timeout_ms = 2000;  // one TCP connect + handshake
  int64_t io_timeout_ms = 10000;      // one synchronous method round trip
  int64_t backoff_initial_ms = 20;    // after a failed connect; doubles up to backoff_max_ms
  int64_t backoff_max_ms = 500;
  int64_t failover_deadline_ms = 30000;  // give up reconnecting (IoError) after this long
  bool declare_queue = true;             // queue.declare (durable) on every (re)connect
  mq::amqp::FieldTable queue_arguments;  // e.g. x-queue-type: quorum
};

struct ProducerOptions : AmqpOptions {
  std::string queue;                   // routing key on the default exchange
  std::string exchange;                // "" = the default exchange
  uint32_t confirm_window = 256;       // unconfirmed messages in flight, 1..65535
  int64_t confirm_timeout_ms = 15000;  // no confirm for this long: treat the connection as lost
  // A nacked message is re-published this often; after that it is dropped and the call that saw
  // the last nack returns Conflict.
  uint32_t max_nack_retries = 10;
  uint32_t max_body_bytes = 16u << 20;  // larger bodies are refused (TooLarge)
};

// A publisher with confirms. PublishAsync returns once the message is written (blocking while
// the confirm window is full); WaitConfirms until every message so far is confirmed.
class Producer {
 public:
  explicit Producer(ProducerOptions options);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Connects to the first address that answers (and declares the queue unless told not to).
  Status Connect();
  // Queues `body` for publishing; blocks while confirm_window messages are unconfirmed. Fails
  // (and the message is not queued) only when failover gave up or the broker refused the queue.
  Status PublishAsync(std::string body, mq::amqp::BasicProperties props = {});
  // Until every message published so far is confirmed (re-publishing across failovers).
  Status WaitConfirms(int64_t timeout_ms);
  // PublishAsync + WaitConfirms: one message, slow (one round trip each).
  Status Publish(std::string body, mq::amqp::BasicProperties props = {});
  // Sends connection.close and closes the socket; unconfirmed messages are dropped.
  void Close();

  uint64_t confirmed() const { return confirmed_; }
  uint64_t unconfirmed() const { return pending_.size(); }
  uint64_t reconnects() const { return reconnects_; }
  uint64_t republished() const { return republished_; }  // re-sent after a failover or nack
  const std::string& current_address() const;
  // Called with each message's properties when its confirm arrives (e.g. to record message_id).
  void set_on_confirm(std::function<void(const mq::amqp::BasicProperties&)> f) {
    on_confirm_ = std::move(f);
  }

 private:
  struct Pending {
    uint64_t seq = 0;  // delivery tag on the current connection
    std::string body;
    mq::amqp::BasicProperties props;
    uint32_t nacks = 0;
  };
  Status EnsureConnected();
  Status Failover(const Status& why);
  Status SendPending(Pending& p);
  Status PumpOnce(int64_t timeout_ms);
  Status HandleAck(uint64_t tag, bool multiple, bool nack);

  ProducerOptions options_;
  std::unique_ptr<detail::AmqpConn> conn_;
  size_t next_address_ = 0;
  uint64_t next_seq_ = 1;
  std::deque<Pending> pending_;  // in publish order, seq increasing
  uint64_t confirmed_ = 0;
  uint64_t reconnects_ = 0;
  uint64_t republished_ = 0;
  std::function<void(const mq::amqp::BasicProperties&)> on_confirm_;
};

struct ConsumerOptions : AmqpOptions {
  std::string queue;
  uint16_t prefetch = 100;  // basic.qos prefetch-count, 1..65535
};

// One delivered message. `epoch` is the connection it came on: an Ack for an older epoch is
// dropped (that connection is gone; the broker redelivers the message).
struct Message {
  std::string body;
  mq::amqp::BasicProperties properties;
  bool redelivered = false;
  uint64_t delivery_tag = 0;
  uint64_t epoch = 0;
};

// True for the Unavailable status Consumer::Next / Producer::WaitConfirms return on a timeout.
bool IsTimeout(const Status& status);

// A consumer with manual acks that fails over to the next node and consumes again.
class Consumer {
 public:
  explicit Consumer(ConsumerOptions options);
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  Status Connect();
  // The next delivery. Errors: IsTimeout(status) when none came within timeout_ms (reconnecting
  // as needed on the way); NotFound when the broker says the queue does not exist (404);
  // IoError when failover gave up (failover_deadline_ms without a working node).
  Result<Message> Next(int64_t timeout_ms);
  // basic.ack for `msg` (not multiple). Dropped (Ok) when msg came on an earlier connection.
  Status Ack(const Message& msg);
  void Close();

  uint64_t reconnects() const { return reconnects_; }
  uint64_t epoch() const { return epoch_; }
  const std::string& current_address() const;

 private:
  Status EnsureConnected();
  Status Failover(const Status& why);

  ConsumerOptions options_;
  std::unique_ptr<detail::AmqpConn> conn_;
  size_t next_address_ = 0;
  uint64_t epoch_ = 0;
  uint64_t reconnects_ = 0;
};

}  // namespace haven::client
