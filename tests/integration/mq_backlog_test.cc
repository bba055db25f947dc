// A queue backlog beyond the in-memory window (--mq-window) waits on disk: a real `haven server`
// takes 100,000 confirmed messages with no consumer, stays within a memory bound that keeping them
// all in memory would break, is SIGKILLed mid-backlog, and after the restart every message comes
// out in order, none lost.
#include <gtest/gtest.h>

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>

#include "base/proc_status.h"
#include "client/amqp_client.h"
#include "harness.h"

namespace haven::itest {
namespace {

constexpr uint64_t kMessages = 100'000;
constexpr size_t kBodyBytes = 100;
constexpr uint64_t kConsumedBeforeKill = 20'000;
// Messages kept in memory all the time cost ~1 KB each in this server (the broker's copy, the
// snapshot it writes, allocator slack): 100 MB and more here. The bounds leave room for RocksDB's
// write buffers (the Raft log's own grows with the entries until it flushes) and nothing more.
constexpr uint64_t kMaxGrowthWhilePublishingKiB = 90 * 1024;
constexpr uint64_t kMaxGrowthAfterRestartKiB = 40 * 1024;

uint64_t RssKiB(pid_t pid) {
  return static_cast<uint64_t>(std::max<int64_t>(0, ProcStatusKiB(pid, "VmRSS")));
}

std::string Body(uint64_t seq) {
  std::string body = std::to_string(seq);
  body.insert(0, 12 - body.size(), '0');
  body.resize(kBodyBytes, 'x');
  return body;
}

uint64_t SeqOf(const std::string& body) { return std::stoull(body.substr(0, 12)); }

// Takes messages until `next` reaches `until`. In order: the next new message is always `next`;
// an earlier one may come again only flagged redelivered (its ack was lost with the server).
void ConsumeInOrder(client::Consumer& consumer, uint64_t& next, uint64_t until) {
  while (next < until) {
    auto m = consumer.Next(20'000);
    ASSERT_TRUE(m.ok()) << "waiting for message " << next << ": " << m.status().ToString();
    const uint64_t seq = SeqOf(m->body);
    ASSERT_LE(seq, next) << "message " << next << " missing or out of order";
    ASSERT_EQ(m->body, Body(seq));
    if (seq < next) {
      ASSERT_TRUE(m->redelivered) << "message " << seq << " delivered twice unflagged";
    } else {
      ++next;
    }
    ASSERT_TRUE(consumer.Ack(*m).ok());
  }
}

// A consumer of the backlog queue at `amqp` (before and after the restart alike).
client::ConsumerOptions BacklogConsumer(const std::string& amqp) {
  client::ConsumerOptions co;
  co.addresses = {amqp};
  co.queue = "backlog";
  co.prefetch = 500;
  return co;
}

TEST(MqBacklogTest, BacklogWaitsOnDiskSurvivesSigkillAndDrainsInOrder) {
  auto ports = PickFreePorts(1);
  ASSERT_TRUE(ports.ok()) << ports.status().ToString();
  const std::string amqp = "127.0.0.1:" + std::to_string((*ports)[0]);
  ServerProcess server(
      std::vector<std::string>{"--amqp", amqp, "--mq-window", "256", "--snapshot-every", "5000"});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const uint64_t idle_kib = RssKiB(server.pid());
  ASSERT_GT(idle_kib, 0u);

  client::ProducerOptions po;
  po.addresses = {amqp};
  po.queue = "backlog";
  po.confirm_window = 2048;
  client::Producer producer(po);
  ASSERT_TRUE(producer.Connect().ok());
  const int64_t start = NowMs();
  for (uint64_t i = 0; i < kMessages; ++i) {
    ASSERT_TRUE(producer.PublishAsync(Body(i)).ok()) << "message " << i;
  }
  Status confirmed = producer.WaitConfirms(60'000);
  ASSERT_TRUE(confirmed.ok()) << confirmed.ToString();
  const int64_t publish_ms = NowMs() - start;
  const uint64_t full_kib = RssKiB(server.pid());
  producer.Close();
  std::cout << "[mq-backlog] " << kMessages << " confirmed in " << publish_ms << " ms; rss idle "
            << idle_kib << " KiB, with the backlog " << full_kib << " KiB\n";
  EXPECT_LT(full_kib, idle_kib + kMaxGrowthWhilePublishingKiB);
  EXPECT_TRUE(std::filesystem::exists(server.data_dir() + "/mq-spill"));

  uint64_t next = 0;
  {
    client::Consumer consumer(BacklogConsumer(amqp));
    ASSERT_TRUE(consumer.Connect().ok());
    ASSERT_NO_FATAL_FAILURE(ConsumeInOrder(consumer, next, kConsumedBeforeKill));
    ASSERT_TRUE(server.Kill().ok());  // mid-backlog, acks and deliveries in flight
  }

  ASSERT_TRUE(server.Restart().ok()) << server.ReadLog();
  const uint64_t restarted_kib = RssKiB(server.pid());
  std::cout << "[mq-backlog] rss after the restart " << restarted_kib << " KiB\n";
  EXPECT_LT(restarted_kib, idle_kib + kMaxGrowthAfterRestartKiB);

  client::Consumer consumer(BacklogConsumer(amqp));
  ASSERT_TRUE(consumer.Connect().ok());
  const int64_t drain_start = NowMs();
  ASSERT_NO_FATAL_FAILURE(ConsumeInOrder(consumer, next, kMessages));
  std::cout << "[mq-backlog] drained " << kMessages - kConsumedBeforeKill << " in "
            << NowMs() - drain_start << " ms\n";
  auto extra = consumer.Next(500);
  EXPECT_TRUE(client::IsTimeout(extra.status())) << "a message more than published";
  EXPECT_EQ(server.ReadLog().find("mq_spill_failed"), std::string::npos);
}

}  // namespace
}  // namespace haven::itest
