// BrokerState: the AMQP 0-9-1 broker's replicated state (exchanges, queues, bindings, messages,
// consumers), changed only by applying committed commands. Pure and deterministic: no I/O, no
// clock (time comes in Command.now_unix_ms), no randomness, so every replica decides the same
// deliveries.
//
// Memory: each queue keeps a window of its head in memory (about `window` messages, plus the
// messages consumers returned) and appends the rest to a MessageSpill, keyed by (queue uid, message
// id); when the window drains to half, it refills from the spill in id order. What goes to the
// spill and what is read back depends only on the commands applied, so replicas stay equal. A
// "local" snapshot holds the windows only (the spill is on the same node); a "full" one carries
// every message, for a node that has none of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "base/status.h"
#include "mq/message_spill.h"
#include "mq/mq.pb.h"

namespace haven::mq {

inline constexpr size_t kMaxNameBytes = 255;  // AMQP short strings

// An AMQP error: the reply code and text the shell closes the channel (or connection) with.
struct BrokerError {
  static constexpr uint16_t kNoRoute = 312;
  static constexpr uint16_t kAccessRefused = 403;
  static constexpr uint16_t kNotFound = 404;
  static constexpr uint16_t kResourceLocked = 405;
  static constexpr uint16_t kPreconditionFailed = 406;
  static constexpr uint16_t kResourceError = 506;
  static constexpr uint16_t kNotAllowed = 530;
  static constexpr uint16_t kNotImplemented = 540;
  static constexpr uint16_t kInternalError = 541;

  uint16_t reply_code = 0;  // 0: no error
  std::string reply_text;   // as RabbitMQ words it, e.g. "NOT_FOUND - no queue 'q' in vhost '/'"

  bool ok() const { return reply_code == 0; }
  Status ToStatus() const;  // for logs and HTTP: 404 -> NotFound, 406 -> Conflict, ...
};

// Limits; exceeding one is an error (506 RESOURCE_ERROR for counts, 406 for sizes), never a crash.
struct BrokerOptions {
  size_t max_message_bytes = size_t{128} << 20;  // RabbitMQ's default max_message_size
  size_t max_exchanges = 10'000;
  size_t max_queues = 10'000;
  size_t max_bindings = 100'000;
  size_t max_consumers = 100'000;           // push consumers and basic.get holders together
  size_t max_queue_messages = 50'000'000;   // per queue, ready + unacked: publishes beyond are
                                            // rejected like x-overflow reject-publish
  size_t max_ids_per_command = 100'000;     // message ids in one ack/nack
  size_t max_deliveries_per_apply = 1'000;  // more: ApplyResult.dispatch_pending, then Dispatch
  size_t max_commands_per_batch = 10'000;   // in one Batch command
  uint32_t max_dead_letter_count = 16;  // a message dead-lettered more often is dropped (cycles)
  // Ready messages a queue keeps in memory before the rest go to the spill (at least 1).
  size_t window = 4096;
};

// A snapshot's form: kLocal for the node's own disk (its spill holds the rest), kFull for another
// node (every message inside; bigger).
enum class SnapshotForm { kFull, kLocal };

// What a message carries through the broker, shared by the copies of one publish (and by the
// Delivery handed to the shell, so a body is never copied per consumer).
struct Payload {
  std::string exchange;
  std::string routing_key;
  std::string properties;  // AMQP content-header property bytes, untouched
  std::string body;
  pb::Death death;  // reason == DEAD_LETTER_NONE unless dead-lettered
};

// One message in one queue.
struct StoredMessage {
  uint64_t id = 0;
  int64_t expires_at_unix_ms = 0;  // 0: never
  uint32_t delivery_count = 0;     // returns to the queue so far
  bool redelivered = false;
  std::shared_ptr<const Payload> payload;
};

// A message handed to a consumer by this command: the hosting node sends basic.deliver (or
// basic.get-ok when `get`).
struct Delivery {
  std::string consumer_id;
  std::string queue;
  uint64_t message_id = 0;
  bool redelivered = false;
  uint32_t delivery_count = 0;
  bool get = false;            // answered a basic.get
  uint64_t message_count = 0;  // basic.get-ok: ready messages left in the queue
  std::shared_ptr<const Payload> payload;
};

// A message that left its queue for the dead-letter exchange (or was dropped).
struct DeadLettered {
  std::string queue;
  uint64_t message_id = 0;
  pb::DeadLetterReason reason = pb::DEAD_LETTER_NONE;
  std::vector<std::string> to_queues;  // empty: dropped (no DLX, unroutable, or a cycle)
};

struct QueueStats {
  std::string name;
  uint64_t ready = 0;
  uint64_t unacked = 0;
  uint64_t consumers = 0;  // push consumers (basic.get holders are not counted)
  uint64_t ready_bytes = 0;
  uint64_t unacked_bytes = 0;  // ready_bytes + unacked_bytes: the queue's total body bytes
  pb::QueueCounters counters;  // published, delivered, acked, redelivered, dead_lettered, dropped
};

struct ApplyResult {
  BrokerError error;  // not ok: the command was rejected and nothing changed
  std::vector<Delivery> deliveries;
  // publish: the queues that took the message (sorted) and its id in each (parallel).
  std::vector<std::string> routed_queues;
  std::vector<uint64_t> message_ids;
  std::vector<std::string> rejected_queues;  // full (x-overflow reject-publish): nack the confirm
  bool unroutable = false;  // mandatory and routed nowhere: basic.return 312 NO_ROUTE
  // queue.declare-ok / delete-ok / purge-ok counts; basic.get-empty when get_empty.
  uint64_t message_count = 0;
  uint64_t consumer_count = 0;
  bool get_empty = false;
  std::vector<DeadLettered> dead_lettered;
  std::vector<std::string> cancelled_consumers;  // by the broker (queue deleted): basic.cancel
  std::vector<std::string> deleted_queues;       // explicitly, exclusive or auto-deleted
  std::vector<std::string> deleted_exchanges;    // explicitly or auto-deleted
  bool dispatch_pending = false;  // deliveries left for later: propose a Dispatch command
  // A Batch command: the result of each of its commands, in order (`error` above stays ok unless
  // the batch itself was refused, e.g. too many commands: then none of them was applied).
  std::vector<ApplyResult> batch;
};

// The state machine. Conventions the shell follows:
// - Consumer ids are "node/conn/channel/tag" and owners "node/conn"; DropOwner("node") or
//   DropOwner("node/conn") cancels every consumer (and deletes every exclusive queue) under it.
// - basic.get without no_ack hands the message to a pseudo-consumer whose id the shell makes
//   unique per channel and queue (e.g. "node/conn/channel/get:queue"); it is acked, nacked and
//   recovered like any consumer, is never pushed to, and vanishes when it holds nothing.
// - Ack/nack of ids a consumer does not hold is 406 (a double ack); ack/nack from a consumer that
//   is gone (cancelled, its queue deleted) is a no-op: its messages went back or went away.
// - Requeued messages (nack, cancel, recover, dropped owner) go back to their original place by
//   message id, as quorum queues do: always ahead of every message never delivered. Each return
//   counts toward x-delivery-limit.
// - x-max-length / x-max-length-bytes count ready messages only, and are enforced on enqueue:
//   a returned message always goes back (none is lost for being returned), so a queue may be
//   over its limit until the next publish drops its head or is rejected.
// - TTL: a message's expiry is fixed at enqueue (min of x-message-ttl and its expiration). As in
//   RabbitMQ, messages expire only at the queue head (Expire, or when one would be delivered): an
//   expired message is never delivered, but one behind a longer-lived head waits for it.
class BrokerState {
 public:
  // Declares "", amq.direct/fanout/topic. `spill` (outliving this) holds what does not fit in the
  // windows; null: a MemorySpill of its own.
  explicit BrokerState(BrokerOptions options = {}, MessageSpill* spill = nullptr);

  // Applies a committed command at log index `index` (strictly increasing). Deterministic. A
  // Batch applies its commands in order, each exactly as it would apply alone (one that fails
  // changes nothing and does not stop the others); their results are in ApplyResult.batch.
  ApplyResult Apply(uint64_t index, const pb::Command& cmd);
  uint64_t last_applied() const;

  // The whole state, id counter included. kFull reads every spilled message back.
  pb::Snapshot TakeSnapshot(SnapshotForm form = SnapshotForm::kFull) const;
  // Replaces the state; InvalidArgument if malformed. Messages of a full snapshot beyond a window
  // are appended to the spill; a local one expects its spilled messages there already.
  Status Restore(const pb::Snapshot& snap);
  // What the spill must keep for a restart from a local snapshot taken now (see SpillKeep).
  SpillKeep SpillKeepNow() const;
  uint64_t spilled_messages() const;  // in every queue's spill now
  uint64_t spilled_bytes() const;     // their bodies

  const pb::Exchange* FindExchange(const std::string& name) const;
  const pb::Queue* FindQueue(const std::string& name) const;
  std::vector<std::string> ExchangeNames() const;  // sorted
  std::vector<std::string> QueueNames() const;     // sorted
  std::vector<pb::Binding> Bindings() const;       // explicit ones (not the default exchange's)
  std::optional<QueueStats> Stats(const std::string& queue) const;
  std::vector<QueueStats> AllStats() const;                                // sorted by name
  std::vector<uint64_t> ReadyIds(const std::string& queue) const;          // head first
  std::vector<std::string> ConsumerIds(const std::string& queue) const;    // registration order
  std::vector<uint64_t> UnackedIds(const std::string& consumer_id) const;  // ascending
  // The messages a consumer holds (delivered, not yet acked), as the deliveries that gave them,
  // ascending id: what a node re-sends to its connection after installing a snapshot.
  std::vector<Delivery> Held(const std::string& consumer_id) const;
  std::optional<int64_t> NextExpiryUnixMs() const;  // earliest expiry at a queue head
  bool dispatch_pending() const;
  uint64_t next_message_id() const;
  size_t binding_count() const;
  size_t consumer_count() const;

 private:
  ApplyResult ApplyOne(const pb::Command& cmd);
  ApplyResult ApplyBatch(const pb::Batch& batch);

  struct Consumer {
    std::string id, owner, queue;
    uint32_t credit = 0;
    bool no_ack = false, exclusive = false, pull = false;
    std::map<uint64_t, StoredMessage> unacked;  // acks come out of order; bounded by credit
  };
  struct Queue {
    pb::Queue def;
    uint64_t uid = 0;                 // key in the spill
    std::deque<StoredMessage> ready;  // the in-memory window, sorted by id
    uint64_t spilled = 0;             // ready messages after the window, in the spill
    uint64_t spilled_bytes = 0;
    uint64_t spill_cursor = 0;  // spilled messages have ids >= this (and > every window id)
    uint64_t ready_bytes = 0;   // window and spilled together
    uint64_t unacked = 0;
    uint64_t unacked_bytes = 0;
    std::vector<std::string> consumers;  // push consumers in registration order
    size_t round_robin = 0;
    bool had_consumer = false;
    pb::QueueCounters counters;
  };
  // (routing key, queue, arguments): sorted by key first so a direct exchange finds its queues
  // with one range scan.
  using BindingKey = std::tuple<std::string, std::string, std::string>;
  struct Ctx;

  void InitDefaults();
  // Commands.
  void DeclareExchange(const pb::DeclareExchange& c, Ctx& ctx);
  void DeleteExchange(const pb::DeleteExchange& c, Ctx& ctx);
  void DeclareQueue(const pb::DeclareQueue& c, Ctx& ctx);
  void DeleteQueue(const pb::DeleteQueue& c, Ctx& ctx);
  void PurgeQueue(const pb::PurgeQueue& c, Ctx& ctx);
  void Bind(const pb::Bind& c, Ctx& ctx);
  void Unbind(const pb::Unbind& c, Ctx& ctx);
  void Publish(const pb::Publish& c, Ctx& ctx);
  void Consume(const pb::Consume& c, Ctx& ctx);
  void Cancel(const pb::Cancel& c, Ctx& ctx);
  void SetCredit(const pb::SetCredit& c, Ctx& ctx);
  void Ack(const pb::Ack& c, Ctx& ctx);
  void Nack(const pb::Nack& c, Ctx& ctx);
  void Recover(const pb::Recover& c, Ctx& ctx);
  void DropOwner(const pb::DropOwner& c, Ctx& ctx);
  void Get(const pb::Get& c, Ctx& ctx);
  void ExpireAll(Ctx& ctx);

  // Checks shared by commands (no state change).
  bool CheckName(const std::string& what, const std::string& name, Ctx& ctx) const;
  Queue* QueueForUse(const std::string& name, const std::string& owner, Ctx& ctx);
  Consumer* FindConsumer(const std::string& id);
  bool CheckIds(const Consumer& c, const google::protobuf::RepeatedField<uint64_t>& ids,
                Ctx& ctx) const;

  // Mutations shared by commands.
  std::set<std::string> Route(const std::string& exchange, const std::string& routing_key) const;
  void Enqueue(const std::string& exchange, const std::string& routing_key,
               std::shared_ptr<const Payload> payload, std::optional<int64_t> expiration_ms,
               Ctx& ctx);
  bool EnqueueOne(Queue& q, std::shared_ptr<const Payload> payload,
                  std::optional<int64_t> expiration_ms, Ctx& ctx);
  void EnforceMaxLength(Queue& q, Ctx& ctx);
  void DeadLetter(Queue& q, StoredMessage m, pb::DeadLetterReason reason, Ctx& ctx);
  void ReturnToQueue(Queue& q, StoredMessage m, Ctx& ctx);
  void Settle(Queue& q, Consumer& c, uint64_t id);  // removes from unacked, counts the ack
  StoredMessage TakeUnacked(Queue& q, Consumer& c, uint64_t id);
  void RequeueAll(Consumer& c, Ctx& ctx);
  void RemoveConsumer(const std::string& id, Ctx& ctx);  // requeues, then auto-delete check
  void DeleteQueueNow(const std::string& name, Ctx& ctx);
  void RemoveBinding(const std::string& exchange, const BindingKey& key, Ctx& ctx);
  void ExpireHead(Queue& q, Ctx& ctx);
  // The window and the spill.
  static uint64_t ReadyCount(const Queue& q);
  void PushBack(Queue& q, StoredMessage m);  // to the window, or to the spill once it is full
  StoredMessage PopFront(Queue& q);          // then refills the window when it is half empty
  void Refill(Queue& q);
  std::vector<pb::Message> ReadSpilled(const Queue& q, uint64_t max_count) const;
  Status RestoreReady(const pb::QueueState& qs, Queue& q);
  void DispatchAll(Ctx& ctx);
  void DispatchQueue(Queue& q, Ctx& ctx);
  bool HasCapacity(const Consumer& c) const;
  void Deliver(Queue& q, Consumer& c, Ctx& ctx);
  void Clear();

  BrokerOptions options_;
  std::unique_ptr<MessageSpill> owned_spill_;  // when the shell gave none
  MessageSpill* spill_ = nullptr;
  uint64_t next_queue_uid_ = 1;
  uint64_t last_applied_ = 0;
  uint64_t next_message_id_ = 1;
  bool dispatch_pending_ = false;
  std::map<std::string, pb::Exchange> exchanges_;
  std::map<std::string, std::set<BindingKey>> bindings_;  // exchange -> bindings
  // queue -> (exchange, routing key, arguments): to unbind a deleted queue without a scan.
  std::map<std::string, std::set<std::tuple<std::string, std::string, std::string>>>
      bindings_by_queue_;
  size_t binding_count_ = 0;
  std::map<std::string, Queue> queues_;
  std::map<std::string, Consumer> consumers_;
};

}  // namespace haven::mq
