#include "node/mq_api.h"

#include <memory>

#include <boost/json.hpp>

#include "base/base64.h"
#include "base/metrics.h"
#include "mq/amqp_codec.h"
#include "node/http_replies.h"

namespace haven::node {

namespace json = boost::json;
using net::HttpRequest;
using net::HttpResponse;
using net::Responder;

namespace {

constexpr std::string_view kQueuesPrefix = "/v1/mq/queues/";
constexpr std::string_view kGetSuffix = "/get";

HttpResponse JsonReply(const json::value& v) {
  HttpResponse r;
  r.body = json::serialize(v) + "\n";
  return r;
}

HttpResponse BrokerErrorReply(const mq::BrokerError& e) { return Error(e.ToStatus()); }

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += len;
  }
  return true;
}

json::object QueueJson(const mq::QueueStats& q, const mq::pb::Queue* def, double publish_rate,
                       double deliver_rate) {
  json::object o;
  o["name"] = q.name;
  if (def) {
    o["durable"] = def->durable();
    o["auto_delete"] = def->auto_delete();
    o["exclusive"] = !def->exclusive_owner().empty();
    o["type"] = def->args().has_queue_type() ? def->args().queue_type() : "quorum";
  }
  o["messages"] = q.ready + q.unacked;
  o["messages_ready"] = q.ready;
  o["messages_unacknowledged"] = q.unacked;
  o["consumers"] = q.consumers;
  o["message_bytes"] = q.ready_bytes + q.unacked_bytes;
  o["published"] = q.counters.published();
  o["delivered"] = q.counters.delivered();
  o["acked"] = q.counters.acked();
  o["redelivered"] = q.counters.redelivered();
  o["dead_lettered"] = q.counters.dead_lettered();
  o["dropped"] = q.counters.dropped();
  o["publish_rate"] = publish_rate;
  o["deliver_rate"] = deliver_rate;
  return o;
}

// The JSON body of a declare: {"durable": true, "auto_delete": false, "arguments": {...}} with
// RabbitMQ's x- argument names.
Status ParseDeclare(const std::string& body, mq::pb::DeclareQueue& d) {
  d.set_durable(true);
  if (body.empty()) return Status::Ok();
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) return Status::InvalidArgument("body must be a JSON object");
  const auto& o = v.as_object();
  for (const auto& [k, val] : o) {
    if (k == "durable" && val.is_bool()) {
      d.set_durable(val.as_bool());
    } else if (k == "auto_delete" && val.is_bool()) {
      d.set_auto_delete(val.as_bool());
    } else if (k != "arguments") {
      return Status::InvalidArgument("unknown or mistyped field \"" + std::string(k) + "\"");
    }
  }
  const auto* args = o.if_contains("arguments");
  if (!args) return Status::Ok();
  if (!args->is_object()) return Status::InvalidArgument("arguments must be an object");
  auto* a = d.mutable_args();
  for (const auto& entry : args->as_object()) {
    // Not a structured binding: lambdas may not capture those before C++20 compilers caught up.
    const std::string_view k = entry.key();
    const json::value& val = entry.value();
    auto number = [&](auto set) -> Status {
      if (!val.is_int64() || val.as_int64() < 0) {
        return Status::InvalidArgument(std::string(k) + " must be a non-negative integer");
      }
      set(val.as_int64());
      return Status::Ok();
    };
    auto text = [&](auto set) -> Status {
      if (!val.is_string() || val.as_string().size() > mq::kMaxNameBytes) {
        return Status::InvalidArgument(std::string(k) + " must be a string of at most 255 bytes");
      }
      set(std::string(val.as_string()));
      return Status::Ok();
    };
    Status s;
    if (k == "x-message-ttl") {
      s = number([&](int64_t n) { a->set_message_ttl_ms(n); });
    } else if (k == "x-max-length") {
      s = number([&](int64_t n) { a->set_max_length(n); });
    } else if (k == "x-max-length-bytes") {
      s = number([&](int64_t n) { a->set_max_length_bytes(n); });
    } else if (k == "x-delivery-limit") {
      s = number([&](int64_t n) { a->set_delivery_limit(n); });
    } else if (k == "x-dead-letter-exchange") {
      s = text([&](std::string t) { a->set_dead_letter_exchange(std::move(t)); });
    } else if (k == "x-dead-letter-routing-key") {
      s = text([&](std::string t) { a->set_dead_letter_routing_key(std::move(t)); });
    } else if (k == "x-queue-type") {
      s = text([&](std::string t) { a->set_queue_type(std::move(t)); });
    } else if (k == "x-overflow") {
      s = text([&](const std::string& t) {
        a->set_overflow(t == "reject-publish" ? mq::pb::OVERFLOW_REJECT_PUBLISH
                                              : mq::pb::OVERFLOW_DROP_HEAD);
      });
      if (s.ok() && val.as_string() != "reject-publish" && val.as_string() != "drop-head") {
        s = Status::InvalidArgument("x-overflow must be drop-head or reject-publish");
      }
    } else {
      s = Status::InvalidArgument("unknown argument \"" + std::string(k) + "\"");
    }
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

}  // namespace

MqApi::MqApi(BrokerNode& broker, MqApiOptions opts) : broker_(broker), opts_(opts) {
  RegisterMetrics();
}

bool MqApi::Owns(const std::string& path) { return path.rfind("/v1/mq/", 0) == 0; }

const std::string& MqApi::Owner() {
  if (owner_.empty()) owner_ = broker_.NewOwnerId();
  return owner_;
}

void MqApi::Handle(const HttpRequest& req, Responder respond) {
  std::string method = req.method == "POST" ? "PUT" : req.method;
  const std::string& path = req.path;
  if (path == "/v1/mq/queues" && method == "GET") return ListQueues(respond);
  if (path == "/v1/mq/publish" && method == "PUT") return Publish(req, respond);
  if (path.rfind(kQueuesPrefix, 0) == 0 && path.size() > kQueuesPrefix.size()) {
    std::string name = path.substr(kQueuesPrefix.size());
    if (name.ends_with(kGetSuffix) && method == "PUT") {
      return GetMessages(name.substr(0, name.size() - kGetSuffix.size()), req, respond);
    }
    if (method == "GET") return ShowQueue(name, respond);
    if (method == "PUT") return DeclareQueue(name, req, respond);
    if (method == "DELETE") return DeleteQueue(name, req, respond);
    return respond(Text(405, "method " + req.method + " not allowed on " + path));
  }
  respond(Text(404, "no such endpoint: " + path));
}

MqApi::RateSample& MqApi::Rates(const mq::QueueStats& q) {
  auto now = std::chrono::steady_clock::now();
  RateSample& r = rates_[q.name];
  double secs = std::chrono::duration<double>(now - r.at).count();
  if (r.at == std::chrono::steady_clock::time_point{}) {
    r = {now, q.counters.published(), q.counters.delivered(), 0, 0};
  } else if (secs >= 1.0) {
    r.publish_rate = static_cast<double>(q.counters.published() - r.published) / secs;
    r.deliver_rate = static_cast<double>(q.counters.delivered() - r.delivered) / secs;
    r.at = now;
    r.published = q.counters.published();
    r.delivered = q.counters.delivered();
  }
  return r;
}

void MqApi::ListQueues(Responder& respond) {
  json::array out;
  std::map<std::string, RateSample> live;
  for (const auto& q : broker_.state().AllStats()) {
    RateSample& r = Rates(q);
    out.push_back(QueueJson(q, broker_.state().FindQueue(q.name), r.publish_rate, r.deliver_rate));
    live[q.name] = r;
  }
  rates_ = std::move(live);  // forget deleted queues
  respond(JsonReply(out));
}

void MqApi::ShowQueue(const std::string& name, Responder& respond) {
  auto q = broker_.state().Stats(name);
  if (!q) return respond(Text(404, "no queue '" + name + "'"));
  RateSample& r = Rates(*q);
  respond(
      JsonReply(QueueJson(*q, broker_.state().FindQueue(name), r.publish_rate, r.deliver_rate)));
}

void MqApi::DeclareQueue(const std::string& name, const HttpRequest& req, Responder& respond) {
  mq::pb::Command cmd;
  auto* d = cmd.mutable_declare_queue();
  d->set_name(name);
  d->set_owner(Owner());
  if (Status s = ParseDeclare(req.body, *d); !s.ok()) return respond(Error(s));
  broker_.Propose(std::move(cmd), [respond](const Result<mq::ApplyResult>& r) {
    if (!r.ok()) return respond(Error(r.status()));
    if (!r->error.ok()) return respond(BrokerErrorReply(r->error));
    respond(
        JsonReply(json::object{{"messages", r->message_count}, {"consumers", r->consumer_count}}));
  });
}

void MqApi::DeleteQueue(const std::string& name, const HttpRequest& req, Responder& respond) {
  mq::pb::Command cmd;
  auto* d = cmd.mutable_delete_queue();
  d->set_name(name);
  d->set_owner(Owner());
  d->set_if_empty(req.HasQuery("if-empty"));
  d->set_if_unused(req.HasQuery("if-unused"));
  broker_.Propose(std::move(cmd), [respond](const Result<mq::ApplyResult>& r) {
    if (!r.ok()) return respond(Error(r.status()));
    if (!r->error.ok()) return respond(BrokerErrorReply(r->error));
    respond(JsonReply(json::object{{"messages", r->message_count}}));
  });
}

// ?exchange=E (default "": the queue named by the key) &routing_key=K, the body is the message;
// persistent, no other properties. Answers once the message is committed (a publisher confirm).
void MqApi::Publish(const HttpRequest& req, Responder& respond) {
  if (req.body.size() > opts_.max_body_bytes) {
    return respond(Text(413, "message larger than " + std::to_string(opts_.max_body_bytes) +
                                 " bytes; use AMQP for large messages"));
  }
  const std::string* exchange = req.Query("exchange");
  const std::string* key = req.Query("routing_key");
  if (!key) return respond(Text(400, "Missing routing_key"));
  mq::pb::Command cmd;
  auto* p = cmd.mutable_publish();
  p->set_exchange(exchange ? *exchange : "");
  p->set_routing_key(*key);
  mq::amqp::BasicProperties props;
  props.delivery_mode = mq::amqp::kDeliveryPersistent;
  p->set_properties(mq::amqp::EncodeProperties(props));
  p->set_body(req.body);
  broker_.Propose(std::move(cmd), [respond](const Result<mq::ApplyResult>& r) {
    if (!r.ok()) return respond(Error(r.status()));
    if (!r->error.ok()) return respond(BrokerErrorReply(r->error));
    json::array queues;
    for (const auto& q : r->routed_queues) queues.emplace_back(q);
    json::array rejected;
    for (const auto& q : r->rejected_queues) rejected.emplace_back(q);
    respond(JsonReply(json::object{{"routed", !r->routed_queues.empty()},
                                   {"queues", std::move(queues)},
                                   {"rejected", std::move(rejected)}}));
  });
}

// ?count=N (default 1): takes up to N messages off the queue (acknowledged at once, as
// basic.get with no_ack), oldest first.
void MqApi::GetMessages(const std::string& name, const HttpRequest& req, Responder& respond) {
  uint64_t count = 1;
  if (const std::string* c = req.Query("count")) {
    char* end = nullptr;
    count = std::strtoull(c->c_str(), &end, 10);
    if (c->empty() || *end != '\0' || count == 0 || count > opts_.max_get_count) {
      return respond(Text(400, "count must be 1 to " + std::to_string(opts_.max_get_count)));
    }
  }
  struct State {
    std::string queue, owner;
    uint64_t left = 0;
    json::array messages;
    Responder respond;
  };
  auto st = std::make_shared<State>(State{name, Owner(), count, {}, respond});
  auto next = std::make_shared<std::function<void()>>();
  *next = [this, st, next] {
    mq::pb::Command cmd;
    auto* g = cmd.mutable_get();
    g->set_queue(st->queue);
    g->set_owner(st->owner);
    g->set_consumer_id(st->owner + "/http/get:" + st->queue);
    g->set_no_ack(true);
    broker_.Propose(std::move(cmd), [st, next](const Result<mq::ApplyResult>& r) {
      if (!r.ok()) return st->respond(Error(r.status()));
      if (!r->error.ok()) return st->respond(BrokerErrorReply(r->error));
      for (const auto& d : r->deliveries) {
        const std::string& body = d.payload->body;
        bool text = ValidUtf8(body);
        st->messages.push_back(json::object{{"payload", text ? body : Base64Encode(body)},
                                            {"payload_encoding", text ? "string" : "base64"},
                                            {"exchange", d.payload->exchange},
                                            {"routing_key", d.payload->routing_key},
                                            {"redelivered", d.redelivered},
                                            {"message_count", d.message_count}});
      }
      if (r->get_empty || r->deliveries.empty() || --st->left == 0) {
        st->respond(JsonReply(st->messages));
        *next = nullptr;  // breaks the cycle
        return;
      }
      (*next)();
    });
  };
  (*next)();
}

void MqApi::RegisterMetrics() {
  auto& reg = metrics::Registry::Default();
  auto family = [&](const char* name, const char* help, const char* type, auto value) {
    reg.SetCallbackFamily(name, help, type, [this, value] {
      metrics::Registry::Samples out;
      for (const auto& q : broker_.state().AllStats()) {
        out.push_back({{{"queue", q.name}}, static_cast<double>(value(q))});
      }
      return out;
    });
  };
  family("haven_mq_queue_messages_ready", "Messages ready for delivery", "gauge",
         [](const mq::QueueStats& q) { return q.ready; });
  family("haven_mq_queue_messages_unacked", "Messages delivered and not yet acknowledged", "gauge",
         [](const mq::QueueStats& q) { return q.unacked; });
  family("haven_mq_queue_consumers", "Consumers of the queue", "gauge",
         [](const mq::QueueStats& q) { return q.consumers; });
  family("haven_mq_queue_bytes", "Body bytes in the queue (ready and unacked)", "gauge",
         [](const mq::QueueStats& q) { return q.ready_bytes + q.unacked_bytes; });
  family("haven_mq_queue_published_total", "Messages enqueued", "counter",
         [](const mq::QueueStats& q) { return q.counters.published(); });
  family("haven_mq_queue_delivered_total", "Deliveries (redeliveries included)", "counter",
         [](const mq::QueueStats& q) { return q.counters.delivered(); });
  family("haven_mq_queue_acked_total", "Messages acknowledged", "counter",
         [](const mq::QueueStats& q) { return q.counters.acked(); });
  family("haven_mq_queue_dead_lettered_total", "Messages dead-lettered", "counter",
         [](const mq::QueueStats& q) { return q.counters.dead_lettered(); });
}

}  // namespace haven::node
