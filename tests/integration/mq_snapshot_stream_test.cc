// A follower catches up on a queue backlog bigger than any snapshot used to carry: three real
// nodes with a small --mq-window and frequent snapshots; one follower is killed, the others take
// a backlog whose spilled bodies exceed the old 16 MiB limit (and compact their logs past the
// follower's), and the follower, restarted, installs the leader's snapshot with its spilled
// messages streamed in pieces. It then holds every message, and a consumer connected to it gets
// them all in order. The RSS of both ends is read while it happens.
#include <gtest/gtest.h>

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <string>

#include "base/proc_status.h"
#include "client/amqp_client.h"
#include "harness.h"

namespace haven::itest {
namespace {

constexpr uint64_t kMessages = 48'000;
constexpr size_t kBodyBytes = 1000;  // 48 MB of bodies: three times the old 16 MiB limit
// The follower installs ~48 MB of spilled messages; holding them (the old single-string
// snapshot, received then parsed) would cost twice that. The stream costs its chunks and the
// spill's fixed RocksDB budget (two 8 MiB write buffers, an 8 MiB block cache), whatever the
// backlog: the bound is below the backlog's size.
constexpr int64_t kMaxInstallGrowthKiB = 32 * 1024;

int64_t Kib(pid_t pid, const char* field) {
  return std::max<int64_t>(0, ProcStatusKiB(pid, field));
}

std::string Body(uint64_t seq) {
  std::string body = std::to_string(seq);
  body.insert(0, 12 - body.size(), '0');
  body.resize(kBodyBytes, 'x');
  return body;
}

class MqSnapshotStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ports = PickFreePorts(12);
    ASSERT_TRUE(ports.ok()) << ports.status().ToString();
    ports_ = *ports;
  }
  void TearDown() override {
    if (HasFailure()) {
      for (auto& [id, s] : nodes_) {
        std::cout << "---- n" << id << " log (tail)\n" << LastLines(s->ReadLog(), 40) << "\n";
      }
    }
    for (auto& [id, s] : nodes_) (void)s->Kill();
  }
  std::string Addr(size_t slot) const { return "127.0.0.1:" + std::to_string(ports_[slot]); }
  // Node id (1..4): raft port slot id-1, http slot 3+id, amqp slot 7+id.
  std::string Raft(uint64_t id) const { return Addr(id - 1); }
  std::string Http(uint64_t id) const { return Addr(3 + id); }
  std::string Amqp(uint64_t id) const { return Addr(7 + id); }
  std::string Url(uint64_t id) const { return "http://" + Http(id); }

  // `membership`: --peers ... for a founding member, --join for one added later.
  ServerSpec Spec(uint64_t id, std::vector<std::string> membership) const {
    ServerSpec spec;
    spec.http = Http(id);
    spec.node_name = "n" + std::to_string(id);
    spec.extra_args = {"--node-id", std::to_string(id), "--raft", Raft(id),           "--amqp",
                       Amqp(id),    "--mq-window",      "64",     "--snapshot-every", "2000"};
    spec.extra_args.insert(spec.extra_args.end(), membership.begin(), membership.end());
    return spec;
  }

  void StartThree() {
    std::string peers;
    for (uint64_t id = 1; id <= 3; ++id) {
      peers += (id > 1 ? "," : "") + std::to_string(id) + "=" + Raft(id);
    }
    for (uint64_t id = 1; id <= 3; ++id) {
      nodes_[id] = std::make_unique<ServerProcess>(Spec(id, {"--peers", peers}));
    }
    for (auto& [id, s] : nodes_) {
      Status st = s->Start();
      ASSERT_TRUE(st.ok()) << "n" << id << ": " << st.ToString() << "\n" << s->ReadLog();
    }
  }

  // Publishes `count` numbered bodies to `queue` through node `id`, all confirmed.
  void PublishBacklog(uint64_t id, const std::string& queue, uint64_t count) {
    client::ProducerOptions po;
    po.addresses = {Amqp(id)};
    po.queue = queue;
    po.confirm_window = 1024;
    client::Producer producer(po);
    ASSERT_TRUE(producer.Connect().ok());
    for (uint64_t i = 0; i < count; ++i) {
      ASSERT_TRUE(producer.PublishAsync(Body(i)).ok()) << "message " << i;
    }
    Status confirmed = producer.WaitConfirms(60'000);
    ASSERT_TRUE(confirmed.ok()) << confirmed.ToString();
    producer.Close();
  }

  // Takes every message of `queue` through node `id`: all there, in order, nothing more.
  void DrainInOrder(uint64_t id, const std::string& queue, uint64_t count) {
    client::ConsumerOptions co;
    co.addresses = {Amqp(id)};
    co.queue = queue;
    co.prefetch = 1000;
    client::Consumer consumer(co);
    ASSERT_TRUE(consumer.Connect().ok());
    for (uint64_t next = 0; next < count; ++next) {
      auto msg = consumer.Next(20'000);
      ASSERT_TRUE(msg.ok()) << "waiting for message " << next << ": " << msg.status().ToString();
      ASSERT_EQ(msg->body, Body(next)) << "message " << next << " missing or out of order";
      ASSERT_TRUE(consumer.Ack(*msg).ok());
    }
    EXPECT_TRUE(client::IsTimeout(consumer.Next(300).status())) << "a message more than published";
  }

  // The node whose raft address /v1/status/leader names on node `ask`, 0 if none.
  uint64_t LeaderSeenBy(uint64_t ask) {
    Api api(Url(ask), 2000);
    Reply r = api.Get("/v1/status/leader");
    if (!r.ok()) return 0;
    for (uint64_t id = 1; id <= 4; ++id) {
      if (r.body.find(Raft(id)) != std::string::npos) return id;
    }
    return 0;
  }

  // messages in the queue on node `id`'s own replica (-1: no answer or no queue).
  int64_t Depth(uint64_t id, const std::string& queue) {
    Api api(Url(id), 2000);
    Reply r = api.Get("/v1/mq/queues/" + queue);
    boost::json::value v = ParseJson(r.body);
    if (!r.ok() || !v.is_object()) return -1;
    const auto* m = v.as_object().if_contains("messages");
    return m != nullptr && m->is_int64() ? m->as_int64() : -1;
  }

  double Metric(uint64_t id, const char* name) {
    Api api(Url(id), 2000);
    return MetricValue(api.Get("/metrics").body, name).value_or(-1);
  }

  std::vector<int> ports_;
  std::map<uint64_t, std::unique_ptr<ServerProcess>> nodes_;
};

TEST_F(MqSnapshotStreamTest, AFollowerBehindTheCompactedLogInstallsABigBacklogAndServesIt) {
  ASSERT_NO_FATAL_FAILURE(StartThree());
  uint64_t leader = 0;
  ASSERT_TRUE(WaitFor([&] { return (leader = LeaderSeenBy(1)) != 0; }, 20'000, 20));
  const uint64_t lagging = leader == 3 ? 2 : 3;
  ServerProcess& f = *nodes_[lagging];
  ServerProcess& l = *nodes_[leader];
  ASSERT_TRUE(f.Kill().ok());

  const int64_t publish_start = NowMs();
  ASSERT_NO_FATAL_FAILURE(PublishBacklog(leader, "backlog", kMessages));
  const int64_t publish_ms = NowMs() - publish_start;
  ASSERT_EQ(Depth(leader, "backlog"), static_cast<int64_t>(kMessages));
  const int64_t leader_before_kib = Kib(l.pid(), "VmRSS");

  // Back with its old log: the leader's log starts after it, so only a snapshot helps.
  ASSERT_TRUE(f.Restart().ok()) << f.ReadLog();
  const int64_t follower_start_kib = Kib(f.pid(), "VmRSS");
  int64_t leader_peak_kib = leader_before_kib;
  const int64_t install_start = NowMs();
  ASSERT_TRUE(WaitFor(
      [&] {
        leader_peak_kib = std::max(leader_peak_kib, Kib(l.pid(), "VmRSS"));
        return Depth(lagging, "backlog") == static_cast<int64_t>(kMessages);
      },
      40'000, 20))
      << "the restarted follower never held the backlog; it has " << Depth(lagging, "backlog");
  const int64_t install_ms = NowMs() - install_start;
  const int64_t follower_hwm_kib = Kib(f.pid(), "VmHWM");
  const std::string flog = f.ReadLog();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(flog, m,
                                std::regex("mq_snapshot_stream_received index=\\d+ bytes=(\\d+) "
                                           "records=(\\d+) ms=(\\d+) mb_per_s=([0-9.]+)")))
      << "the follower did not install a streamed snapshot";
  const uint64_t stream_bytes = std::stoull(m[1]);
  EXPECT_GT(stream_bytes, uint64_t{16} << 20) << "no bigger than the old limit";
  EXPECT_GT(std::stoull(m[2]), kMessages / 2) << "most messages are spilled";
  EXPECT_EQ(flog.find("bad_snapshot"), std::string::npos);
  EXPECT_GT(Metric(lagging, "haven_mq_snapshot_stream_received_bytes_total"), 16 << 20);
  EXPECT_GT(Metric(leader, "haven_mq_snapshot_stream_sent_bytes_total"), 16 << 20);
  std::cout << "[mq-snapshot-stream] " << kMessages << " x " << kBodyBytes << " B confirmed in "
            << publish_ms << " ms; follower caught up in " << install_ms << " ms; stream "
            << stream_bytes << " B, " << m[2] << " records in " << m[3] << " ms (" << m[4]
            << " MB/s); follower rss at start " << follower_start_kib << " KiB, peak "
            << follower_hwm_kib << " KiB; leader rss " << leader_before_kib << " KiB, peak during "
            << leader_peak_kib << " KiB\n";
  EXPECT_LT(follower_hwm_kib - follower_start_kib, kMaxInstallGrowthKiB)
      << "the follower held the backlog in memory";
  EXPECT_LT(leader_peak_kib - leader_before_kib, kMaxInstallGrowthKiB)
      << "the leader held the backlog in memory";

  // Every message comes out of the follower, in order: its window refills read the records the
  // stream put in its spill.
  const int64_t drain_start = NowMs();
  ASSERT_NO_FATAL_FAILURE(DrainInOrder(lagging, "backlog", kMessages));
  std::cout << "[mq-snapshot-stream] drained through the follower in " << NowMs() - drain_start
            << " ms\n";
}

// A member added while a backlog waits, after the cluster restarted: it starts empty (--join),
// and the leader's snapshot with the spilled messages streamed is how it gets them.
TEST_F(MqSnapshotStreamTest, AMemberAddedDuringABacklogGetsItFromTheSnapshot) {
  constexpr uint64_t kCount = 20'000;
  ASSERT_NO_FATAL_FAILURE(StartThree());
  uint64_t leader = 0;
  ASSERT_TRUE(WaitFor([&] { return (leader = LeaderSeenBy(1)) != 0; }, 20'000, 20));
  ASSERT_NO_FATAL_FAILURE(PublishBacklog(leader, "jobs", kCount));
  // The whole cluster restarts: whoever leads now sends the snapshot it restored at start, with
  // the stream it pinned then (no snapshot taken since: too few entries).
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(nodes_[id]->Kill().ok());
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(nodes_[id]->Restart().ok()) << nodes_[id]->ReadLog();
  }
  ASSERT_TRUE(WaitFor([&] { return LeaderSeenBy(1) != 0; }, 20'000, 20));

  nodes_[4] = std::make_unique<ServerProcess>(Spec(4, {"--join"}));
  Status st = nodes_[4]->Start();
  ASSERT_TRUE(st.ok()) << st.ToString() << "\n" << nodes_[4]->ReadLog();
  CliResult add;
  ASSERT_TRUE(WaitFor(
      [&] {
        uint64_t l = LeaderSeenBy(1);
        if (l == 0) return false;
        add = RunCli(
            {"cluster", "add", "4", Raft(4), "--voter", "--timeout", "30s", "--addr", Url(l)});
        return add.code == 0;
      },
      60'000, 200))
      << add.out;
  ASSERT_TRUE(WaitFor([&] { return Depth(4, "jobs") == static_cast<int64_t>(kCount); }, 30'000, 20))
      << "node 4 has " << Depth(4, "jobs");
  const std::string log = nodes_[4]->ReadLog();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("mq_snapshot_stream_received index=(\\d+)")))
      << "node 4 did not install a streamed snapshot";
  EXPECT_EQ(log.find("bad_snapshot"), std::string::npos);
  // It was the one a restarted node loaded from its disk.
  bool restored = false;
  for (uint64_t id = 1; id <= 3; ++id) {
    restored |= nodes_[id]->ReadLog().find("event=recovered snapshot_index=" + m[1].str() + " ") !=
                std::string::npos;
  }
  EXPECT_TRUE(restored) << "snapshot " << m[1] << " was not one restored at start";
  ASSERT_NO_FATAL_FAILURE(DrainInOrder(4, "jobs", kCount));
}

}  // namespace
}  // namespace haven::itest
