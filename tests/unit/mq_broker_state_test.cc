#include "mq/broker_state.h"

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace haven::mq {
namespace {

using ::google::protobuf::util::MessageDifferencer;

constexpr const char* kOwner = "n1/c1";

// ---- command builders ----

pb::Command DeclareQueue(const std::string& name,
                         const std::function<void(pb::DeclareQueue&)>& edit = {}) {
  pb::Command c;
  pb::DeclareQueue* d = c.mutable_declare_queue();
  d->set_name(name);
  d->set_durable(true);
  d->set_owner(kOwner);
  if (edit) edit(*d);
  return c;
}

pb::Command DeclareExchange(const std::string& name, pb::ExchangeType type,
                            const std::function<void(pb::DeclareExchange&)>& edit = {}) {
  pb::Command c;
  pb::DeclareExchange* d = c.mutable_declare_exchange();
  d->set_name(name);
  d->set_type(type);
  d->set_durable(true);
  if (edit) edit(*d);
  return c;
}

pb::Command BindCmd(const std::string& exchange, const std::string& queue, const std::string& key) {
  pb::Command c;
  c.mutable_bind()->set_exchange(exchange);
  c.mutable_bind()->set_queue(queue);
  c.mutable_bind()->set_routing_key(key);
  c.mutable_bind()->set_owner(kOwner);
  return c;
}

pb::Command UnbindCmd(const std::string& exchange, const std::string& queue,
                      const std::string& key) {
  pb::Command c;
  c.mutable_unbind()->set_exchange(exchange);
  c.mutable_unbind()->set_queue(queue);
  c.mutable_unbind()->set_routing_key(key);
  c.mutable_unbind()->set_owner(kOwner);
  return c;
}

pb::Command PublishCmd(const std::string& exchange, const std::string& key, const std::string& body,
                       const std::function<void(pb::Publish&)>& edit = {}) {
  pb::Command c;
  pb::Publish* p = c.mutable_publish();
  p->set_exchange(exchange);
  p->set_routing_key(key);
  p->set_body(body);
  p->set_properties("props:" + body);
  if (edit) edit(*p);
  return c;
}

pb::Command ConsumeCmd(const std::string& queue, const std::string& id, uint32_t credit,
                       const std::function<void(pb::Consume&)>& edit = {}) {
  pb::Command c;
  pb::Consume* p = c.mutable_consume();
  p->set_queue(queue);
  p->set_consumer_id(id);
  p->set_owner(id.substr(0, id.find('/', id.find('/') + 1)));  // "n1/c1/ch/tag" -> "n1/c1"
  p->set_credit(credit);
  if (edit) edit(*p);
  return c;
}

pb::Command CancelCmd(const std::string& id) {
  pb::Command c;
  c.mutable_cancel()->set_consumer_id(id);
  return c;
}

pb::Command AckCmd(const std::string& id, const std::vector<uint64_t>& ids) {
  pb::Command c;
  c.mutable_ack()->set_consumer_id(id);
  for (uint64_t m : ids) c.mutable_ack()->add_message_ids(m);
  return c;
}

pb::Command NackCmd(const std::string& id, const std::vector<uint64_t>& ids, bool requeue) {
  pb::Command c;
  c.mutable_nack()->set_consumer_id(id);
  for (uint64_t m : ids) c.mutable_nack()->add_message_ids(m);
  c.mutable_nack()->set_requeue(requeue);
  return c;
}

pb::Command GetCmd(const std::string& queue, const std::string& id, bool no_ack) {
  pb::Command c;
  c.mutable_get()->set_queue(queue);
  c.mutable_get()->set_consumer_id(id);
  c.mutable_get()->set_owner(kOwner);
  c.mutable_get()->set_no_ack(no_ack);
  return c;
}

pb::Command SetCreditCmd(const std::string& id, uint32_t credit) {
  pb::Command c;
  c.mutable_set_credit()->set_consumer_id(id);
  c.mutable_set_credit()->set_credit(credit);
  return c;
}

pb::Command RecoverCmd(const std::string& id) {
  pb::Command c;
  c.mutable_recover()->set_consumer_id(id);
  return c;
}

pb::Command DropOwnerCmd(const std::string& owner) {
  pb::Command c;
  c.mutable_drop_owner()->set_owner(owner);
  return c;
}

pb::Command ExpireCmd() {
  pb::Command c;
  c.mutable_expire();
  return c;
}

pb::Command DeleteQueueCmd(const std::string& name, bool if_unused = false, bool if_empty = false) {
  pb::Command c;
  c.mutable_delete_queue()->set_name(name);
  c.mutable_delete_queue()->set_if_unused(if_unused);
  c.mutable_delete_queue()->set_if_empty(if_empty);
  c.mutable_delete_queue()->set_owner(kOwner);
  return c;
}

pb::Command PurgeCmd(const std::string& name) {
  pb::Command c;
  c.mutable_purge_queue()->set_name(name);
  c.mutable_purge_queue()->set_owner(kOwner);
  return c;
}

pb::Command DeleteExchangeCmd(const std::string& name, bool if_unused = false) {
  pb::Command c;
  c.mutable_delete_exchange()->set_name(name);
  c.mutable_delete_exchange()->set_if_unused(if_unused);
  return c;
}

// Everything in a result, as text, so that two results compare with one EXPECT_EQ.
std::string Describe(const ApplyResult& r) {
  std::ostringstream o;
  o << "err=" << r.error.reply_code << ":" << r.error.reply_text << "\n";
  for (const Delivery& d : r.deliveries) {
    o << "deliver " << d.consumer_id << " " << d.queue << " " << d.message_id << " "
      << d.redelivered << " " << d.delivery_count << " " << d.get << " " << d.message_count << " "
      << d.payload->exchange << " " << d.payload->routing_key << " " << d.payload->properties << " "
      << d.payload->body << " " << d.payload->death.ShortDebugString() << "\n";
  }
  for (size_t i = 0; i < r.routed_queues.size(); ++i) {
    o << "routed " << r.routed_queues[i] << " " << r.message_ids[i] << "\n";
  }
  for (const auto& q : r.rejected_queues) o << "rejected " << q << "\n";
  o << "unroutable=" << r.unroutable << " count=" << r.message_count
    << " consumers=" << r.consumer_count << " empty=" << r.get_empty
    << " pending=" << r.dispatch_pending << "\n";
  for (const DeadLettered& d : r.dead_lettered) {
    o << "dead " << d.queue << " " << d.message_id << " " << d.reason << " ->";
    for (const auto& q : d.to_queues) o << " " << q;
    o << "\n";
  }
  for (const auto& c : r.cancelled_consumers) o << "cancelled " << c << "\n";
  for (const auto& q : r.deleted_queues) o << "deleted queue " << q << "\n";
  for (const auto& e : r.deleted_exchanges) o << "deleted exchange " << e << "\n";
  return o.str();
}

std::vector<uint64_t> Ids(const ApplyResult& r) {
  std::vector<uint64_t> out;
  for (const Delivery& d : r.deliveries) out.push_back(d.message_id);
  return out;
}

std::vector<std::string> Bodies(const ApplyResult& r) {
  std::vector<std::string> out;
  for (const Delivery& d : r.deliveries) out.push_back(d.payload->body);
  return out;
}

class BrokerTest : public ::testing::Test {
 protected:
  ApplyResult Run(pb::Command cmd) {
    cmd.set_now_unix_ms(now_);
    return state_.Apply(++index_, cmd);
  }
  // Runs a command that must succeed.
  ApplyResult Ok(pb::Command cmd) {
    ApplyResult r = Run(std::move(cmd));
    EXPECT_TRUE(r.error.ok()) << r.error.reply_text;
    return r;
  }
  uint16_t Code(pb::Command cmd) { return Run(std::move(cmd)).error.reply_code; }
  QueueStats StatsOf(const std::string& q) {
    auto s = state_.Stats(q);
    EXPECT_TRUE(s.has_value()) << q;
    return s.value_or(QueueStats{});
  }

  BrokerState state_;
  uint64_t index_ = 0;
  int64_t now_ = 1'000'000;
};

// ---- declarations ----

TEST_F(BrokerTest, PredeclaredExchanges) {
  EXPECT_EQ(state_.ExchangeNames(),
            (std::vector<std::string>{"", "amq.direct", "amq.fanout", "amq.topic"}));
  EXPECT_EQ(state_.FindExchange("amq.topic")->type(), pb::EXCHANGE_TOPIC);
  EXPECT_EQ(Code(DeclareExchange("amq.topic", pb::EXCHANGE_TOPIC)), 0);  // redeclare is fine
  EXPECT_EQ(Code(DeclareExchange("amq.mine", pb::EXCHANGE_TOPIC)), BrokerError::kAccessRefused);
  EXPECT_EQ(Code(DeclareExchange("", pb::EXCHANGE_DIRECT)), BrokerError::kAccessRefused);
  EXPECT_EQ(Code(DeleteExchangeCmd("")), BrokerError::kAccessRefused);
  EXPECT_EQ(Code(DeleteExchangeCmd("amq.direct")), BrokerError::kAccessRefused);
  Ok(DeclareQueue("q"));
  ApplyResult r = Run(BindCmd("", "q", "q"));
  EXPECT_EQ(r.error.reply_code, BrokerError::kAccessRefused);
  EXPECT_EQ(r.error.reply_text, "ACCESS_REFUSED - operation not permitted on the default exchange");
}

TEST_F(BrokerTest, ExchangeDeclareEquivalenceAndPassive) {
  Ok(DeclareExchange("x", pb::EXCHANGE_DIRECT));
  ApplyResult r = Run(DeclareExchange("x", pb::EXCHANGE_FANOUT));
  EXPECT_EQ(r.error.reply_code, BrokerError::kPreconditionFailed);
  EXPECT_EQ(r.error.reply_text,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': "
            "received 'fanout' but current is 'direct'");
  EXPECT_EQ(Code(DeclareExchange("x", pb::EXCHANGE_DIRECT, [](auto& d) { d.set_durable(false); })),
            BrokerError::kPreconditionFailed);
  // Passive ignores the other fields.
  EXPECT_EQ(Code(DeclareExchange("x", pb::EXCHANGE_FANOUT, [](auto& d) { d.set_passive(true); })),
            0);
  EXPECT_EQ(
      Code(DeclareExchange("nope", pb::EXCHANGE_FANOUT, [](auto& d) { d.set_passive(true); })),
      BrokerError::kNotFound);
  EXPECT_EQ(Code(DeclareExchange("h", pb::EXCHANGE_HEADERS)), BrokerError::kNotImplemented);
}

TEST_F(BrokerTest, QueueDeclarePassiveAndInequivalentArgs) {
  ApplyResult r = Run(DeclareQueue("q", [](auto& d) { d.set_passive(true); }));
  EXPECT_EQ(r.error.reply_code, BrokerError::kNotFound);
  EXPECT_EQ(r.error.reply_text, "NOT_FOUND - no queue 'q' in vhost '/'");
  Ok(DeclareQueue("q", [](auto& d) { d.mutable_args()->set_message_ttl_ms(1000); }));
  Ok(PublishCmd("", "q", "a"));
  r = Ok(DeclareQueue("q", [](auto& d) { d.set_passive(true); }));
  EXPECT_EQ(r.message_count, 1u);
  EXPECT_EQ(r.consumer_count, 0u);
  // The same declaration again is fine.
  Ok(DeclareQueue("q", [](auto& d) { d.mutable_args()->set_message_ttl_ms(1000); }));
  r = Run(DeclareQueue("q", [](auto& d) { d.mutable_args()->set_message_ttl_ms(2000); }));
  EXPECT_EQ(r.error.reply_code, BrokerError::kPreconditionFailed);
  EXPECT_EQ(r.error.reply_text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': "
            "received '2000' but current is '1000'");
  r = Run(DeclareQueue("q"));
  EXPECT_EQ(r.error.reply_text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': "
            "received none but current is '1000'");
  r = Run(DeclareQueue("q", [](auto& d) {
    d.set_durable(false);
    d.mutable_args()->set_message_ttl_ms(1000);
  }));
  EXPECT_EQ(r.error.reply_text,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': "
            "received 'false' but current is 'true'");
  // Bad arguments and reserved names.
  EXPECT_EQ(Code(DeclareQueue("bad", [](auto& d) { d.mutable_args()->set_max_length(-1); })),
            BrokerError::kPreconditionFailed);
  EXPECT_EQ(Code(DeclareQueue("bad", [](auto& d) { d.mutable_args()->set_queue_type("stream"); })),
            BrokerError::kPreconditionFailed);
  EXPECT_EQ(Code(DeclareQueue("bad",
                              [](auto& d) {
                                d.mutable_args()->set_queue_type("quorum");
                                d.set_exclusive(true);
                              })),
            BrokerError::kPreconditionFailed);
  EXPECT_EQ(Code(DeclareQueue("amq.q")), BrokerError::kAccessRefused);
  EXPECT_EQ(Code(DeclareQueue("amq.gen-1", [](auto& d) { d.set_server_named(true); })), 0);
  EXPECT_EQ(Code(DeclareQueue("")), BrokerError::kPreconditionFailed);
  EXPECT_EQ(state_.FindQueue("bad"), nullptr);
}

TEST_F(BrokerTest, QuorumQueueRedeclareWithoutTypeIsEquivalent) {
  Ok(DeclareQueue("q", [](auto& d) { d.mutable_args()->set_queue_type("quorum"); }));
  Ok(DeclareQueue("q"));
  EXPECT_EQ(Code(DeclareQueue("q", [](auto& d) { d.mutable_args()->set_queue_type("classic"); })),
            BrokerError::kPreconditionFailed);
}

// ---- routing ----

TEST_F(BrokerTest, DefaultExchangeRoutesByQueueName) {
  Ok(DeclareQueue("q"));
  ApplyResult r = Ok(PublishCmd("", "q", "hello"));
  EXPECT_EQ(r.routed_queues, std::vector<std::string>{"q"});
  EXPECT_EQ(r.message_ids, std::vector<uint64_t>{1});
  r = Ok(PublishCmd("", "other", "x", [](auto& p) { p.set_mandatory(true); }));
  EXPECT_TRUE(r.routed_queues.empty());
  EXPECT_TRUE(r.unroutable);
  r = Ok(PublishCmd("", "other", "x"));
  EXPECT_FALSE(r.unroutable);  // not mandatory: dropped silently
  EXPECT_EQ(StatsOf("q").ready, 1u);
}

TEST_F(BrokerTest, PublishErrors) {
  ApplyResult r = Run(PublishCmd("nope", "k", "x"));
  EXPECT_EQ(r.error.reply_code, BrokerError::kNotFound);
  EXPECT_EQ(r.error.reply_text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
  Ok(DeclareExchange("int", pb::EXCHANGE_FANOUT, [](auto& d) { d.set_internal(true); }));
  EXPECT_EQ(Code(PublishCmd("int", "k", "x")), BrokerError::kAccessRefused);
  EXPECT_EQ(Code(PublishCmd("", std::string(256, 'k'), "x")), BrokerError::kPreconditionFailed);
  EXPECT_EQ(Code(PublishCmd("", "q", "x", [](auto& p) { p.set_expiration_ms(-5); })),
            BrokerError::kPreconditionFailed);
}

TEST_F(BrokerTest, DirectFanoutTopicRouting) {
  for (const char* q : {"q1", "q2", "q3"}) Ok(DeclareQueue(q));
  Ok(DeclareExchange("d", pb::EXCHANGE_DIRECT));
  Ok(DeclareExchange("f", pb::EXCHANGE_FANOUT));
  Ok(DeclareExchange("t", pb::EXCHANGE_TOPIC));
  Ok(BindCmd("d", "q1", "red"));
  Ok(BindCmd("d", "q2", "red"));
  Ok(BindCmd("d", "q3", "blue"));
  Ok(BindCmd("d", "q3", "blue"));  // a duplicate binding is one binding
  Ok(BindCmd("f", "q1", "ignored"));
  Ok(BindCmd("f", "q3", ""));
  Ok(BindCmd("t", "q1", "*.orange.*"));
  Ok(BindCmd("t", "q2", "*.*.rabbit"));
  Ok(BindCmd("t", "q2", "lazy.#"));
  EXPECT_EQ(state_.binding_count(), 8u);

  EXPECT_EQ(Ok(PublishCmd("d", "red", "m")).routed_queues, (std::vector<std::string>{"q1", "q2"}));
  EXPECT_EQ(Ok(PublishCmd("d", "blue", "m")).routed_queues, std::vector<std::string>{"q3"});
  EXPECT_TRUE(Ok(PublishCmd("d", "green", "m")).routed_queues.empty());
  EXPECT_EQ(Ok(PublishCmd("f", "anything", "m")).routed_queues,
            (std::vector<std::string>{"q1", "q3"}));
  EXPECT_EQ(Ok(PublishCmd("t", "quick.orange.rabbit", "m")).routed_queues,
            (std::vector<std::string>{"q1", "q2"}));  // two bindings to q2 match: one copy
  EXPECT_EQ(Ok(PublishCmd("t", "lazy.orange.elephant", "m")).routed_queues,
            (std::vector<std::string>{"q1", "q2"}));
  EXPECT_EQ(Ok(PublishCmd("t", "lazy.pink.rabbit", "m")).routed_queues,
            std::vector<std::string>{"q2"});
  EXPECT_TRUE(Ok(PublishCmd("t", "quick.brown.fox", "m")).routed_queues.empty());

  Ok(UnbindCmd("d", "q2", "red"));
  Ok(UnbindCmd("d", "q2", "red"));  // unbinding nothing is fine
  EXPECT_EQ(Ok(PublishCmd("d", "red", "m")).routed_queues, std::vector<std::string>{"q1"});
  EXPECT_EQ(Code(BindCmd("nope", "q1", "k")), BrokerError::kNotFound);
  EXPECT_EQ(Code(BindCmd("d", "nope", "k")), BrokerError::kNotFound);
  EXPECT_EQ(Code(UnbindCmd("d", "nope", "k")), BrokerError::kNotFound);
}

TEST_F(BrokerTest, ExchangeDeleteIfUnusedAndAutoDelete) {
  Ok(DeclareQueue("q"));
  Ok(DeclareExchange("x", pb::EXCHANGE_FANOUT));
  Ok(BindCmd("x", "q", ""));
  EXPECT_EQ(Code(DeleteExchangeCmd("x", true)), BrokerError::kPreconditionFailed);
  ApplyResult r = Ok(DeleteExchangeCmd("x"));
  EXPECT_EQ(r.deleted_exchanges, std::vector<std::string>{"x"});
  EXPECT_EQ(state_.binding_count(), 0u);
  Ok(DeleteExchangeCmd("x"));  // deleting nothing is fine

  Ok(DeclareExchange("auto", pb::EXCHANGE_FANOUT, [](auto& d) { d.set_auto_delete(true); }));
  Ok(BindCmd("auto", "q", "a"));
  Ok(BindCmd("auto", "q", "b"));
  EXPECT_TRUE(Ok(UnbindCmd("auto", "q", "a")).deleted_exchanges.empty());
  EXPECT_EQ(Ok(UnbindCmd("auto", "q", "b")).deleted_exchanges, std::vector<std::string>{"auto"});
  EXPECT_EQ(state_.FindExchange("auto"), nullptr);
  // Deleting a queue takes its bindings, and with them an auto-delete exchange.
  Ok(DeclareExchange("auto", pb::EXCHANGE_FANOUT, [](auto& d) { d.set_auto_delete(true); }));
  Ok(BindCmd("auto", "q", "a"));
  r = Ok(DeleteQueueCmd("q"));
  EXPECT_EQ(r.deleted_exchanges, std::vector<std::string>{"auto"});
  EXPECT_EQ(state_.binding_count(), 0u);
}

// ---- delivery ----

TEST_F(BrokerTest, PublishDeliversRoundRobinInRegistrationOrder) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/b", 0));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  Ok(ConsumeCmd("q", "n2/c1/1/c", 0));
  std::vector<std::string> got;
  for (int i = 0; i < 6; ++i) {
    ApplyResult r = Ok(PublishCmd("", "q", "m" + std::to_string(i)));
    ASSERT_EQ(r.deliveries.size(), 1u);
    const Delivery& d = r.deliveries[0];
    EXPECT_EQ(d.payload->body, "m" + std::to_string(i));
    EXPECT_EQ(d.payload->properties, "props:m" + std::to_string(i));
    EXPECT_EQ(d.payload->exchange, "");
    EXPECT_EQ(d.payload->routing_key, "q");
    EXPECT_FALSE(d.redelivered);
    got.push_back(d.consumer_id);
  }
  EXPECT_EQ(got, (std::vector<std::string>{"n1/c1/1/b", "n1/c1/1/a", "n2/c1/1/c", "n1/c1/1/b",
                                           "n1/c1/1/a", "n2/c1/1/c"}));
  QueueStats s = StatsOf("q");
  EXPECT_EQ(s.ready, 0u);
  EXPECT_EQ(s.unacked, 6u);
  EXPECT_EQ(s.consumers, 3u);
  EXPECT_EQ(s.counters.published(), 6u);
  EXPECT_EQ(s.counters.delivered(), 6u);
}

TEST_F(BrokerTest, BacklogIsDeliveredOnConsumeRoundRobin) {
  Ok(DeclareQueue("q"));
  for (int i = 0; i < 4; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  EXPECT_EQ(Ok(ConsumeCmd("q", "n1/c1/1/a", 1)).deliveries.size(), 1u);
  ApplyResult r = Ok(ConsumeCmd("q", "n1/c1/1/b", 2));
  EXPECT_EQ(Bodies(r), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(StatsOf("q").ready, 1u);
}

TEST_F(BrokerTest, CreditLimitsUnackedAndAckRefills) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 2));
  for (int i = 0; i < 5; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  EXPECT_EQ(state_.UnackedIds("n1/c1/1/a"), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(StatsOf("q").ready, 3u);
  ApplyResult r = Ok(AckCmd("n1/c1/1/a", {2}));
  EXPECT_EQ(Ids(r), std::vector<uint64_t>{3});
  EXPECT_EQ(StatsOf("q").counters.acked(), 1u);
  r = Ok(SetCreditCmd("n1/c1/1/a", 4));
  EXPECT_EQ(Ids(r), (std::vector<uint64_t>{4, 5}));
  EXPECT_EQ(state_.UnackedIds("n1/c1/1/a"), (std::vector<uint64_t>{1, 3, 4, 5}));
  // Unknown and double acks are 406 and change nothing.
  r = Run(AckCmd("n1/c1/1/a", {1, 2}));
  EXPECT_EQ(r.error.reply_code, BrokerError::kPreconditionFailed);
  EXPECT_EQ(r.error.reply_text, "PRECONDITION_FAILED - unknown delivery tag 2");
  EXPECT_EQ(Code(AckCmd("n1/c1/1/a", {1, 1})), BrokerError::kPreconditionFailed);
  EXPECT_EQ(state_.UnackedIds("n1/c1/1/a").size(), 4u);
  // A consumer that is gone acks nothing, without an error.
  EXPECT_EQ(Code(AckCmd("n9/c9/1/zz", {1})), 0);
}

TEST_F(BrokerTest, NoAckConsumerSettlesOnDelivery) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 1, [](auto& c) { c.set_no_ack(true); }));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Ok(PublishCmd("", "q", "m")).deliveries.size(), 1u);
  QueueStats s = StatsOf("q");
  EXPECT_EQ(s.ready + s.unacked, 0u);
  EXPECT_EQ(s.counters.delivered(), 3u);
}

TEST_F(BrokerTest, NackRequeueGoesBackToOriginalPlaceRedelivered) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 3));
  for (int i = 1; i <= 5; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  EXPECT_EQ(state_.ReadyIds("q"), (std::vector<uint64_t>{4, 5}));
  Ok(SetCreditCmd("n1/c1/1/a", 1));  // keep the requeued ones in the queue for a look
  ApplyResult r = Ok(NackCmd("n1/c1/1/a", {3, 1}, true));
  EXPECT_TRUE(r.deliveries.empty());
  EXPECT_EQ(state_.ReadyIds("q"), (std::vector<uint64_t>{1, 3, 4, 5}));
  r = Ok(AckCmd("n1/c1/1/a", {2}));
  ASSERT_EQ(r.deliveries.size(), 1u);
  EXPECT_EQ(r.deliveries[0].message_id, 1u);
  EXPECT_TRUE(r.deliveries[0].redelivered);
  EXPECT_EQ(r.deliveries[0].delivery_count, 1u);
  r = Ok(AckCmd("n1/c1/1/a", {1}));
  EXPECT_EQ(r.deliveries[0].message_id, 3u);
  EXPECT_TRUE(r.deliveries[0].redelivered);
  r = Ok(AckCmd("n1/c1/1/a", {3}));
  EXPECT_EQ(r.deliveries[0].message_id, 4u);
  EXPECT_FALSE(r.deliveries[0].redelivered);
  EXPECT_EQ(StatsOf("q").counters.redelivered(), 2u);
}

TEST_F(BrokerTest, CancelAndRecoverRequeueUnacked) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 2));
  for (int i = 1; i <= 3; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  ApplyResult r = Ok(RecoverCmd("n1/c1/1/a"));
  // 1 and 2 go back to the head and come straight back to the same consumer, redelivered.
  EXPECT_EQ(Ids(r), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(r.deliveries[0].redelivered && r.deliveries[1].redelivered);
  r = Ok(CancelCmd("n1/c1/1/a"));
  EXPECT_TRUE(r.deliveries.empty());
  EXPECT_EQ(state_.ReadyIds("q"), (std::vector<uint64_t>{1, 2, 3}));
  r = Ok(ConsumeCmd("q", "n1/c1/1/b", 0));
  EXPECT_EQ(Ids(r), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(r.deliveries[0].delivery_count, 2u);
  EXPECT_FALSE(r.deliveries[2].redelivered);
  Ok(CancelCmd("n1/c1/1/nobody"));  // cancelling nothing is fine
}

TEST_F(BrokerTest, ConsumeErrors) {
  EXPECT_EQ(Code(ConsumeCmd("nope", "n1/c1/1/a", 0)), BrokerError::kNotFound);
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  ApplyResult r = Run(ConsumeCmd("q", "n1/c1/1/a", 0));
  EXPECT_EQ(r.error.reply_code, BrokerError::kNotAllowed);
  EXPECT_EQ(r.error.reply_text, "NOT_ALLOWED - attempt to reuse consumer tag 'n1/c1/1/a'");
  r = Run(ConsumeCmd("q", "n1/c1/1/x", 0, [](auto& c) { c.set_exclusive(true); }));
  EXPECT_EQ(r.error.reply_code, BrokerError::kAccessRefused);
  EXPECT_EQ(r.error.reply_text, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use");
  Ok(DeclareQueue("q2"));
  Ok(ConsumeCmd("q2", "n1/c1/1/x", 0, [](auto& c) { c.set_exclusive(true); }));
  EXPECT_EQ(Code(ConsumeCmd("q2", "n1/c1/1/y", 0)), BrokerError::kAccessRefused);
  EXPECT_EQ(state_.ConsumerIds("q2"), std::vector<std::string>{"n1/c1/1/x"});
}

// ---- dead-lettering ----

class DeadLetterTest : public BrokerTest {
 protected:
  void SetUp() override {
    Ok(DeclareExchange("dlx", pb::EXCHANGE_FANOUT));
    Ok(DeclareQueue("dead"));
    Ok(BindCmd("dlx", "dead", ""));
  }
  static std::function<void(pb::DeclareQueue&)> WithDlx(
      const std::function<void(pb::QueueArgs&)>& more = {}) {
    return [more](pb::DeclareQueue& d) {
      d.mutable_args()->set_dead_letter_exchange("dlx");
      if (more) more(*d.mutable_args());
    };
  }
  // The dead-lettered messages sitting in "dead", head first.
  std::vector<pb::Message> Dead() {
    pb::Snapshot snap = state_.TakeSnapshot();
    for (const auto& q : snap.queues()) {
      if (q.queue().name() == "dead") return {q.ready().begin(), q.ready().end()};
    }
    return {};
  }
};

TEST_F(DeadLetterTest, RejectWithoutRequeueGoesToDlx) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_dead_letter_routing_key("rk2"); })));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  Ok(PublishCmd("", "q", "body"));
  ApplyResult r = Ok(NackCmd("n1/c1/1/a", {1}, false));
  ASSERT_EQ(r.dead_lettered.size(), 1u);
  EXPECT_EQ(r.dead_lettered[0].queue, "q");
  EXPECT_EQ(r.dead_lettered[0].message_id, 1u);
  EXPECT_EQ(r.dead_lettered[0].reason, pb::DEAD_LETTER_REJECTED);
  EXPECT_EQ(r.dead_lettered[0].to_queues, std::vector<std::string>{"dead"});
  std::vector<pb::Message> dead = Dead();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].body(), "body");
  EXPECT_EQ(dead[0].properties(), "props:body");
  EXPECT_EQ(dead[0].exchange(), "dlx");
  EXPECT_EQ(dead[0].routing_key(), "rk2");
  EXPECT_EQ(dead[0].death().reason(), pb::DEAD_LETTER_REJECTED);
  EXPECT_EQ(dead[0].death().queue(), "q");
  EXPECT_EQ(dead[0].death().exchange(), "");
  EXPECT_EQ(dead[0].death().routing_key(), "q");
  EXPECT_EQ(dead[0].death().count(), 1u);
  EXPECT_EQ(dead[0].death().time_unix_ms(), now_);
  EXPECT_NE(dead[0].id(), 1u);  // a new message with its own id
  EXPECT_EQ(StatsOf("q").counters.dead_lettered(), 1u);
  EXPECT_EQ(StatsOf("q").unacked, 0u);
}

TEST_F(DeadLetterTest, RejectWithoutDlxDrops) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  Ok(PublishCmd("", "q", "body"));
  ApplyResult r = Ok(NackCmd("n1/c1/1/a", {1}, false));
  ASSERT_EQ(r.dead_lettered.size(), 1u);
  EXPECT_TRUE(r.dead_lettered[0].to_queues.empty());
  EXPECT_EQ(StatsOf("q").counters.dropped(), 1u);
  EXPECT_TRUE(Dead().empty());
}

TEST_F(DeadLetterTest, DeliveryLimitDeadLetters) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_delivery_limit(2); })));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 1));
  Ok(PublishCmd("", "q", "poison"));
  for (uint32_t returns = 1; returns <= 2; ++returns) {
    ApplyResult r = Ok(NackCmd("n1/c1/1/a", {1}, true));
    ASSERT_EQ(r.deliveries.size(), 1u);
    EXPECT_EQ(r.deliveries[0].delivery_count, returns);
    EXPECT_TRUE(r.deliveries[0].redelivered);
  }
  ApplyResult r = Ok(NackCmd("n1/c1/1/a", {1}, true));  // the third return exceeds the limit
  EXPECT_TRUE(r.deliveries.empty());
  ASSERT_EQ(r.dead_lettered.size(), 1u);
  EXPECT_EQ(r.dead_lettered[0].reason, pb::DEAD_LETTER_DELIVERY_LIMIT);
  ASSERT_EQ(Dead().size(), 1u);
  EXPECT_EQ(Dead()[0].death().reason(), pb::DEAD_LETTER_DELIVERY_LIMIT);
  EXPECT_EQ(StatsOf("q").ready + StatsOf("q").unacked, 0u);
}

TEST_F(DeadLetterTest, CancelCountsTowardDeliveryLimit) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_delivery_limit(0); })));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  Ok(PublishCmd("", "q", "m"));
  ApplyResult r = Ok(CancelCmd("n1/c1/1/a"));
  ASSERT_EQ(r.dead_lettered.size(), 1u);
  EXPECT_EQ(r.dead_lettered[0].reason, pb::DEAD_LETTER_DELIVERY_LIMIT);
}

TEST_F(DeadLetterTest, TtlExpiryDeadLetters) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_message_ttl_ms(1000); })));
  const int64_t t0 = now_;
  Ok(PublishCmd("", "q", "queue-ttl"));                                          // expires t0+1000
  Ok(PublishCmd("", "q", "short", [](auto& p) { p.set_expiration_ms(5000); }));  // min: t0+1000
  now_ = t0 + 500;
  Ok(PublishCmd("", "q", "later"));  // t0+1500
  EXPECT_EQ(state_.NextExpiryUnixMs(), t0 + 1000);
  now_ = t0 + 1000;
  EXPECT_TRUE(Ok(ExpireCmd()).dead_lettered.empty());  // expired only once past its time
  now_ = t0 + 1001;
  ApplyResult r = Ok(ExpireCmd());
  ASSERT_EQ(r.dead_lettered.size(), 2u);
  EXPECT_EQ(r.dead_lettered[0].reason, pb::DEAD_LETTER_EXPIRED);
  EXPECT_EQ(state_.ReadyIds("q"), std::vector<uint64_t>{3});
  ASSERT_EQ(Dead().size(), 2u);
  EXPECT_EQ(Dead()[0].death().reason(), pb::DEAD_LETTER_EXPIRED);
  EXPECT_EQ(Dead()[0].expires_at_unix_ms(), 0);  // no TTL carried into the DLX queue
  // An expired message is never delivered: a consumer arriving late gets nothing.
  now_ = t0 + 2000;
  r = Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  EXPECT_TRUE(r.deliveries.empty());
  ASSERT_EQ(r.dead_lettered.size(), 1u);
}

TEST_F(DeadLetterTest, PerMessageExpirationWithoutQueueTtl) {
  Ok(DeclareQueue("q", WithDlx()));
  Ok(PublishCmd("", "q", "a", [](auto& p) { p.set_expiration_ms(0); }));
  Ok(PublishCmd("", "q", "b"));
  now_ += 1;
  ApplyResult r = Ok(GetCmd("q", "n1/c1/1/get:q", true));
  ASSERT_EQ(r.deliveries.size(), 1u);
  EXPECT_EQ(r.deliveries[0].payload->body, "b");
  EXPECT_EQ(r.dead_lettered.size(), 1u);
}

TEST_F(DeadLetterTest, ZeroTtlIsDeliveredIfAConsumerIsWaiting) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_message_ttl_ms(0); })));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  EXPECT_EQ(Ok(PublishCmd("", "q", "now")).deliveries.size(), 1u);
}

TEST_F(DeadLetterTest, MaxLengthDropHead) {
  Ok(DeclareQueue("q", WithDlx([](auto& a) { a.set_max_length(2); })));
  for (int i = 1; i <= 3; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  EXPECT_EQ(state_.ReadyIds("q"), (std::vector<uint64_t>{2, 3}));
  ASSERT_EQ(Dead().size(), 1u);
  EXPECT_EQ(Dead()[0].body(), "1");
  EXPECT_EQ(Dead()[0].death().reason(), pb::DEAD_LETTER_MAXLEN);
  // Unacked messages do not count.
  Ok(ConsumeCmd("q", "n1/c1/1/a", 1));
  Ok(PublishCmd("", "q", "4"));
  Ok(PublishCmd("", "q", "5"));
  EXPECT_EQ(StatsOf("q").ready, 2u);
  EXPECT_EQ(StatsOf("q").unacked, 1u);
}

TEST_F(DeadLetterTest, MaxLengthBytesDropHead) {
  Ok(DeclareQueue("bytes", [](auto& d) { d.mutable_args()->set_max_length_bytes(10); }));
  Ok(PublishCmd("", "bytes", "12345"));
  Ok(PublishCmd("", "bytes", "12345"));
  ApplyResult r = Ok(PublishCmd("", "bytes", "1"));
  ASSERT_EQ(r.dead_lettered.size(), 1u);
  EXPECT_TRUE(r.dead_lettered[0].to_queues.empty());  // no DLX: dropped
  EXPECT_EQ(StatsOf("bytes").ready_bytes, 6u);
}

TEST_F(DeadLetterTest, MaxLengthRejectPublish) {
  Ok(DeclareQueue("q", [](auto& d) {
    d.mutable_args()->set_max_length(1);
    d.mutable_args()->set_overflow(pb::OVERFLOW_REJECT_PUBLISH);
  }));
  Ok(DeclareExchange("f", pb::EXCHANGE_FANOUT));
  Ok(BindCmd("f", "q", ""));
  Ok(BindCmd("f", "dead", ""));
  ApplyResult r = Ok(PublishCmd("f", "", "1"));
  EXPECT_EQ(r.routed_queues, (std::vector<std::string>{"dead", "q"}));
  r = Ok(PublishCmd("f", "", "2", [](auto& p) { p.set_mandatory(true); }));
  EXPECT_EQ(r.routed_queues, std::vector<std::string>{"dead"});
  EXPECT_EQ(r.rejected_queues, std::vector<std::string>{"q"});
  EXPECT_FALSE(r.unroutable);
  EXPECT_EQ(state_.ReadyIds("q"), std::vector<uint64_t>{2});  // ids go by queue name: dead got 1
}

TEST_F(DeadLetterTest, CyclesAreCut) {
  // q dead-letters into itself: expiring messages would circle forever.
  Ok(DeclareExchange("loop", pb::EXCHANGE_DIRECT));
  Ok(DeclareQueue("q", [](auto& d) {
    d.mutable_args()->set_dead_letter_exchange("loop");
    d.mutable_args()->set_message_ttl_ms(0);
  }));
  Ok(BindCmd("loop", "q", "q"));
  Ok(PublishCmd("", "q", "m"));
  now_ += 1;
  ApplyResult r = Ok(ExpireCmd());
  EXPECT_EQ(r.dead_lettered.size(), 1u);  // back into q with a fresh TTL of 0 from now
  for (int i = 0; i < 40; ++i) {
    now_ += 1;
    Ok(ExpireCmd());
  }
  EXPECT_EQ(StatsOf("q").ready, 0u);
  EXPECT_EQ(StatsOf("q").counters.dropped(), 1u);
  EXPECT_EQ(StatsOf("q").counters.dead_lettered(), BrokerOptions{}.max_dead_letter_count);
}

// ---- exclusive, auto-delete, owners ----

TEST_F(BrokerTest, ExclusiveQueueBelongsToItsConnection) {
  Ok(DeclareQueue("ex", [](auto& d) {
    d.set_exclusive(true);
    d.set_owner("n1/c7");
  }));
  ApplyResult r = Run(DeclareQueue("ex", [](auto& d) {
    d.set_exclusive(true);
    d.set_owner("n1/c8");
  }));
  EXPECT_EQ(r.error.reply_code, BrokerError::kResourceLocked);
  EXPECT_EQ(Code(ConsumeCmd("ex", "n1/c8/1/a", 0)), BrokerError::kResourceLocked);
  EXPECT_EQ(Code(GetCmd("ex", "n1/c1/1/get", true)), BrokerError::kResourceLocked);
  EXPECT_EQ(Code(DeleteQueueCmd("ex")), BrokerError::kResourceLocked);  // kOwner is n1/c1
  EXPECT_EQ(Code(PurgeCmd("ex")), BrokerError::kResourceLocked);
  Ok(ConsumeCmd("ex", "n1/c7/1/a", 0));
  Ok(PublishCmd("", "ex", "m"));  // anyone may publish to it
  r = Ok(DropOwnerCmd("n1/c7"));
  EXPECT_EQ(r.deleted_queues, std::vector<std::string>{"ex"});
  EXPECT_EQ(state_.FindQueue("ex"), nullptr);
  EXPECT_EQ(state_.consumer_count(), 0u);
}

TEST_F(BrokerTest, AutoDeleteQueueGoesWithItsLastConsumer) {
  Ok(DeclareQueue("auto", [](auto& d) { d.set_auto_delete(true); }));
  Ok(PublishCmd("", "auto", "m"));
  EXPECT_NE(state_.FindQueue("auto"), nullptr);  // never had a consumer: stays
  Ok(ConsumeCmd("auto", "n1/c1/1/a", 0));
  Ok(ConsumeCmd("auto", "n1/c1/1/b", 0));
  EXPECT_TRUE(Ok(CancelCmd("n1/c1/1/a")).deleted_queues.empty());
  ApplyResult r = Ok(CancelCmd("n1/c1/1/b"));
  EXPECT_EQ(r.deleted_queues, std::vector<std::string>{"auto"});
  EXPECT_EQ(state_.FindQueue("auto"), nullptr);
}

TEST_F(BrokerTest, DropOwnerRequeuesToOtherConsumers) {
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  Ok(ConsumeCmd("q", "n1/c2/1/b", 0));
  Ok(ConsumeCmd("q", "n2/c1/1/c", 5));
  Ok(ConsumeCmd("q", "n10/c1/1/d", 5));  // "n1" must not match "n10"
  for (int i = 0; i < 4; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  Ok(SetCreditCmd("n2/c1/1/c", 0));
  ApplyResult r = Ok(DropOwnerCmd("n1"));  // a whole node
  EXPECT_EQ(state_.ConsumerIds("q"), (std::vector<std::string>{"n2/c1/1/c", "n10/c1/1/d"}));
  // a held 1, b held 2: both come back redelivered and go round-robin to c and d.
  ASSERT_EQ(r.deliveries.size(), 2u);
  EXPECT_EQ(r.deliveries[0].message_id, 1u);
  EXPECT_EQ(r.deliveries[1].message_id, 2u);
  EXPECT_TRUE(r.deliveries[0].redelivered && r.deliveries[1].redelivered);
  EXPECT_EQ(StatsOf("q").unacked, 4u);
  EXPECT_EQ(Code(DropOwnerCmd("")), BrokerError::kPreconditionFailed);
}

// ---- delete, purge, get ----

TEST_F(BrokerTest, DeleteQueueIfUnusedIfEmpty) {
  Ok(DeclareQueue("q"));
  Ok(PublishCmd("", "q", "a"));
  Ok(PublishCmd("", "q", "b"));
  EXPECT_EQ(Code(DeleteQueueCmd("q", false, true)), BrokerError::kPreconditionFailed);
  Ok(ConsumeCmd("q", "n1/c1/1/a", 1));
  ApplyResult r = Run(DeleteQueueCmd("q", true, false));
  EXPECT_EQ(r.error.reply_text, "PRECONDITION_FAILED - queue 'q' in vhost '/' in use");
  r = Ok(DeleteQueueCmd("q"));
  EXPECT_EQ(r.message_count, 1u);  // ready messages
  EXPECT_EQ(r.cancelled_consumers, std::vector<std::string>{"n1/c1/1/a"});
  EXPECT_EQ(r.deleted_queues, std::vector<std::string>{"q"});
  EXPECT_EQ(state_.consumer_count(), 0u);
  EXPECT_EQ(Ok(DeleteQueueCmd("q")).message_count, 0u);  // deleting nothing is fine
  EXPECT_EQ(Code(AckCmd("n1/c1/1/a", {1})), 0);          // the late ack changes nothing
}

TEST_F(BrokerTest, PurgeDropsReadyKeepsUnacked) {
  EXPECT_EQ(Code(PurgeCmd("q")), BrokerError::kNotFound);
  Ok(DeclareQueue("q"));
  Ok(ConsumeCmd("q", "n1/c1/1/a", 1));
  for (int i = 0; i < 4; ++i) Ok(PublishCmd("", "q", "m"));
  EXPECT_EQ(Ok(PurgeCmd("q")).message_count, 3u);
  QueueStats s = StatsOf("q");
  EXPECT_EQ(s.ready, 0u);
  EXPECT_EQ(s.ready_bytes, 0u);
  EXPECT_EQ(s.unacked, 1u);
}

TEST_F(BrokerTest, GetWithAndWithoutAck) {
  Ok(DeclareQueue("q"));
  ApplyResult r = Ok(GetCmd("q", "n1/c1/1/get:q", false));
  EXPECT_TRUE(r.get_empty);
  for (int i = 1; i <= 3; ++i) Ok(PublishCmd("", "q", std::to_string(i)));
  r = Ok(GetCmd("q", "n1/c1/1/get:q", true));
  ASSERT_EQ(r.deliveries.size(), 1u);
  EXPECT_TRUE(r.deliveries[0].get);
  EXPECT_EQ(r.deliveries[0].message_count, 2u);
  EXPECT_EQ(r.deliveries[0].payload->body, "1");
  r = Ok(GetCmd("q", "n1/c1/1/get:q", false));
  EXPECT_EQ(r.deliveries[0].message_id, 2u);
  EXPECT_EQ(StatsOf("q").unacked, 1u);
  EXPECT_EQ(StatsOf("q").consumers, 0u);  // a get holder is not a consumer
  Ok(GetCmd("q", "n1/c1/1/get:q", false));
  EXPECT_EQ(state_.UnackedIds("n1/c1/1/get:q"), (std::vector<uint64_t>{2, 3}));
  Ok(NackCmd("n1/c1/1/get:q", {2}, true));
  EXPECT_EQ(state_.ReadyIds("q"), std::vector<uint64_t>{2});
  Ok(AckCmd("n1/c1/1/get:q", {3}));
  EXPECT_EQ(state_.consumer_count(), 0u);  // the holder holds nothing, so it is gone
  r = Ok(GetCmd("q", "n1/c1/1/get:q", true));
  EXPECT_TRUE(r.deliveries[0].redelivered);
  // A get holder never gets pushed deliveries, and a consumer id cannot be a get holder.
  Ok(ConsumeCmd("q", "n1/c1/1/a", 0));
  EXPECT_EQ(Code(GetCmd("q", "n1/c1/1/a", false)), BrokerError::kNotAllowed);
  EXPECT_EQ(Code(GetCmd("nope", "n1/c1/1/g", false)), BrokerError::kNotFound);
}

TEST_F(BrokerTest, DropOwnerReturnsGetHoldersMessages) {
  Ok(DeclareQueue("q"));
  Ok(PublishCmd("", "q", "m"));
  Ok(GetCmd("q", "n1/c1/1/get:q", false));
  Ok(DropOwnerCmd("n1/c1"));
  EXPECT_EQ(state_.ReadyIds("q"), std::vector<uint64_t>{1});
  EXPECT_EQ(state_.consumer_count(), 0u);
}

// ---- limits ----

TEST(BrokerLimits, CountsAndSizes) {
  BrokerOptions opt;
  opt.max_queues = 2;
  opt.max_exchanges = 5;  // 4 predeclared
  opt.max_bindings = 1;
  opt.max_consumers = 1;
  opt.max_message_bytes = 10;
  BrokerState s(opt);
  uint64_t i = 0;
  auto run = [&](pb::Command c) { return s.Apply(++i, c).error.reply_code; };
  EXPECT_EQ(run(DeclareQueue("a")), 0);
  EXPECT_EQ(run(DeclareQueue("b")), 0);
  EXPECT_EQ(run(DeclareQueue("c")), BrokerError::kResourceError);
  EXPECT_EQ(run(DeclareQueue(std::string(256, 'q'))), BrokerError::kPreconditionFailed);
  EXPECT_EQ(run(DeclareExchange("x", pb::EXCHANGE_DIRECT)), 0);
  EXPECT_EQ(run(DeclareExchange("y", pb::EXCHANGE_DIRECT)), BrokerError::kResourceError);
  EXPECT_EQ(run(BindCmd("x", "a", "1")), 0);
  EXPECT_EQ(run(BindCmd("x", "a", "2")), BrokerError::kResourceError);
  EXPECT_EQ(run(ConsumeCmd("a", "n/c/1/a", 0)), 0);
  EXPECT_EQ(run(ConsumeCmd("a", "n/c/1/b", 0)), BrokerError::kResourceError);
  pb::Command big = PublishCmd("", "a", std::string(11, 'x'));
  ApplyResult r = s.Apply(++i, big);
  EXPECT_EQ(r.error.reply_code, BrokerError::kPreconditionFailed);
  EXPECT_EQ(r.error.reply_text,
            "PRECONDITION_FAILED - message size 11 is larger than configured max size 10");
  EXPECT_EQ(s.Stats("a")->counters.published(), 0u);
  EXPECT_EQ(s.Apply(i, PublishCmd("", "a", "x")).error.reply_code, BrokerError::kInternalError);
  EXPECT_EQ(s.Apply(++i, pb::Command{}).error.reply_code, BrokerError::kNotAllowed);
}

TEST(BrokerLimits, DeliveriesPerApplyAreBoundedAndResumed) {
  BrokerOptions opt;
  opt.max_deliveries_per_apply = 10;
  BrokerState s(opt);
  uint64_t i = 0;
  s.Apply(++i, DeclareQueue("q"));
  for (int n = 0; n < 25; ++n) s.Apply(++i, PublishCmd("", "q", "m"));
  ApplyResult r = s.Apply(++i, ConsumeCmd("q", "n/c/1/a", 0, [](auto& c) { c.set_no_ack(true); }));
  EXPECT_EQ(r.deliveries.size(), 10u);
  EXPECT_TRUE(r.dispatch_pending);
  pb::Command dispatch;
  dispatch.mutable_dispatch();
  r = s.Apply(++i, dispatch);
  EXPECT_EQ(r.deliveries.size(), 10u);
  EXPECT_TRUE(r.dispatch_pending);
  r = s.Apply(++i, dispatch);
  EXPECT_EQ(r.deliveries.size(), 5u);
  EXPECT_FALSE(r.dispatch_pending);
  EXPECT_EQ(r.deliveries.back().message_id, 25u);
}

TEST(BrokerError, ToStatus) {
  EXPECT_TRUE(BrokerError{}.ToStatus().ok());
  EXPECT_EQ((BrokerError{404, "x"}.ToStatus().code()), Code::kNotFound);
  EXPECT_EQ((BrokerError{406, "x"}.ToStatus().code()), Code::kConflict);
  EXPECT_EQ((BrokerError{403, "x"}.ToStatus().code()), Code::kPermissionDenied);
}

// ---- snapshots ----

// Builds a state with a bit of everything in it.
std::vector<pb::Command> Scenario() {
  std::vector<pb::Command> cmds = {
      DeclareExchange("dlx", pb::EXCHANGE_FANOUT),
      DeclareExchange("t", pb::EXCHANGE_TOPIC, [](auto& d) { d.set_auto_delete(true); }),
      DeclareQueue("dead"),
      BindCmd("dlx", "dead", ""),
      DeclareQueue("q",
                   [](auto& d) {
                     d.mutable_args()->set_dead_letter_exchange("dlx");
                     d.mutable_args()->set_delivery_limit(1);
                     d.mutable_args()->set_message_ttl_ms(60'000);
                   }),
      DeclareQueue("ex",
                   [](auto& d) {
                     d.set_exclusive(true);
                     d.set_owner("n2/c1");
                   }),
      BindCmd("t", "q", "a.#"),
      ConsumeCmd("q", "n1/c1/1/a", 2),
      ConsumeCmd("q", "n2/c1/1/b", 1),
  };
  for (int i = 0; i < 6; ++i) cmds.push_back(PublishCmd("t", "a.b", "m" + std::to_string(i)));
  cmds.push_back(GetCmd("q", "n1/c1/2/get:q", false));
  cmds.push_back(NackCmd("n1/c1/1/a", {1}, true));
  return cmds;
}

std::vector<pb::Command> Suffix() {
  return {AckCmd("n2/c1/1/b", {2}),
          NackCmd("n1/c1/1/a", {3}, false),
          DropOwnerCmd("n2"),
          PublishCmd("t", "a", "late"),
          CancelCmd("n1/c1/1/a"),
          GetCmd("q", "n3/c1/1/get:q", false),
          ConsumeCmd("q", "n3/c1/1/c", 0),
          ExpireCmd(),
          DeleteQueueCmd("q")};
}

TEST(BrokerSnapshot, RestoreGivesTheSameFuture) {
  BrokerState a;
  uint64_t i = 0;
  for (pb::Command c : Scenario()) {
    c.set_now_unix_ms(1000 + i);
    ASSERT_TRUE(a.Apply(++i, c).error.ok());
  }
  pb::Snapshot snap = a.TakeSnapshot();
  EXPECT_EQ(snap.last_applied(), i);
  // Through the wire, as a snapshot would travel.
  pb::Snapshot wire;
  ASSERT_TRUE(wire.ParseFromString(snap.SerializeAsString()));
  BrokerState b;
  ASSERT_TRUE(b.Restore(wire).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(b.TakeSnapshot(), snap));
  EXPECT_EQ(b.last_applied(), a.last_applied());
  EXPECT_EQ(b.next_message_id(), a.next_message_id());
  const uint64_t at = i;
  for (pb::Command c : Suffix()) {
    c.set_now_unix_ms(1000 + i + 100'000 * (c.has_expire() ? 1 : 0));
    ++i;
    EXPECT_EQ(Describe(a.Apply(i, c)), Describe(b.Apply(i, c))) << c.ShortDebugString();
  }
  EXPECT_GT(i, at);
  EXPECT_TRUE(MessageDifferencer::Equals(a.TakeSnapshot(), b.TakeSnapshot()));
}

// A Batch is the node's way to put a turn's commands in one log entry: it must decide exactly what
// the same commands decide as entries of their own, failures included.
TEST(BrokerBatch, AppliesAsTheSameCommandsOneByOne) {
  std::vector<pb::Command> cmds = Scenario();
  for (pb::Command c : Suffix()) cmds.push_back(c);
  cmds.push_back(AckCmd("n9/c1/1/x", {1}));         // a consumer that is gone: a no-op
  cmds.push_back(PublishCmd("nowhere", "k", "x"));  // no such exchange: 404, the rest go on
  cmds.push_back(PublishCmd("t", "a", "after the failure"));
  BrokerState single, batched;
  std::vector<std::string> expected;
  uint64_t i = 0;
  for (size_t k = 0; k < cmds.size(); ++k) {
    cmds[k].set_now_unix_ms(1000 + static_cast<int64_t>(k));
    expected.push_back(Describe(single.Apply(++i, cmds[k])));
  }
  // The same commands in batches of 5 (the last one shorter): fewer, larger entries.
  uint64_t j = 0;
  std::vector<std::string> got;
  for (size_t k = 0; k < cmds.size(); k += 5) {
    pb::Command b;
    for (size_t m = k; m < std::min(k + 5, cmds.size()); ++m) {
      *b.mutable_batch()->add_commands() = cmds[m];
    }
    ApplyResult r = batched.Apply(++j, b);
    ASSERT_TRUE(r.error.ok()) << r.error.reply_text;
    ASSERT_EQ(r.batch.size(), static_cast<size_t>(b.batch().commands_size()));
    for (const ApplyResult& one : r.batch) got.push_back(Describe(one));
  }
  EXPECT_EQ(got, expected);
  EXPECT_NE(expected[expected.size() - 2].find("err=404"), std::string::npos);
  EXPECT_EQ(batched.last_applied(), j);
  pb::Snapshot a = single.TakeSnapshot(), b = batched.TakeSnapshot();
  a.clear_last_applied();  // the only difference: fewer entries
  b.clear_last_applied();
  EXPECT_TRUE(MessageDifferencer::Equals(a, b));
}

TEST(BrokerBatch, NestedOrOversizedBatchesAreRefused) {
  BrokerOptions opts;
  opts.max_commands_per_batch = 3;
  BrokerState state(opts);
  pb::Command inner;
  *inner.mutable_batch()->add_commands() = DeclareQueue("q");
  pb::Command outer;
  *outer.mutable_batch()->add_commands() = inner;
  *outer.mutable_batch()->add_commands() = DeclareQueue("q2");
  ApplyResult r = state.Apply(1, outer);
  ASSERT_EQ(r.batch.size(), 2u);
  EXPECT_EQ(r.batch[0].error.reply_code, BrokerError::kNotAllowed);
  EXPECT_TRUE(r.batch[1].error.ok());
  EXPECT_FALSE(state.Stats("q").has_value());
  EXPECT_TRUE(state.Stats("q2").has_value());

  pb::Command big;
  for (int k = 0; k < 4; ++k)
    *big.mutable_batch()->add_commands() = DeclareQueue("b" + std::to_string(k));
  r = state.Apply(2, big);
  EXPECT_EQ(r.error.reply_code, BrokerError::kResourceError);
  EXPECT_TRUE(r.batch.empty());
  EXPECT_FALSE(state.Stats("b0").has_value());
}

TEST(BrokerSnapshot, RestoreRejectsMalformed) {
  pb::Snapshot snap;
  pb::Binding* b = snap.add_bindings();
  b->set_exchange("x");
  b->set_queue("q");
  BrokerState s;
  EXPECT_FALSE(s.Restore(snap).ok());
  EXPECT_EQ(s.ExchangeNames().size(), 4u);  // unchanged
}

// ---- randomized ----

// Drives random commands over a few queues and consumers and checks, after every one, that every
// message is in exactly one place, acked messages never come back, ready queues stay in id order,
// credit holds and the stats add up. Midway it snapshots into a second state and checks that the
// rest of the run gives identical results on both.
class RandomRun {
 public:
  explicit RandomRun(uint32_t seed, BrokerOptions opts = {})
      : rng_(seed), opts_(opts), a_(opts, &spill_) {}

  void Run(int steps) {
    Setup();
    for (int step = 0; step < steps; ++step) {
      if (step == steps / 2) {
        replica_.emplace(opts_);
        ASSERT_TRUE(replica_->Restore(a_.TakeSnapshot()).ok());
      }
      pb::Command cmd = Next();
      cmd.set_now_unix_ms(now_);
      auto before = UnackedCounts();
      std::vector<uint64_t> held =
          cmd.has_ack() ? a_.UnackedIds(cmd.ack().consumer_id()) : std::vector<uint64_t>{};
      ApplyResult r = a_.Apply(++index_, cmd);
      if (step == steps / 3) TakeLocalSnapshot();
      if (local_ && step != steps / 3) log_.push_back({index_, cmd, Describe(r)});
      if (step == 2 * steps / 3) {
        ASSERT_NO_FATAL_FAILURE(RestartFromLocalSnapshot());
      }
      if (replica_) {
        ApplyResult r2 = replica_->Apply(index_, cmd);
        ASSERT_EQ(Describe(r), Describe(r2)) << "step " << step << " " << cmd.ShortDebugString();
      }
      Record(cmd, r, held);
      max_spilled_ = std::max(max_spilled_, a_.spilled_messages());
      ASSERT_NO_FATAL_FAILURE(CheckInvariants(cmd, r, before))
          << "step " << step << " " << cmd.ShortDebugString();
    }
    ASSERT_TRUE(MessageDifferencer::Equals(a_.TakeSnapshot(), replica_->TakeSnapshot()));
    EXPECT_GT(deliveries_, 1000u);
    EXPECT_GT(acks_, 100u);
    // The run reaches every way out of a queue.
    for (auto reason : {pb::DEAD_LETTER_REJECTED, pb::DEAD_LETTER_EXPIRED, pb::DEAD_LETTER_MAXLEN,
                        pb::DEAD_LETTER_DELIVERY_LIMIT}) {
      EXPECT_GT(reasons_[reason], 0u) << "reason " << reason;
    }
    EXPECT_GT(rejected_, 0u);
  }

  uint64_t max_spilled() const { return max_spilled_; }

 private:
  // A node's own snapshot: windows only, the rest stays in the spill it shares with a_.
  void TakeLocalSnapshot() {
    local_ = a_.TakeSnapshot(SnapshotForm::kLocal);
    keep_ = a_.SpillKeepNow();
  }

  // A restart: the snapshot became durable (so the spill dropped what it no longer needs), then
  // the node restores it and replays the log after it, reading the same spilled records.
  void RestartFromLocalSnapshot() {
    spill_.Truncate(keep_);
    BrokerState restarted(opts_, &spill_);
    ASSERT_TRUE(restarted.Restore(*local_).ok());
    for (const auto& [index, cmd, described] : log_) {
      ASSERT_EQ(Describe(restarted.Apply(index, cmd)), described) << cmd.ShortDebugString();
    }
    ASSERT_TRUE(MessageDifferencer::Equals(restarted.TakeSnapshot(), a_.TakeSnapshot()));
    local_.reset();
    log_.clear();
  }

 private:
  void Apply(pb::Command c) {
    c.set_now_unix_ms(now_);
    ASSERT_TRUE(a_.Apply(++index_, c).error.ok()) << c.ShortDebugString();
  }

  void Setup() {
    Apply(DeclareExchange("dlx", pb::EXCHANGE_FANOUT));
    Apply(DeclareExchange("t", pb::EXCHANGE_TOPIC));
    Apply(DeclareQueue("dead", [](auto& d) { d.mutable_args()->set_max_length(50); }));
    Apply(BindCmd("dlx", "dead", ""));
    DeclareWorkQueues();
  }

  void DeclareWorkQueues() {
    Apply(DeclareQueue("q0", [](auto& d) {
      d.mutable_args()->set_dead_letter_exchange("dlx");
      d.mutable_args()->set_delivery_limit(3);
    }));
    Apply(DeclareQueue("q1", [](auto& d) {
      d.mutable_args()->set_dead_letter_exchange("dlx");
      d.mutable_args()->set_message_ttl_ms(3000);
      d.mutable_args()->set_max_length(20);
    }));
    Apply(DeclareQueue("q2", [](auto& d) {
      d.mutable_args()->set_max_length(5);
      d.mutable_args()->set_overflow(pb::OVERFLOW_REJECT_PUBLISH);
    }));
    for (const char* q : {"q0", "q1", "q2"}) Apply(BindCmd("t", q, std::string(q) + ".#"));
    Apply(BindCmd("t", "q0", "all.*"));
    Apply(BindCmd("t", "q1", "all.*"));
  }

  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  std::string Queue() { return "q" + std::to_string(Pick(3)); }
  std::string Consumer() {
    static const char* kIds[] = {"n1/c1/1/a", "n1/c1/2/b", "n1/c2/1/c",
                                 "n2/c1/1/d", "n2/c2/1/e", "n3/c1/1/f"};
    return kIds[Pick(6)];
  }
  std::string Holder() {
    static const char* kIds[] = {"n1/c1/1/get:q0", "n1/c1/1/get:q1", "n2/c1/1/get:q2"};
    return kIds[Pick(3)];
  }
  // Some of the ids `consumer` holds, sometimes with an id it does not hold.
  std::vector<uint64_t> SomeUnacked(const std::string& consumer) {
    std::vector<uint64_t> held = a_.UnackedIds(consumer), out;
    for (uint64_t id : held) {
      if (Pick(2) == 0) out.push_back(id);
    }
    if (out.empty() && !held.empty()) out.push_back(held[Pick(held.size())]);
    if (Pick(50) == 0) out.push_back(a_.next_message_id() + 7);  // must fail, change nothing
    return out;
  }

  pb::Command Next() {
    now_ += static_cast<int64_t>(Pick(20));
    size_t roll = Pick(100);
    if (roll < 30) {
      std::string q = Queue();
      switch (Pick(3)) {
        case 0:
          return PublishCmd("", q, "b" + std::to_string(Pick(1000)), [&](auto& p) {
            if (Pick(4) == 0) p.set_expiration_ms(static_cast<int64_t>(Pick(300)));
          });
        case 1:
          return PublishCmd("t", Pick(2) ? "all.x" : q + ".k", "t",
                            [&](auto& p) { p.set_mandatory(Pick(2) == 0); });
        default:
          return PublishCmd("t", "none", "x", [](auto& p) { p.set_mandatory(true); });
      }
    }
    if (roll < 38) {
      return ConsumeCmd(Queue(), Consumer(), static_cast<uint32_t>(Pick(4)),
                        [&](auto& c) { c.set_no_ack(Pick(6) == 0); });
    }
    if (roll < 42) return CancelCmd(Consumer());
    if (roll < 62) {
      std::string c = Pick(5) ? Consumer() : Holder();
      return AckCmd(c, SomeUnacked(c));
    }
    if (roll < 72) {
      std::string c = Pick(5) ? Consumer() : Holder();
      return NackCmd(c, SomeUnacked(c), Pick(3) != 0);
    }
    if (roll < 75) return RecoverCmd(Consumer());
    if (roll < 79) return SetCreditCmd(Consumer(), static_cast<uint32_t>(Pick(5)));
    if (roll < 86) {
      std::string h = Holder();
      return GetCmd("q" + h.substr(h.size() - 1), h, Pick(3) == 0);
    }
    if (roll < 92) {
      now_ += static_cast<int64_t>(Pick(300));
      return ExpireCmd();
    }
    if (roll < 95) {
      static const char* kOwners[] = {"n1", "n2/c1", "n1/c2", "n3"};
      return DropOwnerCmd(kOwners[Pick(4)]);
    }
    if (roll < 96) return AckCmd("n1/c1/1/a", {});
    if (roll < 97 && Pick(4) == 0) return PurgeCmd("dead");
    pb::Command c;
    c.mutable_dispatch();
    return c;
  }

  std::map<std::string, size_t> UnackedCounts() {
    std::map<std::string, size_t> out;
    pb::Snapshot snap = a_.TakeSnapshot();
    for (const auto& q : snap.queues()) {
      for (const auto& c : q.consumers()) out[c.id()] = c.unacked_size();
    }
    return out;
  }

  // Messages that have left the broker for good, by acks and no-ack deliveries.
  void Record(const pb::Command& cmd, const ApplyResult& r, const std::vector<uint64_t>& held) {
    if (r.error.ok() && cmd.has_ack()) {
      // An ack from a consumer that is gone succeeds and settles nothing: count what was held.
      for (uint64_t id : cmd.ack().message_ids()) {
        if (std::find(held.begin(), held.end(), id) != held.end()) gone_.insert(id);
      }
      acks_ += cmd.ack().message_ids_size();
    }
    deliveries_ += r.deliveries.size();
    for (const DeadLettered& d : r.dead_lettered) ++reasons_[d.reason];
    rejected_ += r.rejected_queues.size();
  }

  void CheckInvariants(const pb::Command& cmd, const ApplyResult& r,
                       const std::map<std::string, size_t>& before) {
    pb::Snapshot snap = a_.TakeSnapshot();
    std::map<uint64_t, std::string> where;  // id -> its one place
    std::map<std::string, const pb::Consumer*> consumers;
    for (const auto& q : snap.queues()) {
      const std::string& name = q.queue().name();
      QueueStats stats = *a_.Stats(name);
      uint64_t ready_bytes = 0, unacked = 0, unacked_bytes = 0, last = 0;
      for (const auto& m : q.ready()) {
        ASSERT_GT(m.id(), last) << "ready out of order in " << name;
        last = m.id();
        ASSERT_TRUE(where.emplace(m.id(), name).second) << "id " << m.id() << " twice";
        ready_bytes += m.body().size();
      }
      size_t push = 0;
      for (const auto& c : q.consumers()) {
        consumers[c.id()] = &c;
        if (!c.pull()) ++push;
        if (c.pull()) {
          ASSERT_GT(c.unacked_size(), 0) << "empty get holder " << c.id();
        }
        if (c.no_ack()) {
          ASSERT_EQ(c.unacked_size(), 0);
        }
        for (const auto& m : c.unacked()) {
          ASSERT_TRUE(where.emplace(m.id(), c.id()).second) << "id " << m.id() << " twice";
          ++unacked;
          unacked_bytes += m.body().size();
        }
      }
      ASSERT_EQ(stats.ready, static_cast<uint64_t>(q.ready_size()));
      ASSERT_EQ(stats.ready_bytes, ready_bytes);
      ASSERT_EQ(stats.unacked, unacked);
      ASSERT_EQ(stats.unacked_bytes, unacked_bytes);
      ASSERT_EQ(stats.consumers, push);
      // Returned messages may overfill a queue (none is lost for being returned); a publish
      // that the queue took leaves it within its limit.
      bool took =
          std::find(r.routed_queues.begin(), r.routed_queues.end(), name) != r.routed_queues.end();
      if (took && q.queue().args().has_max_length()) {
        ASSERT_LE(stats.ready, static_cast<uint64_t>(q.queue().args().max_length()));
      }
    }
    for (const auto& [id, place] : where) {
      ASSERT_FALSE(gone_.contains(id)) << "acked message " << id << " is back in " << place;
      ASSERT_LT(id, snap.next_message_id());
    }
    for (const Delivery& d : r.deliveries) {
      ASSERT_FALSE(gone_.contains(d.message_id)) << "acked " << d.message_id << " delivered";
      auto c = consumers.find(d.consumer_id);
      bool no_ack = d.get ? cmd.get().no_ack() : c == consumers.end() || c->second->no_ack();
      if (no_ack) {
        ASSERT_FALSE(where.contains(d.message_id)) << "no-ack delivery still held";
        gone_.insert(d.message_id);
        continue;
      }
      ASSERT_TRUE(where.contains(d.message_id)) << Describe(r);
      ASSERT_EQ(where.at(d.message_id), d.consumer_id);
      const pb::Consumer& con = *c->second;
      if (!con.pull() && con.credit() > 0) {
        size_t had = before.contains(con.id()) ? before.at(con.id()) : 0;
        ASSERT_LE(static_cast<size_t>(con.unacked_size()), std::max<size_t>(con.credit(), had));
      }
    }
  }

  struct Logged {
    uint64_t index;
    pb::Command cmd;
    std::string described;
  };

  std::mt19937 rng_;
  BrokerOptions opts_;
  MemorySpill spill_;
  BrokerState a_;
  std::optional<pb::Snapshot> local_;
  SpillKeep keep_;
  std::vector<Logged> log_;
  uint64_t max_spilled_ = 0;
  std::optional<BrokerState> replica_;
  uint64_t index_ = 0;
  int64_t now_ = 1'000'000;
  std::set<uint64_t> gone_;
  uint64_t deliveries_ = 0, acks_ = 0, rejected_ = 0;
  std::map<int, uint64_t> reasons_;  // dead-letter reason -> count
};

TEST(BrokerRandom, TenThousandCommandsKeepInvariants) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomRun run(seed);
    run.Run(10'000);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The same run with a window of 3 messages: nearly every queue spills, refills, and its head moves
// between memory and the spill under every command; invariants and replicas must not notice.
TEST(BrokerRandom, TinyWindowSpillsAndKeepsInvariants) {
  BrokerOptions opts;
  opts.window = 3;
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomRun run(seed, opts);
    run.Run(10'000);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_GT(run.max_spilled(), 10u);
  }
}

}  // namespace
}  // namespace haven::mq
