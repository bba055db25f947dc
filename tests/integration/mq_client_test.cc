// The C++ AMQP client (src/client/amqp_client.h) against real `haven server` processes: confirms
// and acks on one node, then failover of a producer and a consumer when the Raft leader of a
// three-node cluster is SIGKILLed under load; and the unacked messages of a consumer whose node
// dies (SIGKILL) coming back, redelivered, to a consumer on another node within a second, while
// a node only paused (SIGSTOP) keeps its consumers.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "client/amqp_client.h"
#include "harness.h"

namespace haven::itest {
namespace {

namespace amqp = mq::amqp;
using client::Consumer;
using client::ConsumerOptions;
using client::Message;
using client::Producer;
using client::ProducerOptions;

constexpr int kNodes = 3;
constexpr int64_t kLeaderDeadlineMs = 20000;

std::string Loopback(int port) { return "127.0.0.1:" + std::to_string(port); }

amqp::BasicProperties WithId(const std::string& id) {
  amqp::BasicProperties p;
  p.message_id = id;
  return p;
}

TEST(MqClientTest, SingleNodeConfirmsAndAcksInOrder) {
  auto ports = PickFreePorts(1);
  ASSERT_TRUE(ports.ok()) << ports.status().ToString();
  const std::string amqp_addr = Loopback((*ports)[0]);
  ServerProcess server(std::vector<std::string>{"--amqp", amqp_addr});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();

  constexpr int kCount = 1000;
  ProducerOptions po;
  po.addresses = {amqp_addr};
  po.queue = "single";
  Producer producer(po);
  ASSERT_TRUE(producer.Connect().ok());
  const int64_t start = NowMs();
  for (int i = 0; i < kCount; ++i) {
    Status s = producer.PublishAsync(std::to_string(i), WithId("m" + std::to_string(i)));
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  Status w = producer.WaitConfirms(30000);
  ASSERT_TRUE(w.ok()) << w.ToString();
  EXPECT_EQ(producer.confirmed(), static_cast<uint64_t>(kCount));
  EXPECT_EQ(producer.reconnects(), 0u);
  std::cout << "[mq-client] " << kCount << " confirmed in " << NowMs() - start << " ms\n";

  ConsumerOptions co;
  co.addresses = {amqp_addr};
  co.queue = "single";
  co.prefetch = 50;
  Consumer consumer(co);
  ASSERT_TRUE(consumer.Connect().ok());
  for (int i = 0; i < kCount; ++i) {
    auto m = consumer.Next(10000);
    ASSERT_TRUE(m.ok()) << "message " << i << ": " << m.status().ToString();
    EXPECT_EQ(m->body, std::to_string(i));
    EXPECT_EQ(m->properties.message_id.value_or(""), "m" + std::to_string(i));
    EXPECT_FALSE(m->redelivered);
    ASSERT_TRUE(consumer.Ack(*m).ok());
  }
  auto extra = consumer.Next(300);
  EXPECT_TRUE(client::IsTimeout(extra.status())) << "a message more than published";

  // A queue that does not exist is a NotFound, not a hang or a crash.
  ConsumerOptions missing = co;
  missing.queue = "no-such-queue";
  missing.declare_queue = false;
  Consumer bad(missing);
  Status s = bad.Connect();
  EXPECT_EQ(s.code(), Code::kNotFound) << s.ToString();
}

// Counts what the consumer saw, per message_id.
struct Deliveries {
  std::mutex mu;
  std::map<std::string, int> count;
  int flagged_repeats = 0;    // a second (or later) delivery with redelivered = true
  int unflagged_repeats = 0;  // with redelivered = false: the producer enqueued it twice
  int redelivered_total = 0;
  int64_t longest_gap_ms = 0;
  int64_t longest_gap_end_ms = 0;  // when the longest gap ended
  int64_t first_redelivered_ms = 0;
  int64_t total = 0;
};

class MqClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(3 * kNodes);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      if (i > 0) peers += ",";
      peers += std::to_string(i + 1) + "=" + Loopback((*ports)[static_cast<size_t>(kNodes + i)]);
    }
    for (int i = 0; i < kNodes; ++i) {
      ServerSpec spec;
      http_.push_back(Loopback((*ports)[static_cast<size_t>(i)]));
      amqp_.push_back(Loopback((*ports)[static_cast<size_t>(2 * kNodes + i)]));
      spec.http = http_.back();
      spec.node_name = "n" + std::to_string(i + 1);
      spec.extra_args = {"--node-id", std::to_string(i + 1),
                         "--raft",    Loopback((*ports)[static_cast<size_t>(kNodes + i)]),
                         "--peers",   peers,
                         "--amqp",    amqp_.back()};
      nodes_.push_back(std::make_unique<ServerProcess>(std::move(spec)));
    }
    for (auto& n : nodes_) ASSERT_TRUE(n->Start().ok()) << n->ReadLog();
  }

  void TearDown() override {
    if (HasFailure()) {
      for (size_t i = 0; i < nodes_.size(); ++i) {
        std::string log = nodes_[i]->ReadLog();
        if (log.size() > 6000) log = log.substr(log.size() - 6000);
        std::cout << "---- n" << i + 1 << " log tail ----\n" << log << "\n";
      }
    }
    for (auto& n : nodes_) (void)n->Kill();
  }

  // The one node whose /metrics says haven_raft_is_leader 1 while the others agree on its id.
  std::optional<int> Leader() {
    std::optional<int> leader;
    WaitFor(
        [&] {
          std::optional<int> found;
          for (int i = 0; i < kNodes; ++i) {
            if (!nodes_[static_cast<size_t>(i)]->running()) continue;
            RaftView v = ReadRaftView("http://" + http_[static_cast<size_t>(i)], 2000);
            if (v.leader) {
              if (found) return false;
              found = i;
            }
          }
          leader = found;
          return found.has_value();
        },
        kLeaderDeadlineMs, 20);
    return leader;
  }

  // All AMQP addresses, starting with node `first`.
  std::vector<std::string> AddressesFrom(int first) const {
    std::vector<std::string> out;
    for (int k = 0; k < kNodes; ++k)
      out.push_back(amqp_[static_cast<size_t>((first + k) % kNodes)]);
    return out;
  }

  // A consumer that talks to node `i` only (it must not fail over: the test controls who holds
  // what).
  ConsumerOptions ConsumerOn(int i, const std::string& queue, uint16_t prefetch = 1000) const {
    ConsumerOptions co;
    co.addresses = {amqp_[static_cast<size_t>(i)]};
    co.queue = queue;
    co.queue_arguments.Set("x-queue-type", amqp::FieldValue(std::string("quorum")));
    co.prefetch = prefetch;
    co.failover_deadline_ms = 3000;
    return co;
  }

  // Publishes `count` messages with ids "PREFIX-0".. through node `i` and waits for their confirms.
  std::set<std::string> PublishConfirmed(int i, const std::string& queue, int count,
                                         const std::string& prefix) {
    ProducerOptions po;
    po.addresses = {amqp_[static_cast<size_t>(i)]};
    po.queue = queue;
    po.queue_arguments.Set("x-queue-type", amqp::FieldValue(std::string("quorum")));
    Producer producer(po);
    std::set<std::string> ids;
    if (Status s = producer.Connect(); !s.ok()) {
      ADD_FAILURE() << "producer: " << s.ToString();
      return ids;
    }
    for (int k = 0; k < count; ++k) {
      std::string id = prefix + "-" + std::to_string(k);
      if (!producer.PublishAsync("body-" + id, WithId(id)).ok()) break;
      ids.insert(id);
    }
    Status w = producer.WaitConfirms(20000);
    EXPECT_TRUE(w.ok()) << w.ToString();
    return ids;
  }

  // GET /v1/mq/queues/NAME on node `i`: field `field` (-1 when unreadable).
  int64_t QueueField(int i, const std::string& queue, const char* field) {
    Api api("http://" + http_[static_cast<size_t>(i)], 2000);
    Reply r = api.Get("/v1/mq/queues/" + queue);
    if (!r.ok()) return -1;
    boost::json::value v = ParseJson(r.body);
    const auto* f = v.is_object() ? v.as_object().if_contains(field) : nullptr;
    return f && f->is_int64() ? f->as_int64() : -1;
  }

  // haven_mq_member_drops_total{reason="REASON"} on node `i` (0 when never counted).
  double MemberDrops(int i, const std::string& reason) {
    Api api("http://" + http_[static_cast<size_t>(i)], 2000);
    Reply r = api.Get("/metrics");
    return MetricValue(r.body, "haven_mq_member_drops_total{reason=\"" + reason + "\"}")
        .value_or(0);
  }

  // Node `holder`'s consumer takes kMessages without acking (its prefetch is full); a consumer on
  // node `other` takes kOwn more. Then `holder` is SIGKILLed and `other` acks its own at once
  // (through the election when the holder led): `other` must get every message the holder had,
  // flagged redelivered, within a bound that only the fast path meets, keep its connection, and
  // never see its own acked messages again.
  void KillHolderExpectFastRedelivery(int holder, int other, const std::string& queue) {
    constexpr int kMessages = 50;
    constexpr int kOwn = 10;
    constexpr int64_t kBoundMs = 2000;  // the member timeout alone takes 3 s, more with Raft's
    Consumer held(ConsumerOn(holder, queue, kMessages));
    ASSERT_TRUE(held.Connect().ok());
    const std::set<std::string> published = PublishConfirmed(other, queue, kMessages, "held");
    ASSERT_EQ(published.size(), static_cast<size_t>(kMessages));
    for (int k = 0; k < kMessages; ++k) {
      auto m = held.Next(10000);
      ASSERT_TRUE(m.ok()) << "held message " << k << ": " << m.status().ToString();
      EXPECT_FALSE(m->redelivered);
    }
    Consumer taker(ConsumerOn(other, queue));
    ASSERT_TRUE(taker.Connect().ok());
    ASSERT_TRUE(WaitFor([&] { return QueueField(other, queue, "consumers") == 2; }, 10000));
    ASSERT_EQ(QueueField(other, queue, "messages_unacknowledged"), kMessages);
    ASSERT_EQ(PublishConfirmed(other, queue, kOwn, "own").size(), static_cast<size_t>(kOwn));
    std::vector<Message> own;
    for (int k = 0; k < kOwn; ++k) {
      auto m = taker.Next(10000);
      ASSERT_TRUE(m.ok()) << "own message " << k << ": " << m.status().ToString();
      ASSERT_EQ(m->properties.message_id.value_or("").rfind("own-", 0), 0u) << "the holder's";
      own.push_back(*m);
    }

    const int64_t kill_ms = NowMs();
    ASSERT_TRUE(nodes_[static_cast<size_t>(holder)]->Kill().ok());
    for (const Message& m : own) EXPECT_TRUE(taker.Ack(m).ok());
    std::set<std::string> got;
    int unflagged = 0;
    int64_t last_ms = kill_ms;
    while (got.size() < published.size() && NowMs() - kill_ms < 15000) {
      auto m = taker.Next(500);
      if (!m.ok()) {
        ASSERT_TRUE(client::IsTimeout(m.status())) << m.status().ToString();
        continue;
      }
      last_ms = NowMs();
      got.insert(m->properties.message_id.value_or(""));
      if (!m->redelivered) ++unflagged;
      EXPECT_TRUE(taker.Ack(*m).ok());
    }
    const int64_t redelivery_ms = last_ms - kill_ms;
    std::cout << "[mq-redeliver] " << got.size() << " messages held on n" << holder + 1
              << " redelivered to n" << other + 1 << " " << redelivery_ms << " ms after SIGKILL\n";
    EXPECT_EQ(got, published) << "lost or foreign messages";
    EXPECT_EQ(unflagged, 0) << "every message came back with redelivered = true";
    EXPECT_LT(redelivery_ms, kBoundMs);
    // The surviving node's connection rode through (also when the queue's leader died), and
    // every message is acked exactly as delivered: nothing more comes.
    EXPECT_EQ(taker.reconnects(), 0u);
    EXPECT_TRUE(WaitFor([&] { return QueueField(other, queue, "messages") == 0; }, 10000));
    auto extra = taker.Next(300);
    EXPECT_TRUE(client::IsTimeout(extra.status())) << "a delivery after all were acked";
    auto leader = Leader();
    ASSERT_TRUE(leader.has_value());
    EXPECT_GE(MemberDrops(*leader, "gone"), 1) << "dropped as gone, not after a timeout";
    EXPECT_EQ(MemberDrops(*leader, "silent"), 0);
  }

  std::vector<std::unique_ptr<ServerProcess>> nodes_;
  std::vector<std::string> http_;
  std::vector<std::string> amqp_;
};

TEST_F(MqClusterTest, LeaderKilledUnderLoadEveryConfirmedMessageDelivered) {
  constexpr int kTarget = 3000;    // confirmed messages to reach
  constexpr int kKillAfter = 800;  // confirmed before the kill
  constexpr int64_t kRunDeadlineMs = 120000;
  auto leader = Leader();
  ASSERT_TRUE(leader.has_value()) << "no leader";
  const int old = *leader;
  std::cout << "[mq-client] leader is n" << old + 1 << "\n";

  amqp::FieldTable quorum;
  quorum.Set("x-queue-type", amqp::FieldValue(std::string("quorum")));

  // Both clients start on the leader's node, so both must fail over when it dies.
  ProducerOptions po;
  po.addresses = AddressesFrom(old);
  po.queue = "failover";
  po.queue_arguments = quorum;
  po.confirm_window = 256;
  po.confirm_timeout_ms = 8000;
  po.failover_deadline_ms = 60000;
  ConsumerOptions co;
  co.addresses = AddressesFrom(old);
  co.queue = "failover";
  co.queue_arguments = quorum;
  co.prefetch = 200;
  co.failover_deadline_ms = 60000;

  Producer producer(po);
  Status ps = producer.Connect();
  ASSERT_TRUE(ps.ok()) << ps.ToString();
  Consumer consumer(co);
  Status cs = consumer.Connect();
  ASSERT_TRUE(cs.ok()) << cs.ToString();
  ASSERT_EQ(producer.current_address(), amqp_[static_cast<size_t>(old)]);
  ASSERT_EQ(consumer.current_address(), amqp_[static_cast<size_t>(old)]);

  std::mutex confirmed_mu;
  std::set<std::string> confirmed_ids;
  std::atomic<int64_t> confirmed_count{0};
  int64_t producer_longest_gap = 0;
  int64_t last_confirm_ms = NowMs();
  producer.set_on_confirm([&](const amqp::BasicProperties& p) {
    std::lock_guard<std::mutex> l(confirmed_mu);
    confirmed_ids.insert(p.message_id.value_or(""));
    int64_t now = NowMs();
    producer_longest_gap = std::max(producer_longest_gap, now - last_confirm_ms);
    last_confirm_ms = now;
    confirmed_count.store(static_cast<int64_t>(confirmed_ids.size()));
  });

  const int64_t start = NowMs();
  const int64_t deadline = start + kRunDeadlineMs;
  std::atomic<bool> producer_done{false};
  Status producer_status;
  std::thread producer_thread([&] {
    int i = 0;
    while (confirmed_count.load() < kTarget && NowMs() < deadline && i < 3 * kTarget) {
      Status s =
          producer.PublishAsync("body-" + std::to_string(i), WithId("m" + std::to_string(i)));
      if (!s.ok()) {
        producer_status = s;
        break;
      }
      ++i;
      // Top up to the target once the window has drained what was sent.
      if (i >= kTarget && producer_status.ok()) {
        Status w = producer.WaitConfirms(std::max<int64_t>(1, deadline - NowMs()));
        if (!w.ok()) producer_status = w;
        break;
      }
    }
    producer_done = true;
  });

  Deliveries seen;
  std::atomic<bool> stop_consumer{false};
  Status consumer_status;
  std::thread consumer_thread([&] {
    int64_t last = NowMs();
    while (!stop_consumer.load() && NowMs() < deadline) {
      auto m = consumer.Next(500);
      if (!m.ok()) {
        if (client::IsTimeout(m.status())) continue;
        consumer_status = m.status();
        return;
      }
      const std::string id = m->properties.message_id.value_or("");
      {
        std::lock_guard<std::mutex> l(seen.mu);
        int64_t now = NowMs();
        if (now - last > seen.longest_gap_ms) {
          seen.longest_gap_ms = now - last;
          seen.longest_gap_end_ms = now;
        }
        last = now;
        ++seen.total;
        if (m->redelivered && seen.redelivered_total++ == 0) seen.first_redelivered_ms = now;
        if (seen.count[id]++ > 0) {
          (m->redelivered ? seen.flagged_repeats : seen.unflagged_repeats)++;
        }
      }
      Status a = consumer.Ack(*m);
      if (!a.ok()) {
        consumer_status = a;
        return;
      }
    }
  });

  auto delivered = [&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.total;
  };
  ASSERT_TRUE(WaitFor(
      [&] { return (confirmed_count.load() >= kKillAfter && delivered() >= kKillAfter / 2); },
      60000))
      << "no load before the kill";
  ASSERT_FALSE(producer_done.load()) << "the producer finished before the kill";
  const int64_t kill_ms = NowMs();
  ASSERT_TRUE(nodes_[static_cast<size_t>(old)]->Kill().ok());
  std::cout << "[mq-client] SIGKILLed n" << old + 1 << " after " << confirmed_count.load()
            << " confirms, " << NowMs() - start << " ms into the load\n";

  producer_thread.join();
  const int64_t produced_ms = NowMs();
  // Every confirmed message must come through: wait for the consumer to see all of them.
  auto all_seen = [&] {
    std::lock_guard<std::mutex> l1(confirmed_mu);
    std::lock_guard<std::mutex> l2(seen.mu);
    return std::all_of(confirmed_ids.begin(), confirmed_ids.end(),
                       [&](const std::string& id) { return seen.count.count(id) > 0; });
  };
  WaitFor(all_seen, std::max<int64_t>(1, deadline - NowMs()), 50);
  // A little longer, so that late redeliveries are counted too.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  stop_consumer = true;
  consumer_thread.join();
  const int64_t end_ms = NowMs();

  EXPECT_TRUE(producer_status.ok()) << producer_status.ToString();
  EXPECT_TRUE(consumer_status.ok()) << consumer_status.ToString();
  EXPECT_GE(confirmed_count.load(), kTarget);
  std::vector<std::string> lost;
  for (const auto& id : confirmed_ids) {
    if (seen.count.count(id) == 0) lost.push_back(id);
  }
  EXPECT_TRUE(lost.empty()) << lost.size() << " confirmed messages never delivered, first "
                            << (lost.empty() ? "" : lost.front());
  EXPECT_GT(producer.reconnects(), 0u) << "the producer was on the killed node";
  EXPECT_GT(consumer.reconnects(), 0u) << "the consumer was on the killed node";
  // An unflagged repeat can only be a message the producer sent twice.
  EXPECT_LE(static_cast<uint64_t>(seen.unflagged_repeats), producer.republished());

  std::cout << "[mq-client] confirmed " << confirmed_count.load() << " in " << produced_ms - start
            << " ms (" << confirmed_count.load() * 1000 / std::max<int64_t>(1, produced_ms - start)
            << " msg/s); delivered " << seen.total << " (" << seen.count.size() << " distinct) by "
            << end_ms - start << " ms\n"
            << "[mq-client] repeats: " << seen.flagged_repeats << " flagged redelivered, "
            << seen.unflagged_repeats << " unflagged (producer re-publishes; producer re-sent "
            << producer.republished() << "); redelivered flag on " << seen.redelivered_total
            << " deliveries\n"
            << "[mq-client] reconnects: producer " << producer.reconnects() << " (now on "
            << producer.current_address() << "), consumer " << consumer.reconnects() << " (now on "
            << consumer.current_address() << ")\n"
            << "[mq-client] longest stall: " << seen.longest_gap_ms << " ms between deliveries, "
            << producer_longest_gap << " ms between confirms; kill at " << kill_ms - start
            << " ms; the longest delivery gap ended " << seen.longest_gap_end_ms - kill_ms
            << " ms after the kill, first redelivery " << seen.first_redelivered_ms - kill_ms
            << " ms after it\n";
}

TEST_F(MqClusterTest, FollowerKilledItsUnackedMessagesGoToAnotherNodeAtOnce) {
  auto leader = Leader();
  ASSERT_TRUE(leader.has_value()) << "no leader";
  const int holder = (*leader + 1) % kNodes;  // a follower
  const int other = (*leader + 2) % kNodes;   // the other follower
  KillHolderExpectFastRedelivery(holder, other, "held-by-follower");
}

TEST_F(MqClusterTest, QueueLeaderKilledItsUnackedMessagesGoToAnotherNodeAtOnce) {
  auto leader = Leader();
  ASSERT_TRUE(leader.has_value()) << "no leader";
  KillHolderExpectFastRedelivery(*leader, (*leader + 1) % kNodes, "held-by-leader");
}

// A paused node (SIGSTOP) accepts connections on its raft port (the kernel does), so the leader's
// probes prove nothing and it keeps its consumers for the full member timeout: resumed before it,
// it acks what it holds and nothing is delivered twice.
TEST_F(MqClusterTest, FollowerPausedShorterThanTheMemberTimeoutKeepsItsConsumers) {
  constexpr int kMessages = 50;
  constexpr int64_t kPauseMs = 2000;  // member_timeout_ms is 3 s
  auto leader = Leader();
  ASSERT_TRUE(leader.has_value()) << "no leader";
  const int holder = (*leader + 1) % kNodes;
  const int other = (*leader + 2) % kNodes;
  const std::string queue = "held-by-paused";
  Consumer held(ConsumerOn(holder, queue));
  ASSERT_TRUE(held.Connect().ok());
  const std::set<std::string> published = PublishConfirmed(other, queue, kMessages, "held");
  ASSERT_EQ(published.size(), static_cast<size_t>(kMessages));
  std::vector<Message> holding;
  for (int k = 0; k < kMessages; ++k) {
    auto m = held.Next(10000);
    ASSERT_TRUE(m.ok()) << "held message " << k << ": " << m.status().ToString();
    holding.push_back(*m);
  }
  Consumer taker(ConsumerOn(other, queue));
  ASSERT_TRUE(taker.Connect().ok());
  ASSERT_TRUE(WaitFor([&] { return QueueField(other, queue, "consumers") == 2; }, 10000));

  nodes_[static_cast<size_t>(holder)]->Signal(SIGSTOP);
  const int64_t paused_ms = NowMs();
  // Nothing may reach the other consumer while the holder is paused.
  auto during = taker.Next(kPauseMs);
  const int64_t pause_ms = NowMs() - paused_ms;
  nodes_[static_cast<size_t>(holder)]->Signal(SIGCONT);
  EXPECT_TRUE(client::IsTimeout(during.status())) << "a delivery while the holder was paused";
  EXPECT_LT(pause_ms, 3000) << "paused longer than the member timeout: the test proves nothing";

  for (const Message& m : holding) EXPECT_TRUE(held.Ack(m).ok());
  EXPECT_TRUE(WaitFor([&] { return QueueField(other, queue, "messages") == 0; }, 10000))
      << "the resumed holder's acks did not land";
  auto after = taker.Next(300);
  EXPECT_TRUE(client::IsTimeout(after.status())) << "a duplicate delivery after the pause";
  EXPECT_EQ(held.reconnects(), 0u) << "the paused node's connection was closed";
  EXPECT_EQ(QueueField(other, queue, "consumers"), 2);
  auto now_leader = Leader();
  ASSERT_TRUE(now_leader.has_value());
  EXPECT_EQ(MemberDrops(*now_leader, "gone"), 0);
  EXPECT_EQ(MemberDrops(*now_leader, "silent"), 0);
  std::cout << "[mq-redeliver] n" << holder + 1 << " paused " << pause_ms
            << " ms: no drop, no duplicate\n";
}

}  // namespace
}  // namespace haven::itest
