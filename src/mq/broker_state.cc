#include "mq/broker_state.h"

#include <algorithm>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>

#include "mq/topic.h"
#include "mq/x_death.h"

namespace haven::mq {
namespace {

constexpr size_t kMaxConsumerIdBytes = 4 * kMaxNameBytes;  // "node/conn/channel/tag"
constexpr const char* kVhost = " in vhost '/'";

std::string Q(const std::string& s) { return "'" + s + "'"; }

bool HasPrefix(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// "node" owns "node/conn" and "node/conn/..." but not "node2/...".
bool OwnedBy(const std::string& owner, const std::string& prefix) {
  return owner == prefix ||
         (HasPrefix(owner, prefix) && owner.size() > prefix.size() && owner[prefix.size()] == '/');
}

const char* TypeName(pb::ExchangeType t) {
  switch (t) {
    case pb::EXCHANGE_DIRECT:
      return "direct";
    case pb::EXCHANGE_FANOUT:
      return "fanout";
    case pb::EXCHANGE_TOPIC:
      return "topic";
    case pb::EXCHANGE_HEADERS:
      return "headers";
    default:
      return "unknown";
  }
}

const char* Bool(bool b) { return b ? "true" : "false"; }

uint64_t Size(const StoredMessage& m) { return m.payload->body.size(); }

bool Expired(const StoredMessage& m, int64_t now) {
  return m.expires_at_unix_ms != 0 && now > m.expires_at_unix_ms;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  if (b > 0 && a > std::numeric_limits<int64_t>::max() - b) {
    return std::numeric_limits<int64_t>::max();
  }
  return a + b;
}

void InsertById(std::deque<StoredMessage>& ready, StoredMessage m) {
  auto it = std::lower_bound(ready.begin(), ready.end(), m.id,
                             [](const StoredMessage& a, uint64_t id) { return a.id < id; });
  ready.insert(it, std::move(m));
}

pb::Message ToProto(const StoredMessage& m) {
  pb::Message out;
  out.set_id(m.id);
  out.set_exchange(m.payload->exchange);
  out.set_routing_key(m.payload->routing_key);
  out.set_properties(m.payload->properties);
  out.set_body(m.payload->body);
  out.set_expires_at_unix_ms(m.expires_at_unix_ms);
  out.set_delivery_count(m.delivery_count);
  out.set_redelivered(m.redelivered);
  if (m.payload->death.reason() != pb::DEAD_LETTER_NONE) *out.mutable_death() = m.payload->death;
  return out;
}

StoredMessage FromProto(const pb::Message& in) {
  auto payload = std::make_shared<Payload>();
  payload->exchange = in.exchange();
  payload->routing_key = in.routing_key();
  payload->properties = in.properties();
  payload->body = in.body();
  payload->death = in.death();
  return StoredMessage{in.id(), in.expires_at_unix_ms(), in.delivery_count(), in.redelivered(),
                       std::move(payload)};
}

// One queue argument for the "inequivalent arg" message: its value, or "none" when absent.
template <typename T>
std::string ArgText(bool has, const T& v) {
  if (!has) return "none";
  if constexpr (std::is_same_v<T, std::string>) {
    return Q(v);
  } else {
    return Q(std::to_string(static_cast<int64_t>(v)));
  }
}

}  // namespace

Status BrokerError::ToStatus() const {
  switch (reply_code) {
    case 0:
      return Status::Ok();
    case kNoRoute:
    case kNotFound:
      return Status::NotFound(reply_text);
    case kAccessRefused:
      return Status(Code::kPermissionDenied, reply_text);
    case kResourceLocked:
    case kPreconditionFailed:
      return Status::Conflict(reply_text);
    case kResourceError:
      return Status::Unavailable(reply_text);
    case kInternalError:
      return Status::Internal(reply_text);
    default:
      return Status::InvalidArgument(reply_text);
  }
}

// What one Apply call produced, and the queues whose consumers may now get messages.
struct BrokerState::Ctx {
  int64_t now = 0;
  ApplyResult* r = nullptr;
  std::set<std::string> dirty;  // queues to dispatch at the end of the command

  bool failed() const { return !r->error.ok(); }
  void Fail(uint16_t code, const std::string& name, const std::string& text) {
    r->error = BrokerError{code, name + " - " + text};
  }
  void NotFound(const std::string& what, const std::string& name) {
    Fail(BrokerError::kNotFound, "NOT_FOUND", "no " + what + " " + Q(name) + kVhost);
  }
  void Precondition(const std::string& text) {
    Fail(BrokerError::kPreconditionFailed, "PRECONDITION_FAILED", text);
  }
  void AccessRefused(const std::string& text) {
    Fail(BrokerError::kAccessRefused, "ACCESS_REFUSED", text);
  }
  void ResourceError(const std::string& what, size_t limit) {
    Fail(BrokerError::kResourceError, "RESOURCE_ERROR",
         "too many " + what + " (limit " + std::to_string(limit) + ")");
  }
};

BrokerState::BrokerState(BrokerOptions options, MessageSpill* spill)
    : options_(options), spill_(spill) {
  options_.window = std::max<size_t>(options_.window, 1);
  if (spill_ == nullptr) {
    owned_spill_ = std::make_unique<MemorySpill>();
    spill_ = owned_spill_.get();
  }
  InitDefaults();
}

void BrokerState::InitDefaults() {
  for (const auto& [name, type] :
       {std::pair<const char*, pb::ExchangeType>{"", pb::EXCHANGE_DIRECT},
        {"amq.direct", pb::EXCHANGE_DIRECT},
        {"amq.fanout", pb::EXCHANGE_FANOUT},
        {"amq.topic", pb::EXCHANGE_TOPIC}}) {
    pb::Exchange& e = exchanges_[name];
    e.set_name(name);
    e.set_type(type);
    e.set_durable(true);
  }
}

// ---- Apply ----

ApplyResult BrokerState::Apply(uint64_t index, const pb::Command& cmd) {
  if (index <= last_applied_) {
    ApplyResult result;
    result.error = BrokerError{BrokerError::kInternalError,
                               "INTERNAL_ERROR - apply index " + std::to_string(index) +
                                   " is not after " + std::to_string(last_applied_)};
    return result;
  }
  ApplyResult result = cmd.has_batch() ? ApplyBatch(cmd.batch()) : ApplyOne(cmd);
  last_applied_ = index;
  return result;
}

ApplyResult BrokerState::ApplyBatch(const pb::Batch& batch) {
  ApplyResult result;
  if (static_cast<size_t>(batch.commands_size()) > options_.max_commands_per_batch) {
    result.error = BrokerError{BrokerError::kResourceError,
                               "RESOURCE_ERROR - a batch of " +
                                   std::to_string(batch.commands_size()) + " commands (limit " +
                                   std::to_string(options_.max_commands_per_batch) + ")"};
    return result;
  }
  result.batch.reserve(batch.commands_size());
  for (const pb::Command& cmd : batch.commands()) result.batch.push_back(ApplyOne(cmd));
  result.dispatch_pending = dispatch_pending_;
  return result;
}

ApplyResult BrokerState::ApplyOne(const pb::Command& cmd) {
  ApplyResult result;
  Ctx ctx;
  ctx.now = cmd.now_unix_ms();
  ctx.r = &result;
  switch (cmd.op_case()) {
    case pb::Command::kDeclareExchange:
      DeclareExchange(cmd.declare_exchange(), ctx);
      break;
    case pb::Command::kDeleteExchange:
      DeleteExchange(cmd.delete_exchange(), ctx);
      break;
    case pb::Command::kDeclareQueue:
      DeclareQueue(cmd.declare_queue(), ctx);
      break;
    case pb::Command::kDeleteQueue:
      DeleteQueue(cmd.delete_queue(), ctx);
      break;
    case pb::Command::kPurgeQueue:
      PurgeQueue(cmd.purge_queue(), ctx);
      break;
    case pb::Command::kBind:
      Bind(cmd.bind(), ctx);
      break;
    case pb::Command::kUnbind:
      Unbind(cmd.unbind(), ctx);
      break;
    case pb::Command::kPublish:
      Publish(cmd.publish(), ctx);
      break;
    case pb::Command::kConsume:
      Consume(cmd.consume(), ctx);
      break;
    case pb::Command::kCancel:
      Cancel(cmd.cancel(), ctx);
      break;
    case pb::Command::kSetCredit:
      SetCredit(cmd.set_credit(), ctx);
      break;
    case pb::Command::kAck:
      Ack(cmd.ack(), ctx);
      break;
    case pb::Command::kNack:
      Nack(cmd.nack(), ctx);
      break;
    case pb::Command::kRecover:
      Recover(cmd.recover(), ctx);
      break;
    case pb::Command::kDropOwner:
      DropOwner(cmd.drop_owner(), ctx);
      break;
    case pb::Command::kGet:
      Get(cmd.get(), ctx);
      break;
    case pb::Command::kExpire:
      ExpireAll(ctx);
      break;
    case pb::Command::kDispatch:
      break;  // DispatchAll below continues what is pending
    case pb::Command::kBatch:
      ctx.Fail(BrokerError::kNotAllowed, "NOT_ALLOWED", "a batch inside a batch");
      break;
    case pb::Command::OP_NOT_SET:
      ctx.Fail(BrokerError::kNotAllowed, "NOT_ALLOWED", "empty command");
      break;
  }
  if (!ctx.failed()) DispatchAll(ctx);
  result.dispatch_pending = dispatch_pending_;
  return result;
}

uint64_t BrokerState::last_applied() const { return last_applied_; }

// ---- checks ----

bool BrokerState::CheckName(const std::string& what, const std::string& name, Ctx& ctx) const {
  if (name.size() <= kMaxNameBytes) return true;
  ctx.Precondition(what + " is longer than " + std::to_string(kMaxNameBytes) + " bytes");
  return false;
}

// The queue `name` if it exists and `owner` may use it (exclusive queues belong to their
// connection); otherwise fails ctx with 404 or 405.
BrokerState::Queue* BrokerState::QueueForUse(const std::string& name, const std::string& owner,
                                             Ctx& ctx) {
  if (!CheckName("queue name", name, ctx)) return nullptr;
  auto it = queues_.find(name);
  if (it == queues_.end()) {
    ctx.NotFound("queue", name);
    return nullptr;
  }
  const std::string& excl = it->second.def.exclusive_owner();
  if (!excl.empty() && excl != owner) {
    ctx.Fail(BrokerError::kResourceLocked, "RESOURCE_LOCKED",
             "cannot obtain exclusive access to locked queue " + Q(name) + kVhost +
                 ". It could be originally declared on another connection or the exclusive "
                 "property value does not match that of the original declaration.");
    return nullptr;
  }
  return &it->second;
}

BrokerState::Consumer* BrokerState::FindConsumer(const std::string& id) {
  auto it = consumers_.find(id);
  return it == consumers_.end() ? nullptr : &it->second;
}

// Every id must be held unacked by `c`, once: the shell translated delivery tags to ids, so an
// unknown one is a client acking twice or acking a tag it never got (406, as RabbitMQ).
bool BrokerState::CheckIds(const Consumer& c, const google::protobuf::RepeatedField<uint64_t>& ids,
                           Ctx& ctx) const {
  if (static_cast<size_t>(ids.size()) > options_.max_ids_per_command) {
    ctx.Precondition("more than " + std::to_string(options_.max_ids_per_command) +
                     " delivery tags in one command");
    return false;
  }
  std::set<uint64_t> seen;
  for (uint64_t id : ids) {
    if (!c.unacked.contains(id) || !seen.insert(id).second) {
      ctx.Precondition("unknown delivery tag " + std::to_string(id));
      return false;
    }
  }
  return true;
}

// ---- exchanges ----

void BrokerState::DeclareExchange(const pb::DeclareExchange& c, Ctx& ctx) {
  if (!CheckName("exchange name", c.name(), ctx)) return;
  if (c.name().empty()) return ctx.AccessRefused("operation not permitted on the default exchange");
  auto it = exchanges_.find(c.name());
  if (c.passive()) {
    if (it == exchanges_.end()) ctx.NotFound("exchange", c.name());
    return;
  }
  if (it != exchanges_.end()) {
    const pb::Exchange& e = it->second;
    auto inequivalent = [&](const char* arg, const std::string& got, const std::string& cur) {
      ctx.Precondition(std::string("inequivalent arg '") + arg + "' for exchange " + Q(c.name()) +
                       kVhost + ": received " + Q(got) + " but current is " + Q(cur));
    };
    if (e.type() != c.type()) return inequivalent("type", TypeName(c.type()), TypeName(e.type()));
    if (e.durable() != c.durable()) {
      return inequivalent("durable", Bool(c.durable()), Bool(e.durable()));
    }
    if (e.auto_delete() != c.auto_delete()) {
      return inequivalent("auto_delete", Bool(c.auto_delete()), Bool(e.auto_delete()));
    }
    if (e.internal() != c.internal()) {
      return inequivalent("internal", Bool(c.internal()), Bool(e.internal()));
    }
    return;
  }
  if (c.type() == pb::EXCHANGE_HEADERS) {
    return ctx.Fail(BrokerError::kNotImplemented, "NOT_IMPLEMENTED",
                    "headers exchanges are not supported");
  }
  if (c.type() < pb::EXCHANGE_DIRECT || c.type() > pb::EXCHANGE_TOPIC) {
    return ctx.Fail(BrokerError::kNotAllowed, "COMMAND_INVALID",
                    "unknown exchange type for exchange " + Q(c.name()));
  }
  if (HasPrefix(c.name(), "amq.")) {
    return ctx.AccessRefused("exchange name " + Q(c.name()) + " contains reserved prefix 'amq.*'");
  }
  if (exchanges_.size() >= options_.max_exchanges) {
    return ctx.ResourceError("exchanges", options_.max_exchanges);
  }
  if (c.arguments().size() > options_.max_message_bytes) {
    return ctx.Precondition("exchange arguments too large");
  }
  pb::Exchange& e = exchanges_[c.name()];
  e.set_name(c.name());
  e.set_type(c.type());
  e.set_durable(c.durable());
  e.set_auto_delete(c.auto_delete());
  e.set_internal(c.internal());
  e.set_arguments(c.arguments());
}

void BrokerState::DeleteExchange(const pb::DeleteExchange& c, Ctx& ctx) {
  if (!CheckName("exchange name", c.name(), ctx)) return;
  if (c.name().empty()) return ctx.AccessRefused("operation not permitted on the default exchange");
  if (HasPrefix(c.name(), "amq.")) {
    return ctx.AccessRefused("operation not permitted on exchange " + Q(c.name()));
  }
  if (!exchanges_.contains(c.name())) return;  // RabbitMQ: deleting nothing succeeds
  auto b = bindings_.find(c.name());
  if (c.if_unused() && b != bindings_.end() && !b->second.empty()) {
    return ctx.Precondition("exchange " + Q(c.name()) + kVhost + " in use");
  }
  if (b != bindings_.end()) {
    for (const auto& [key, queue, args] : b->second) {
      bindings_by_queue_[queue].erase({c.name(), key, args});
      if (bindings_by_queue_[queue].empty()) bindings_by_queue_.erase(queue);
      --binding_count_;
    }
    bindings_.erase(b);
  }
  exchanges_.erase(c.name());
  ctx.r->deleted_exchanges.push_back(c.name());
}

// ---- queues ----

namespace {

// Validates the arguments of a new queue; returns the failure text or "".
std::string InvalidQueueArgs(const pb::DeclareQueue& c) {
  const pb::QueueArgs& a = c.args();
  auto invalid = [&](const char* arg) {
    return std::string("invalid arg '") + arg + "' for queue " + Q(c.name()) + kVhost;
  };
  if (a.has_delivery_limit() && a.delivery_limit() < 0) return invalid("x-delivery-limit");
  if (a.has_message_ttl_ms() && a.message_ttl_ms() < 0) return invalid("x-message-ttl");
  if (a.has_max_length() && a.max_length() < 0) return invalid("x-max-length");
  if (a.has_max_length_bytes() && a.max_length_bytes() < 0) return invalid("x-max-length-bytes");
  if (a.has_overflow() && a.overflow() != pb::OVERFLOW_DROP_HEAD &&
      a.overflow() != pb::OVERFLOW_REJECT_PUBLISH) {
    return invalid("x-overflow");
  }
  if (a.dead_letter_exchange().size() > kMaxNameBytes) return invalid("x-dead-letter-exchange");
  if (a.dead_letter_routing_key().size() > kMaxNameBytes) {
    return invalid("x-dead-letter-routing-key");
  }
  if (a.has_queue_type() && a.queue_type() != "classic" && a.queue_type() != "quorum") {
    return invalid("x-queue-type");
  }
  if (a.queue_type() == "quorum") {
    // RabbitMQ refuses these properties for quorum queues.
    auto property = [&](const char* p) {
      return std::string("invalid property '") + p + "' for queue " + Q(c.name()) + kVhost;
    };
    if (!c.durable()) return property("non-durable");
    if (c.exclusive()) return property("exclusive");
    if (c.auto_delete()) return property("auto-delete");
  }
  return "";
}

// Compares a redeclare with the queue; returns the failure text or "". A redeclare that omits
// x-queue-type matches any type (RabbitMQ 3.11+ is as lenient; clients often omit it).
std::string Inequivalence(const pb::Queue& q, const pb::DeclareQueue& c) {
  auto differ = [&](const char* arg, const std::string& got, const std::string& cur) {
    return std::string("inequivalent arg '") + arg + "' for queue " + Q(c.name()) + kVhost +
           ": received " + got + " but current is " + cur;
  };
  if (q.durable() != c.durable()) {
    return differ("durable", Q(Bool(c.durable())), Q(Bool(q.durable())));
  }
  if (!q.exclusive_owner().empty() != c.exclusive()) {
    return differ("exclusive", Q(Bool(c.exclusive())), Q(Bool(!q.exclusive_owner().empty())));
  }
  if (q.auto_delete() != c.auto_delete()) {
    return differ("auto_delete", Q(Bool(c.auto_delete())), Q(Bool(q.auto_delete())));
  }
  const pb::QueueArgs& a = c.args();
  const pb::QueueArgs& b = q.args();
#define HAVEN_MQ_COMPARE(field, name)                                                              \
  if (a.has_##field() != b.has_##field() || a.field() != b.field()) {                              \
    return differ(name, ArgText(a.has_##field(), a.field()), ArgText(b.has_##field(), b.field())); \
  }
  HAVEN_MQ_COMPARE(dead_letter_exchange, "x-dead-letter-exchange")
  HAVEN_MQ_COMPARE(dead_letter_routing_key, "x-dead-letter-routing-key")
  HAVEN_MQ_COMPARE(delivery_limit, "x-delivery-limit")
  HAVEN_MQ_COMPARE(message_ttl_ms, "x-message-ttl")
  HAVEN_MQ_COMPARE(max_length, "x-max-length")
  HAVEN_MQ_COMPARE(max_length_bytes, "x-max-length-bytes")
  HAVEN_MQ_COMPARE(overflow, "x-overflow")
#undef HAVEN_MQ_COMPARE
  if (a.has_queue_type() && a.queue_type() != b.queue_type()) {
    return differ("x-queue-type", ArgText(true, a.queue_type()),
                  ArgText(b.has_queue_type(), b.queue_type()));
  }
  return "";
}

}  // namespace

void BrokerState::DeclareQueue(const pb::DeclareQueue& c, Ctx& ctx) {
  if (!CheckName("queue name", c.name(), ctx)) return;
  if (c.name().empty()) return ctx.Precondition("queue name must not be empty");
  if (c.owner().size() > kMaxConsumerIdBytes) return ctx.Precondition("owner too long");
  auto it = queues_.find(c.name());
  if (it == queues_.end() && c.passive()) return ctx.NotFound("queue", c.name());
  if (it != queues_.end()) {
    Queue* q = QueueForUse(c.name(), c.owner(), ctx);
    if (q == nullptr) return;
    if (!c.passive()) {
      if (std::string text = Inequivalence(q->def, c); !text.empty()) return ctx.Precondition(text);
    }
    ctx.r->message_count = ReadyCount(*q);
    ctx.r->consumer_count = q->consumers.size();
    return;
  }
  if (HasPrefix(c.name(), "amq.") && !c.server_named()) {
    return ctx.AccessRefused("queue name " + Q(c.name()) + " contains reserved prefix 'amq.*'");
  }
  if (c.exclusive() && c.owner().empty()) {
    return ctx.Precondition("exclusive queue " + Q(c.name()) + " declared without an owner");
  }
  if (std::string text = InvalidQueueArgs(c); !text.empty()) return ctx.Precondition(text);
  if (queues_.size() >= options_.max_queues)
    return ctx.ResourceError("queues", options_.max_queues);
  Queue& q = queues_[c.name()];
  q.uid = next_queue_uid_++;
  q.def.set_name(c.name());
  q.def.set_durable(c.durable());
  q.def.set_exclusive_owner(c.exclusive() ? c.owner() : "");
  q.def.set_auto_delete(c.auto_delete());
  *q.def.mutable_args() = c.args();
}

void BrokerState::DeleteQueue(const pb::DeleteQueue& c, Ctx& ctx) {
  if (!CheckName("queue name", c.name(), ctx)) return;
  if (!queues_.contains(c.name())) return;  // RabbitMQ: deleting nothing succeeds with 0
  Queue* q = QueueForUse(c.name(), c.owner(), ctx);
  if (q == nullptr) return;
  if (c.if_unused() && !q->consumers.empty()) {
    return ctx.Precondition("queue " + Q(c.name()) + kVhost + " in use");
  }
  if (c.if_empty() && ReadyCount(*q) != 0) {
    return ctx.Precondition("queue " + Q(c.name()) + kVhost + " not empty");
  }
  ctx.r->message_count = ReadyCount(*q);
  DeleteQueueNow(c.name(), ctx);
}

void BrokerState::PurgeQueue(const pb::PurgeQueue& c, Ctx& ctx) {
  Queue* q = QueueForUse(c.name(), c.owner(), ctx);
  if (q == nullptr) return;
  ctx.r->message_count = ReadyCount(*q);
  q->ready.clear();
  q->ready_bytes = 0;
  // The spilled records stay (a replay may read them) but are skipped from now on.
  q->spilled = 0;
  q->spilled_bytes = 0;
  q->spill_cursor = next_message_id_;
}

// Cancels the queue's consumers (their unacked messages go with the queue, as in RabbitMQ),
// removes its bindings (auto-deleting exchanges left without any) and the queue.
void BrokerState::DeleteQueueNow(const std::string& name, Ctx& ctx) {
  auto qit = queues_.find(name);
  if (qit == queues_.end()) return;
  for (const std::string& id : qit->second.consumers) {
    ctx.r->cancelled_consumers.push_back(id);
    consumers_.erase(id);
  }
  std::erase_if(consumers_,
                [&](const auto& kv) { return kv.second.queue == name; });  // get holders
  queues_.erase(qit);
  ctx.dirty.erase(name);
  if (auto b = bindings_by_queue_.find(name); b != bindings_by_queue_.end()) {
    auto bindings = b->second;  // RemoveBinding edits the index
    for (const auto& [exchange, key, args] : bindings) {
      RemoveBinding(exchange, {key, name, args}, ctx);
    }
  }
  ctx.r->deleted_queues.push_back(name);
}

// ---- bindings ----

void BrokerState::Bind(const pb::Bind& c, Ctx& ctx) {
  if (!CheckName("exchange name", c.exchange(), ctx) ||
      !CheckName("routing key", c.routing_key(), ctx)) {
    return;
  }
  if (c.exchange().empty()) {
    return ctx.AccessRefused("operation not permitted on the default exchange");
  }
  Queue* q = QueueForUse(c.queue(), c.owner(), ctx);
  if (q == nullptr) return;
  if (!exchanges_.contains(c.exchange())) return ctx.NotFound("exchange", c.exchange());
  if (c.arguments().size() > 64 * 1024) return ctx.Precondition("binding arguments too large");
  BindingKey key{c.routing_key(), c.queue(), c.arguments()};
  if (bindings_[c.exchange()].contains(key)) return;
  if (binding_count_ >= options_.max_bindings) {
    if (bindings_[c.exchange()].empty()) bindings_.erase(c.exchange());
    return ctx.ResourceError("bindings", options_.max_bindings);
  }
  bindings_[c.exchange()].insert(key);
  bindings_by_queue_[c.queue()].insert({c.exchange(), c.routing_key(), c.arguments()});
  ++binding_count_;
}

void BrokerState::Unbind(const pb::Unbind& c, Ctx& ctx) {
  if (!CheckName("exchange name", c.exchange(), ctx) ||
      !CheckName("routing key", c.routing_key(), ctx)) {
    return;
  }
  if (c.exchange().empty()) {
    return ctx.AccessRefused("operation not permitted on the default exchange");
  }
  if (QueueForUse(c.queue(), c.owner(), ctx) == nullptr) return;
  if (!exchanges_.contains(c.exchange())) return ctx.NotFound("exchange", c.exchange());
  RemoveBinding(c.exchange(), {c.routing_key(), c.queue(), c.arguments()}, ctx);
}

void BrokerState::RemoveBinding(const std::string& exchange, const BindingKey& key, Ctx& ctx) {
  auto b = bindings_.find(exchange);
  if (b == bindings_.end() || b->second.erase(key) == 0) return;  // unbinding nothing succeeds
  const auto& [rk, queue, args] = key;
  if (auto r = bindings_by_queue_.find(queue); r != bindings_by_queue_.end()) {
    r->second.erase({exchange, rk, args});
    if (r->second.empty()) bindings_by_queue_.erase(r);
  }
  --binding_count_;
  if (!b->second.empty()) return;
  bindings_.erase(b);
  auto e = exchanges_.find(exchange);
  if (e != exchanges_.end() && e->second.auto_delete()) {
    exchanges_.erase(e);
    ctx.r->deleted_exchanges.push_back(exchange);
  }
}

std::set<std::string> BrokerState::Route(const std::string& exchange,
                                         const std::string& routing_key) const {
  std::set<std::string> out;
  if (exchange.empty()) {
    if (queues_.contains(routing_key)) out.insert(routing_key);
    return out;
  }
  auto e = exchanges_.find(exchange);
  auto b = bindings_.find(exchange);
  if (e == exchanges_.end() || b == bindings_.end()) return out;
  switch (e->second.type()) {
    case pb::EXCHANGE_DIRECT:
      for (auto it = b->second.lower_bound({routing_key, "", ""});
           it != b->second.end() && std::get<0>(*it) == routing_key; ++it) {
        out.insert(std::get<1>(*it));
      }
      break;
    case pb::EXCHANGE_FANOUT:
      for (const auto& key : b->second) out.insert(std::get<1>(key));
      break;
    case pb::EXCHANGE_TOPIC:
      // A linear scan; a trie over binding words (as RabbitMQ has) if topic exchanges grow big.
      for (const auto& key : b->second) {
        if (TopicMatches(std::get<0>(key), routing_key)) out.insert(std::get<1>(key));
      }
      break;
    default:
      break;
  }
  return out;
}

// ---- publish and enqueue ----

void BrokerState::Publish(const pb::Publish& c, Ctx& ctx) {
  if (!CheckName("exchange name", c.exchange(), ctx) ||
      !CheckName("routing key", c.routing_key(), ctx)) {
    return;
  }
  auto e = exchanges_.find(c.exchange());
  if (e == exchanges_.end()) return ctx.NotFound("exchange", c.exchange());
  if (e->second.internal()) {
    return ctx.AccessRefused("cannot publish to internal exchange " + Q(c.exchange()) + kVhost);
  }
  if (c.body().size() > options_.max_message_bytes) {
    return ctx.Precondition("message size " + std::to_string(c.body().size()) +
                            " is larger than configured max size " +
                            std::to_string(options_.max_message_bytes));
  }
  if (c.properties().size() > 64 * 1024) {
    return ctx.Precondition("content header larger than 65536 bytes");
  }
  if (c.has_expiration_ms() && c.expiration_ms() < 0) {
    return ctx.Precondition("invalid expiration " + std::to_string(c.expiration_ms()));
  }
  auto payload = std::make_shared<Payload>();
  payload->exchange = c.exchange();
  payload->routing_key = c.routing_key();
  payload->properties = c.properties();
  payload->body = c.body();
  std::set<std::string> targets = Route(c.exchange(), c.routing_key());
  for (const std::string& name : targets) {
    Queue& q = queues_.at(name);
    uint64_t id = next_message_id_;
    std::optional<int64_t> expiration;
    if (c.has_expiration_ms()) expiration = c.expiration_ms();
    if (EnqueueOne(q, payload, expiration, ctx)) {
      ctx.r->routed_queues.push_back(name);
      ctx.r->message_ids.push_back(id);
    } else {
      ctx.r->rejected_queues.push_back(name);
    }
  }
  ctx.r->unroutable = c.mandatory() && targets.empty();
}

// Appends a message to q unless q is full under reject-publish (or the broker's per-queue cap);
// returns whether it was taken. Its id is next_message_id_ at the call.
bool BrokerState::EnqueueOne(Queue& q, std::shared_ptr<const Payload> payload,
                             std::optional<int64_t> expiration_ms, Ctx& ctx) {
  const pb::QueueArgs& a = q.def.args();
  const uint64_t size = payload->body.size();
  if (ReadyCount(q) + q.unacked >= options_.max_queue_messages) return false;
  if (a.overflow() == pb::OVERFLOW_REJECT_PUBLISH) {
    if (a.has_max_length() && ReadyCount(q) >= static_cast<uint64_t>(a.max_length())) {
      return false;
    }
    if (a.has_max_length_bytes() &&
        q.ready_bytes + size > static_cast<uint64_t>(a.max_length_bytes())) {
      return false;
    }
  }
  std::optional<int64_t> ttl = expiration_ms;
  if (a.has_message_ttl_ms()) ttl = std::min(ttl.value_or(a.message_ttl_ms()), a.message_ttl_ms());
  StoredMessage m;
  m.id = next_message_id_++;
  // 0 means "never"; a message that expires at the epoch is pushed one ms later.
  if (ttl) m.expires_at_unix_ms = std::max<int64_t>(SaturatingAdd(ctx.now, *ttl), 1);
  m.payload = std::move(payload);
  PushBack(q, std::move(m));
  q.counters.set_published(q.counters.published() + 1);
  ctx.dirty.insert(q.def.name());
  EnforceMaxLength(q, ctx);
  return true;
}

// drop-head: the oldest ready messages go (dead-lettered with reason maxlen) until q fits.
void BrokerState::EnforceMaxLength(Queue& q, Ctx& ctx) {
  const pb::QueueArgs& a = q.def.args();
  if (a.overflow() != pb::OVERFLOW_DROP_HEAD) return;
  auto over = [&] {
    return (a.has_max_length() && ReadyCount(q) > static_cast<uint64_t>(a.max_length())) ||
           (a.has_max_length_bytes() &&
            q.ready_bytes > static_cast<uint64_t>(a.max_length_bytes()));
  };
  while (!q.ready.empty() && over()) {
    StoredMessage m = PopFront(q);
    DeadLetter(q, std::move(m), pb::DEAD_LETTER_MAXLEN, ctx);
  }
}

// Republishes m to q's dead-letter exchange as new messages (one per target queue), or drops it.
// The copies carry x-death as RabbitMQ writes it (AddDeath also strips the expiration property,
// and here the copies carry no per-message TTL); properties that do not parse are kept as they are.
void BrokerState::DeadLetter(Queue& q, StoredMessage m, pb::DeadLetterReason reason, Ctx& ctx) {
  DeadLettered record{q.def.name(), m.id, reason, {}};
  const pb::QueueArgs& a = q.def.args();
  const uint32_t deaths = m.payload->death.count();
  std::set<std::string> targets;
  if (a.has_dead_letter_exchange() && deaths < options_.max_dead_letter_count &&
      exchanges_.contains(a.dead_letter_exchange())) {
    const std::string& rk =
        a.has_dead_letter_routing_key() ? a.dead_letter_routing_key() : m.payload->routing_key;
    targets = Route(a.dead_letter_exchange(), rk);
    if (!targets.empty()) {
      auto payload = std::make_shared<Payload>();
      payload->exchange = a.dead_letter_exchange();
      payload->routing_key = rk;
      DeathEvent event{q.def.name(),
                       std::string(DeathReasonName(reason)),
                       m.payload->exchange,
                       {m.payload->routing_key},
                       static_cast<uint64_t>(std::max<int64_t>(ctx.now, 0)) / 1000};
      auto properties = AddDeath(m.payload->properties, event);
      payload->properties = properties.ok() ? std::move(*properties) : m.payload->properties;
      payload->body = m.payload->body;
      pb::Death& d = payload->death;
      d.set_reason(reason);
      d.set_queue(q.def.name());
      d.set_exchange(m.payload->exchange);
      d.set_routing_key(m.payload->routing_key);
      d.set_time_unix_ms(ctx.now);
      d.set_count(deaths + 1);
      std::shared_ptr<const Payload> shared = std::move(payload);
      for (const std::string& name : targets) {
        auto t = queues_.find(name);
        if (t != queues_.end() && EnqueueOne(t->second, shared, std::nullopt, ctx)) {
          record.to_queues.push_back(name);
        }
      }
    }
  }
  if (record.to_queues.empty()) {
    q.counters.set_dropped(q.counters.dropped() + 1);
  } else {
    q.counters.set_dead_lettered(q.counters.dead_lettered() + 1);
  }
  ctx.r->dead_lettered.push_back(std::move(record));
}

// ---- consumers ----

void BrokerState::Consume(const pb::Consume& c, Ctx& ctx) {
  if (c.consumer_id().empty() || c.consumer_id().size() > kMaxConsumerIdBytes ||
      c.owner().size() > kMaxConsumerIdBytes) {
    return ctx.Precondition("invalid consumer id " + Q(c.consumer_id()));
  }
  Queue* q = QueueForUse(c.queue(), c.owner(), ctx);
  if (q == nullptr) return;
  if (consumers_.contains(c.consumer_id())) {
    return ctx.Fail(BrokerError::kNotAllowed, "NOT_ALLOWED",
                    "attempt to reuse consumer tag " + Q(c.consumer_id()));
  }
  bool exclusive_held = std::any_of(q->consumers.begin(), q->consumers.end(),
                                    [&](const auto& id) { return consumers_.at(id).exclusive; });
  if (exclusive_held || (c.exclusive() && !q->consumers.empty())) {
    return ctx.AccessRefused("queue " + Q(c.queue()) + kVhost + " in exclusive use");
  }
  if (consumers_.size() >= options_.max_consumers) {
    return ctx.ResourceError("consumers", options_.max_consumers);
  }
  Consumer& consumer = consumers_[c.consumer_id()];
  consumer.id = c.consumer_id();
  consumer.owner = c.owner();
  consumer.queue = c.queue();
  consumer.credit = c.credit();
  consumer.no_ack = c.no_ack();
  consumer.exclusive = c.exclusive();
  q->consumers.push_back(c.consumer_id());
  q->had_consumer = true;
  ctx.r->consumer_count = q->consumers.size();
  ctx.dirty.insert(c.queue());
}

void BrokerState::Cancel(const pb::Cancel& c, Ctx& ctx) {
  Consumer* consumer = FindConsumer(c.consumer_id());
  if (consumer == nullptr || consumer->pull) return;  // cancelling nothing succeeds
  RemoveConsumer(c.consumer_id(), ctx);
}

void BrokerState::SetCredit(const pb::SetCredit& c, Ctx& ctx) {
  Consumer* consumer = FindConsumer(c.consumer_id());
  if (consumer == nullptr) return;
  consumer->credit = c.credit();
  ctx.dirty.insert(consumer->queue);
}

void BrokerState::Ack(const pb::Ack& c, Ctx& ctx) {
  // A consumer that is gone (cancelled, its queue deleted) took its messages back to the queue:
  // a late ack or nack from it changes nothing.
  Consumer* consumer = FindConsumer(c.consumer_id());
  if (consumer == nullptr) return;
  if (!CheckIds(*consumer, c.message_ids(), ctx)) return;
  Queue& q = queues_.at(consumer->queue);
  for (uint64_t id : c.message_ids()) {
    TakeUnacked(q, *consumer, id);
    q.counters.set_acked(q.counters.acked() + 1);
  }
  ctx.dirty.insert(consumer->queue);
  if (consumer->pull && consumer->unacked.empty()) consumers_.erase(c.consumer_id());
}

void BrokerState::Nack(const pb::Nack& c, Ctx& ctx) {
  // A consumer that is gone (cancelled, its queue deleted) took its messages back to the queue:
  // a late ack or nack from it changes nothing.
  Consumer* consumer = FindConsumer(c.consumer_id());
  if (consumer == nullptr) return;
  if (!CheckIds(*consumer, c.message_ids(), ctx)) return;
  std::vector<uint64_t> ids(c.message_ids().begin(), c.message_ids().end());
  std::sort(ids.begin(), ids.end());
  const std::string queue = consumer->queue;
  Queue& q = queues_.at(queue);
  for (uint64_t id : ids) {
    StoredMessage m = TakeUnacked(q, *consumer, id);
    if (c.requeue()) {
      ReturnToQueue(q, std::move(m), ctx);
    } else {
      DeadLetter(q, std::move(m), pb::DEAD_LETTER_REJECTED, ctx);
    }
  }
  ctx.dirty.insert(queue);
  if (consumer->pull && consumer->unacked.empty()) consumers_.erase(c.consumer_id());
}

void BrokerState::Recover(const pb::Recover& c, Ctx& ctx) {
  Consumer* consumer = FindConsumer(c.consumer_id());
  if (consumer == nullptr) return;
  RequeueAll(*consumer, ctx);
  if (consumer->pull) consumers_.erase(c.consumer_id());
}

// Whether DropOwner `c` drops what `owner` owns.
static bool DropsOwner(const pb::DropOwner& c, const std::string& owner) {
  bool match = c.raw_prefix() ? HasPrefix(owner, c.owner()) : OwnedBy(owner, c.owner());
  return match && (c.except().empty() || !OwnedBy(owner, c.except()));
}

void BrokerState::DropOwner(const pb::DropOwner& c, Ctx& ctx) {
  if (c.owner().empty()) return ctx.Precondition("DropOwner needs an owner");
  std::vector<std::string> ids;
  for (const auto& [id, consumer] : consumers_) {
    if (DropsOwner(c, consumer.owner)) ids.push_back(id);
  }
  for (const std::string& id : ids) {
    if (consumers_.contains(id)) RemoveConsumer(id, ctx);  // an auto-delete may have taken it
  }
  std::vector<std::string> exclusive;
  for (const auto& [name, q] : queues_) {
    if (!q.def.exclusive_owner().empty() && DropsOwner(c, q.def.exclusive_owner())) {
      exclusive.push_back(name);
    }
  }
  for (const std::string& name : exclusive) DeleteQueueNow(name, ctx);
}

// Puts every unacked message of c back in its queue (redelivered), in id order.
void BrokerState::RequeueAll(Consumer& c, Ctx& ctx) {
  Queue& q = queues_.at(c.queue);
  while (!c.unacked.empty()) {
    StoredMessage m = TakeUnacked(q, c, c.unacked.begin()->first);
    ReturnToQueue(q, std::move(m), ctx);
  }
  ctx.dirty.insert(c.queue);
}

void BrokerState::RemoveConsumer(const std::string& id, Ctx& ctx) {
  Consumer& c = consumers_.at(id);
  RequeueAll(c, ctx);
  const std::string queue = c.queue;
  const bool pull = c.pull;
  consumers_.erase(id);
  if (pull) return;
  Queue& q = queues_.at(queue);
  auto pos = std::find(q.consumers.begin(), q.consumers.end(), id);
  const size_t index = pos - q.consumers.begin();
  q.consumers.erase(pos);
  // Keep the round-robin cursor on the consumer that was next.
  if (index < q.round_robin) --q.round_robin;
  if (q.round_robin >= q.consumers.size()) q.round_robin = 0;
  if (q.def.auto_delete() && q.consumers.empty()) DeleteQueueNow(queue, ctx);
}

StoredMessage BrokerState::TakeUnacked(Queue& q, Consumer& c, uint64_t id) {
  auto it = c.unacked.find(id);
  StoredMessage m = std::move(it->second);
  c.unacked.erase(it);
  --q.unacked;
  q.unacked_bytes -= Size(m);
  return m;
}

// A message back from a consumer: redelivered, one more delivery, or dead-lettered once it has
// been returned more than x-delivery-limit times.
void BrokerState::ReturnToQueue(Queue& q, StoredMessage m, Ctx& ctx) {
  m.redelivered = true;
  ++m.delivery_count;
  const pb::QueueArgs& a = q.def.args();
  if (a.has_delivery_limit() && m.delivery_count > static_cast<uint64_t>(a.delivery_limit())) {
    return DeadLetter(q, std::move(m), pb::DEAD_LETTER_DELIVERY_LIMIT, ctx);
  }
  q.ready_bytes += Size(m);
  InsertById(q.ready, std::move(m));
  ctx.dirty.insert(q.def.name());
}

// ---- get, expiry, dispatch ----

void BrokerState::Get(const pb::Get& c, Ctx& ctx) {
  if (c.consumer_id().size() > kMaxConsumerIdBytes || c.owner().size() > kMaxConsumerIdBytes) {
    return ctx.Precondition("invalid consumer id " + Q(c.consumer_id()));
  }
  Queue* q = QueueForUse(c.queue(), c.owner(), ctx);
  if (q == nullptr) return;
  Consumer* holder = nullptr;
  if (!c.no_ack()) {
    if (c.consumer_id().empty()) return ctx.Precondition("basic.get needs a consumer id");
    holder = FindConsumer(c.consumer_id());
    if (holder != nullptr && (!holder->pull || holder->queue != c.queue())) {
      return ctx.Fail(BrokerError::kNotAllowed, "NOT_ALLOWED",
                      "consumer id " + Q(c.consumer_id()) + " is in use");
    }
    if (holder == nullptr && consumers_.size() >= options_.max_consumers) {
      return ctx.ResourceError("consumers", options_.max_consumers);
    }
  }
  ExpireHead(*q, ctx);
  if (q->ready.empty()) {
    ctx.r->get_empty = true;
    return;
  }
  if (!c.no_ack() && holder == nullptr) {
    holder = &consumers_[c.consumer_id()];
    holder->id = c.consumer_id();
    holder->owner = c.owner();
    holder->queue = c.queue();
    holder->pull = true;
  }
  StoredMessage m = PopFront(*q);
  q->counters.set_delivered(q->counters.delivered() + 1);
  if (m.redelivered) q->counters.set_redelivered(q->counters.redelivered() + 1);
  Delivery d{c.consumer_id(),  c.queue(), m.id,           m.redelivered,
             m.delivery_count, true,      ReadyCount(*q), m.payload};
  ctx.r->deliveries.push_back(std::move(d));
  ctx.r->message_count = ReadyCount(*q);
  if (holder != nullptr) {
    ++q->unacked;
    q->unacked_bytes += Size(m);
    holder->unacked.emplace(m.id, std::move(m));
  }
}

void BrokerState::ExpireAll(Ctx& ctx) {
  for (auto& [name, q] : queues_) ExpireHead(q, ctx);
}

void BrokerState::ExpireHead(Queue& q, Ctx& ctx) {
  while (!q.ready.empty() && Expired(q.ready.front(), ctx.now)) {
    DeadLetter(q, PopFront(q), pb::DEAD_LETTER_EXPIRED, ctx);
  }
}

// Delivers to the queues this command touched (to every queue when an earlier command left
// deliveries pending), at most max_deliveries_per_apply in one command.
void BrokerState::DispatchAll(Ctx& ctx) {
  if (dispatch_pending_) {
    for (const auto& [name, q] : queues_) ctx.dirty.insert(name);
    dispatch_pending_ = false;
  }
  while (!ctx.dirty.empty() && !dispatch_pending_) {
    std::string name = *ctx.dirty.begin();
    ctx.dirty.erase(ctx.dirty.begin());
    auto it = queues_.find(name);
    if (it != queues_.end()) DispatchQueue(it->second, ctx);
  }
}

void BrokerState::DispatchQueue(Queue& q, Ctx& ctx) {
  while (!q.consumers.empty()) {
    ExpireHead(q, ctx);
    if (q.ready.empty()) return;
    const size_t n = q.consumers.size();
    Consumer* next = nullptr;
    size_t index = 0;
    for (size_t k = 0; k < n && next == nullptr; ++k) {
      index = (q.round_robin + k) % n;
      Consumer& c = consumers_.at(q.consumers[index]);
      if (HasCapacity(c)) next = &c;
    }
    if (next == nullptr) return;
    if (ctx.r->deliveries.size() >= options_.max_deliveries_per_apply) {
      dispatch_pending_ = true;
      return;
    }
    Deliver(q, *next, ctx);
    q.round_robin = (index + 1) % n;
  }
}

bool BrokerState::HasCapacity(const Consumer& c) const {
  return !c.pull && (c.no_ack || c.credit == 0 || c.unacked.size() < c.credit);
}

void BrokerState::Deliver(Queue& q, Consumer& c, Ctx& ctx) {
  StoredMessage m = PopFront(q);
  q.counters.set_delivered(q.counters.delivered() + 1);
  if (m.redelivered) q.counters.set_redelivered(q.counters.redelivered() + 1);
  Delivery d{c.id, q.def.name(), m.id, m.redelivered, m.delivery_count, false, 0, m.payload};
  ctx.r->deliveries.push_back(std::move(d));
  if (c.no_ack) return;  // settled on delivery
  ++q.unacked;
  q.unacked_bytes += Size(m);
  c.unacked.emplace(m.id, std::move(m));
}

// ---- the window and the spill ----

uint64_t BrokerState::ReadyCount(const Queue& q) { return q.ready.size() + q.spilled; }

// Order is kept: once anything is spilled, later messages queue behind it in the spill.
void BrokerState::PushBack(Queue& q, StoredMessage m) {
  q.ready_bytes += Size(m);
  if (q.spilled == 0 && q.ready.size() < options_.window) {
    q.ready.push_back(std::move(m));
    return;
  }
  if (q.spilled == 0) q.spill_cursor = m.id;
  ++q.spilled;
  q.spilled_bytes += Size(m);
  spill_->Append(q.uid, m.id, ToProto(m).SerializeAsString());
}

StoredMessage BrokerState::PopFront(Queue& q) {
  StoredMessage m = std::move(q.ready.front());
  q.ready.pop_front();
  q.ready_bytes -= Size(m);
  Refill(q);
  return m;
}

// Keeps the window's head filled while anything is spilled: the head is always in memory. Reads
// in batches of half a window so that a refill costs one spill read per window/2 messages.
void BrokerState::Refill(Queue& q) {
  if (q.spilled == 0 || q.ready.size() > options_.window / 2) return;
  const uint64_t want = std::min<uint64_t>(q.spilled, options_.window - q.ready.size());
  std::vector<pb::Message> read = ReadSpilled(q, std::max<uint64_t>(want, 1));
  for (const pb::Message& pm : read) {
    StoredMessage m = FromProto(pm);
    q.spilled_bytes -= Size(m);
    q.ready.push_back(std::move(m));
  }
  q.spilled -= read.size();
  if (!read.empty()) q.spill_cursor = read.back().id() + 1;
  if (read.size() < want) {
    // The spill lost records (a node whose local snapshot expects records it never had): the
    // messages are gone; keep the counts true rather than wait for them forever.
    q.ready_bytes -= q.spilled_bytes;
    q.counters.set_dropped(q.counters.dropped() + q.spilled);
    q.spilled = 0;
    q.spilled_bytes = 0;
  }
}

std::vector<pb::Message> BrokerState::ReadSpilled(const Queue& q, uint64_t max_count) const {
  std::vector<pb::Message> out;
  if (q.spilled == 0 || max_count == 0) return out;
  auto records = spill_->Read(q.uid, q.spill_cursor, std::min(q.spilled, max_count));
  out.reserve(records.size());
  for (auto& [id, record] : records) {
    pb::Message& m = out.emplace_back();
    if (!m.ParseFromString(record) || m.id() != id) {
      out.pop_back();
      break;  // corrupt: treated as lost from here on
    }
  }
  return out;
}

SpillKeep BrokerState::SpillKeepNow() const {
  SpillKeep keep;
  keep.next_queue_uid = next_queue_uid_;
  for (const auto& [name, q] : queues_) {
    // A queue with nothing spilled needs none of its records: later ones have ids >= next id.
    keep.first_kept_id[q.uid] = q.spilled != 0 ? q.spill_cursor : next_message_id_;
  }
  return keep;
}

uint64_t BrokerState::spilled_messages() const {
  uint64_t n = 0;
  for (const auto& [name, q] : queues_) n += q.spilled;
  return n;
}

uint64_t BrokerState::spilled_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, q] : queues_) n += q.spilled_bytes;
  return n;
}

// ---- snapshot ----

pb::Snapshot BrokerState::TakeSnapshot(SnapshotForm form) const {
  pb::Snapshot snap;
  snap.set_last_applied(last_applied_);
  snap.set_next_queue_uid(next_queue_uid_);
  snap.set_next_message_id(next_message_id_);
  snap.set_dispatch_pending(dispatch_pending_);
  for (const auto& [name, e] : exchanges_) *snap.add_exchanges() = e;
  for (const auto& [exchange, keys] : bindings_) {
    for (const auto& [rk, queue, args] : keys) {
      pb::Binding* b = snap.add_bindings();
      b->set_exchange(exchange);
      b->set_queue(queue);
      b->set_routing_key(rk);
      b->set_arguments(args);
    }
  }
  auto add_consumer = [](pb::QueueState& qs, const Consumer& c) {
    pb::Consumer* out = qs.add_consumers();
    out->set_id(c.id);
    out->set_owner(c.owner);
    out->set_credit(c.credit);
    out->set_no_ack(c.no_ack);
    out->set_exclusive(c.exclusive);
    out->set_pull(c.pull);
    for (const auto& [id, m] : c.unacked) *out->add_unacked() = ToProto(m);
  };
  for (const auto& [name, q] : queues_) {
    pb::QueueState* qs = snap.add_queues();
    *qs->mutable_queue() = q.def;
    qs->set_uid(q.uid);
    for (const StoredMessage& m : q.ready) *qs->add_ready() = ToProto(m);
    if (form == SnapshotForm::kFull) {
      for (pb::Message& m : ReadSpilled(q, q.spilled)) *qs->add_ready() = std::move(m);
    } else if (q.spilled != 0) {
      qs->set_spilled(q.spilled);
      qs->set_spilled_bytes(q.spilled_bytes);
      qs->set_spill_cursor(q.spill_cursor);
    }
    for (const std::string& id : q.consumers) add_consumer(*qs, consumers_.at(id));
    for (const auto& [id, c] : consumers_) {
      if (c.pull && c.queue == name) add_consumer(*qs, c);
    }
    qs->set_round_robin(q.round_robin);
    qs->set_had_consumer(q.had_consumer);
    *qs->mutable_counters() = q.counters;
  }
  return snap;
}

void BrokerState::Clear() {
  last_applied_ = 0;
  next_message_id_ = 1;
  next_queue_uid_ = 1;
  dispatch_pending_ = false;
  exchanges_.clear();
  bindings_.clear();
  bindings_by_queue_.clear();
  binding_count_ = 0;
  queues_.clear();
  consumers_.clear();
}

Status BrokerState::Restore(const pb::Snapshot& snap) {
  BrokerState next(options_, spill_);
  next.Clear();
  // Snapshots from before the spill carry no uids: number their queues from 1, as every
  // replica restoring the same snapshot does.
  next.next_queue_uid_ = std::max<uint64_t>(snap.next_queue_uid(), 1);
  next.last_applied_ = snap.last_applied();
  next.next_message_id_ = snap.next_message_id();
  next.dispatch_pending_ = snap.dispatch_pending();
  for (const pb::Exchange& e : snap.exchanges()) next.exchanges_[e.name()] = e;
  std::set<uint64_t> uids;
  for (const pb::QueueState& qs : snap.queues()) {
    const std::string& name = qs.queue().name();
    Queue& q = next.queues_[name];
    q.def = qs.queue();
    q.uid = qs.uid() != 0 ? qs.uid() : next.next_queue_uid_++;
    if (q.uid >= next.next_queue_uid_ || !uids.insert(q.uid).second) {
      return Status::InvalidArgument("snapshot: bad uid for queue " + name);
    }
    if (Status s = next.RestoreReady(qs, q); !s.ok()) return s;
    for (const pb::Consumer& pc : qs.consumers()) {
      if (next.consumers_.contains(pc.id())) {
        return Status::InvalidArgument("snapshot: duplicate consumer " + pc.id());
      }
      Consumer& c = next.consumers_[pc.id()];
      c.id = pc.id();
      c.owner = pc.owner();
      c.queue = name;
      c.credit = pc.credit();
      c.no_ack = pc.no_ack();
      c.exclusive = pc.exclusive();
      c.pull = pc.pull();
      for (const pb::Message& m : pc.unacked()) {
        c.unacked.emplace(m.id(), FromProto(m));
        ++q.unacked;
        q.unacked_bytes += m.body().size();
      }
      if (!c.pull) q.consumers.push_back(c.id);
    }
    q.round_robin = q.consumers.empty() ? 0 : qs.round_robin() % q.consumers.size();
    q.had_consumer = qs.had_consumer();
    q.counters = qs.counters();
  }
  for (const pb::Binding& b : snap.bindings()) {
    if (!next.exchanges_.contains(b.exchange()) || !next.queues_.contains(b.queue())) {
      return Status::InvalidArgument("snapshot: binding to a missing exchange or queue");
    }
    if (next.bindings_[b.exchange()].insert({b.routing_key(), b.queue(), b.arguments()}).second) {
      next.bindings_by_queue_[b.queue()].insert({b.exchange(), b.routing_key(), b.arguments()});
      ++next.binding_count_;
    }
  }
  auto owned = std::move(owned_spill_);  // `next` shares it; keep it alive
  *this = std::move(next);
  owned_spill_ = std::move(owned);
  return Status::Ok();
}

// A local snapshot's window goes back to memory as it was (its spilled messages are in the spill
// already); the messages of a full one fill the window and the rest go to the spill.
Status BrokerState::RestoreReady(const pb::QueueState& qs, Queue& q) {
  const std::string& name = qs.queue().name();
  uint64_t last = 0;
  for (const pb::Message& m : qs.ready()) {
    if (m.id() >= next_message_id_ || m.id() <= last) {
      return Status::InvalidArgument("snapshot: bad message id in queue " + name);
    }
    last = m.id();
    StoredMessage stored = FromProto(m);
    if (qs.spilled() != 0 || q.ready.size() < options_.window) {
      q.ready_bytes += Size(stored);
      q.ready.push_back(std::move(stored));
    } else {
      PushBack(q, std::move(stored));
    }
  }
  if (qs.spilled() == 0) return Status::Ok();
  if (qs.spill_cursor() <= last || qs.spill_cursor() >= next_message_id_ ||
      qs.spilled() > next_message_id_ || q.ready.empty()) {
    return Status::InvalidArgument("snapshot: bad spill position in queue " + name);
  }
  if (spill_->Read(q.uid, qs.spill_cursor(), 1).empty()) {
    // A local snapshot made elsewhere: its spilled messages are on the node that took it.
    return Status::InvalidArgument("snapshot: the " + std::to_string(qs.spilled()) +
                                   " spilled messages of queue " + name +
                                   " are not in this node's spill");
  }
  q.spilled = qs.spilled();
  q.spilled_bytes = qs.spilled_bytes();
  q.spill_cursor = qs.spill_cursor();
  q.ready_bytes += q.spilled_bytes;
  return Status::Ok();
}

// ---- queries ----

const pb::Exchange* BrokerState::FindExchange(const std::string& name) const {
  auto it = exchanges_.find(name);
  return it == exchanges_.end() ? nullptr : &it->second;
}

const pb::Queue* BrokerState::FindQueue(const std::string& name) const {
  auto it = queues_.find(name);
  return it == queues_.end() ? nullptr : &it->second.def;
}

std::vector<std::string> BrokerState::ExchangeNames() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : exchanges_) out.push_back(name);
  return out;
}

std::vector<std::string> BrokerState::QueueNames() const {
  std::vector<std::string> out;
  for (const auto& [name, q] : queues_) out.push_back(name);
  return out;
}

std::vector<pb::Binding> BrokerState::Bindings() const {
  std::vector<pb::Binding> out;
  for (const auto& [exchange, keys] : bindings_) {
    for (const auto& [rk, queue, args] : keys) {
      pb::Binding& b = out.emplace_back();
      b.set_exchange(exchange);
      b.set_queue(queue);
      b.set_routing_key(rk);
      b.set_arguments(args);
    }
  }
  return out;
}

std::optional<QueueStats> BrokerState::Stats(const std::string& queue) const {
  auto it = queues_.find(queue);
  if (it == queues_.end()) return std::nullopt;
  const Queue& q = it->second;
  return QueueStats{queue,         ReadyCount(q),   q.unacked, q.consumers.size(),
                    q.ready_bytes, q.unacked_bytes, q.counters};
}

std::vector<QueueStats> BrokerState::AllStats() const {
  std::vector<QueueStats> out;
  for (const auto& [name, q] : queues_) out.push_back(*Stats(name));
  return out;
}

std::vector<uint64_t> BrokerState::ReadyIds(const std::string& queue) const {
  std::vector<uint64_t> out;
  auto it = queues_.find(queue);
  if (it == queues_.end()) return out;
  for (const StoredMessage& m : it->second.ready) out.push_back(m.id);
  for (const pb::Message& m : ReadSpilled(it->second, it->second.spilled)) out.push_back(m.id());
  return out;
}

std::vector<std::string> BrokerState::ConsumerIds(const std::string& queue) const {
  auto it = queues_.find(queue);
  return it == queues_.end() ? std::vector<std::string>{} : it->second.consumers;
}

std::vector<uint64_t> BrokerState::UnackedIds(const std::string& consumer_id) const {
  std::vector<uint64_t> out;
  auto it = consumers_.find(consumer_id);
  if (it == consumers_.end()) return out;
  for (const auto& [id, m] : it->second.unacked) out.push_back(id);
  return out;
}

std::vector<Delivery> BrokerState::Held(const std::string& consumer_id) const {
  std::vector<Delivery> out;
  auto it = consumers_.find(consumer_id);
  if (it == consumers_.end()) return out;
  const Consumer& c = it->second;
  for (const auto& [id, m] : c.unacked) {
    out.push_back({c.id, c.queue, id, m.redelivered, m.delivery_count, c.pull, 0, m.payload});
  }
  return out;
}

std::optional<int64_t> BrokerState::NextExpiryUnixMs() const {
  std::optional<int64_t> out;
  for (const auto& [name, q] : queues_) {
    if (q.ready.empty() || q.ready.front().expires_at_unix_ms == 0) continue;
    int64_t at = q.ready.front().expires_at_unix_ms;
    if (!out || at < *out) out = at;
  }
  return out;
}

bool BrokerState::dispatch_pending() const { return dispatch_pending_; }
uint64_t BrokerState::next_message_id() const { return next_message_id_; }
size_t BrokerState::binding_count() const { return binding_count_; }
size_t BrokerState::consumer_count() const { return consumers_.size(); }

}  // namespace haven::mq
