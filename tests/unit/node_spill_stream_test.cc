// The queues' spilled messages as a snapshot's stream: the source reads a pinned view of one spill
// in bounded pieces (forward, restarted, skipped ahead), the sink writes them into another spill
// and refuses bad input with a clear error, and a BrokerNode restores a local snapshot on a node
// that had none of its records once they arrived that way.
#include "node/spill_stream.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "node/broker_node.h"

namespace haven::node {
namespace {

std::string Record(uint64_t uid, uint64_t id, size_t bytes = 100) {
  std::string r = "q" + std::to_string(uid) + "-m" + std::to_string(id) + "-";
  r.resize(bytes, 'x');
  return r;
}

class SpillStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/haven-spill-stream-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    from_ = Open("from");
    to_ = Open("to");
  }
  void TearDown() override {
    from_.reset();
    to_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<storage::SpillStore> Open(const std::string& name) {
    auto s = storage::SpillStore::Open(dir_ + "/" + name);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  // Queue 1: ids 1..1200 (1..199 consumed: not in the snapshot), queue 2: ids 5..504, queue 3
  // (deleted before the snapshot): ids 1..50.
  void Fill() {
    for (uint64_t id = 1; id <= 1200; ++id) from_->Append(1, id, Record(1, id));
    for (uint64_t id = 5; id <= 504; ++id) from_->Append(2, id, Record(2, id));
    for (uint64_t id = 1; id <= 50; ++id) from_->Append(3, id, Record(3, id));
  }
  static std::vector<SpillRange> Ranges() { return {{1, 200, 1001}, {2, 5, 500}}; }

  // Reads the whole stream in pieces of at most `piece` bytes.
  static std::string ReadAll(raft::SnapshotSource& src, uint64_t piece) {
    std::string out;
    for (int guard = 0; guard < 1'000'000; ++guard) {
      auto p = src.ReadAt(out.size(), piece);
      EXPECT_TRUE(p.ok()) << p.status().ToString();
      if (!p.ok()) break;
      EXPECT_LE(p->data.size(), piece);
      out += p->data;
      if (p->last) break;
    }
    return out;
  }

  static raft::pb::SnapshotMeta Meta(uint64_t index) {
    raft::pb::SnapshotMeta m;
    m.set_index(index);
    m.set_term(1);
    return m;
  }

  std::string dir_;
  std::unique_ptr<storage::SpillStore> from_, to_;
  ManualClock clock_;
};

TEST_F(SpillStreamTest, SourceToSinkCopiesExactlyTheSnapshotsRecordsFromAPinnedView) {
  Fill();
  SpillSnapshotSource src(Ranges(), from_->Pin());
  // After the pin the spill moves on (a newer snapshot truncates, new messages arrive): the
  // transfer still sees the spill as it was.
  mq::SpillKeep keep;
  keep.next_queue_uid = 4;
  keep.first_kept_id = {{1, 1100}, {2, 500}};
  from_->Truncate(keep);
  from_->Append(1, 1201, Record(1, 1201));
  ASSERT_EQ(from_->Read(1, 200, 1).front().first, 1100u);

  SpillSnapshotSink sink(*to_, clock_);
  ASSERT_TRUE(sink.Begin(Meta(7)).ok());
  uint64_t offset = 0;
  for (bool last = false; !last;) {
    auto p = src.ReadAt(offset, 4096);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    ASSERT_LE(p->data.size(), 4096u);
    ASSERT_TRUE(sink.Write(Meta(7), offset, p->data).ok());
    offset += p->data.size();
    last = p->last;
  }
  ASSERT_TRUE(sink.Finish(Meta(7)).ok());
  EXPECT_GT(offset, 1501u * 100);

  auto q1 = to_->Read(1, 0, 5000);
  ASSERT_EQ(q1.size(), 1001u);
  for (size_t i = 0; i < q1.size(); ++i) {
    ASSERT_EQ(q1[i].first, 200 + i);
    ASSERT_EQ(q1[i].second, Record(1, 200 + i));
  }
  auto q2 = to_->Read(2, 0, 5000);
  ASSERT_EQ(q2.size(), 500u);
  EXPECT_EQ(q2.front().first, 5u);
  EXPECT_EQ(q2.back().second, Record(2, 504));
  EXPECT_TRUE(to_->Read(3, 0, 10).empty()) << "a record outside the snapshot's ranges was sent";
}

TEST_F(SpillStreamTest, SourceRestartsFromAnEarlierOffsetAndSkipsAhead) {
  Fill();
  auto view = from_->Pin();
  SpillSnapshotSource whole(Ranges(), view);
  const std::string all = ReadAll(whole, 1000);
  ASSERT_GT(all.size(), 150'000u);
  EXPECT_EQ(all.substr(0, kSpillStreamMagicBytes), std::string(kSpillStreamMagic, 8));

  SpillSnapshotSource src(Ranges(), view);
  for (uint64_t offset : {uint64_t{0}, uint64_t{90'000}, uint64_t{90'100}, uint64_t{10},
                          uint64_t{all.size() - 5}, uint64_t{123'457}, uint64_t{3}}) {
    auto p = src.ReadAt(offset, 300);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_EQ(p->data, all.substr(offset, 300)) << "at " << offset;
    EXPECT_EQ(p->last, offset + 300 >= all.size()) << "at " << offset;
  }
  EXPECT_FALSE(src.ReadAt(all.size() + 10, 300).ok()) << "beyond the end";
}

TEST_F(SpillStreamTest, SourceSaysClearlyWhenTheSpillLacksRecords) {
  Fill();
  SpillSnapshotSource src({{2, 5, 600}}, from_->Pin());  // only 500 there
  Status last;
  for (uint64_t offset = 0; offset < 1'000'000; offset += 4096) {
    auto p = src.ReadAt(offset, 4096);
    if (!p.ok()) {
      last = p.status();
      break;
    }
    ASSERT_FALSE(p->last) << "ended without the missing records";
  }
  EXPECT_EQ(last.code(), Code::kIoError);
  EXPECT_NE(last.message().find("records fewer"), std::string::npos) << last.message();
}

TEST_F(SpillStreamTest, SinkRefusesBadInputWithClearErrors) {
  std::string frame(kSpillStreamMagic, kSpillStreamMagicBytes);
  std::string rec = Record(1, 1);
  for (uint64_t v : {uint64_t{1}, uint64_t{1}}) {
    for (int i = 7; i >= 0; --i) frame.push_back(static_cast<char>(v >> (8 * i)));
  }
  for (int i = 3; i >= 0; --i) frame.push_back(static_cast<char>(rec.size() >> (8 * i)));
  frame += rec;

  SpillSnapshotSink sink(*to_, clock_);
  EXPECT_FALSE(sink.Write(Meta(1), 0, frame).ok()) << "no transfer begun";
  ASSERT_TRUE(sink.Begin(Meta(1)).ok());
  EXPECT_FALSE(sink.Write(Meta(2), 0, frame).ok()) << "another snapshot's bytes";
  ASSERT_TRUE(sink.Begin(Meta(1)).ok());
  EXPECT_FALSE(sink.Write(Meta(1), 5, frame).ok()) << "a gap";
  ASSERT_TRUE(sink.Begin(Meta(1)).ok());
  Status bad = sink.Write(Meta(1), 0, "notaspillstream");
  EXPECT_NE(bad.message().find("bad magic"), std::string::npos) << bad.ToString();
  // A stream cut inside a record is not finished.
  ASSERT_TRUE(sink.Begin(Meta(1)).ok());
  ASSERT_TRUE(sink.Write(Meta(1), 0, frame.substr(0, frame.size() - 3)).ok());
  Status cut = sink.Finish(Meta(1));
  EXPECT_NE(cut.message().find("inside a record"), std::string::npos) << cut.ToString();
  // Limits: total bytes, one record, time.
  SpillSinkOptions small;
  small.max_stream_bytes = 50;
  SpillSnapshotSink tiny(*to_, clock_, small);
  ASSERT_TRUE(tiny.Begin(Meta(1)).ok());
  EXPECT_EQ(tiny.Write(Meta(1), 0, frame).code(), Code::kTooLarge);
  small = {};
  small.max_record_bytes = 10;
  SpillSnapshotSink narrow(*to_, clock_, small);
  ASSERT_TRUE(narrow.Begin(Meta(1)).ok());
  EXPECT_EQ(narrow.Write(Meta(1), 0, frame).code(), Code::kTooLarge);
  small = {};
  small.max_transfer_ms = 1000;
  SpillSnapshotSink slow(*to_, clock_, small);
  ASSERT_TRUE(slow.Begin(Meta(1)).ok());
  ASSERT_TRUE(slow.Write(Meta(1), 0, frame.substr(0, 30)).ok());
  clock_.Advance(1001);
  Status late = slow.Write(Meta(1), 30, frame.substr(30));
  EXPECT_NE(late.message().find("took over"), std::string::npos) << late.ToString();
  // A good one goes through after all that.
  ASSERT_TRUE(sink.Begin(Meta(3)).ok());
  ASSERT_TRUE(sink.Write(Meta(3), 0, frame).ok());
  ASSERT_TRUE(sink.Finish(Meta(3)).ok());
  ASSERT_EQ(to_->Read(1, 1, 1).size(), 1u);
  EXPECT_EQ(to_->Read(1, 1, 1).front().second, rec);
}

// Two BrokerNodes on their own spills: the second restores the first's local snapshot once its
// stream arrived, and serves every message in order.
class BrokerStreamTest : public SpillStreamTest {
 protected:
  std::unique_ptr<BrokerNode> Broker(storage::SpillStore* spill) {
    BrokerNodeOptions o;
    o.broker.window = 4;
    o.spill = spill;
    return std::make_unique<BrokerNode>(
        o, executor_, [](std::string, ReplicatedLog::DoneFn) {}, clock_);
  }
  void Apply(BrokerNode& b, const mq::pb::Command& cmd) {
    b.Apply(++index_, cmd.SerializeAsString());
  }
  void Publish(BrokerNode& b, int n, int from) {
    for (int i = from; i < from + n; ++i) {
      mq::pb::Command cmd;
      cmd.mutable_publish()->set_routing_key("jobs");
      cmd.mutable_publish()->set_body("body-" + std::to_string(i));
      Apply(b, cmd);
    }
  }
  net::IoRuntime executor_{1};  // never started: nothing here proposes
  uint64_t index_ = 0;
};

TEST_F(BrokerStreamTest, AFollowerWithoutTheRecordsRestoresTheStreamedSnapshot) {
  auto leader = Broker(from_.get());
  mq::pb::Command declare;
  declare.mutable_declare_queue()->set_name("jobs");
  declare.mutable_declare_queue()->set_durable(true);
  Apply(*leader, declare);
  Publish(*leader, 300, 0);
  ASSERT_GT(leader->state().spilled_messages(), 250u);
  const std::string snap = leader->TakeSnapshot();
  const uint64_t snap_index = index_;
  auto stream = leader->SnapshotStream();
  ASSERT_NE(stream, nullptr);
  EXPECT_LT(snap.size(), 2'000u) << "the local form holds the windows only";
  const std::vector<uint64_t> ids = leader->state().ReadyIds("jobs");
  // The leader moves on: consumes, publishes, and a newer snapshot truncates its spill.
  Publish(*leader, 50, 300);
  leader->TakeSnapshot();
  leader->OnSnapshotDurable(index_);

  // Without the records, the local snapshot cannot be installed: a clear error.
  auto empty_dir = Open("empty");
  auto lost = Broker(empty_dir.get());
  Status refused = lost->Restore(snap);
  EXPECT_NE(refused.message().find("not in this node's spill"), std::string::npos)
      << refused.ToString();

  auto follower = Broker(to_.get());
  SpillSnapshotSink sink(*to_, clock_);
  ASSERT_TRUE(sink.Begin(Meta(snap_index)).ok());
  std::string sent;
  for (bool last = false; !last;) {
    auto p = stream->ReadAt(sent.size(), 512);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    ASSERT_TRUE(sink.Write(Meta(snap_index), sent.size(), p->data).ok());
    sent += p->data;
    last = p->last;
  }
  ASSERT_TRUE(sink.Finish(Meta(snap_index)).ok());
  Status s = follower->Restore(snap);
  ASSERT_TRUE(s.ok()) << s.ToString();
  // The restored node can send the same snapshot on in its turn (a new leader, a member added
  // later): its stream, pinned now, has the same bytes.
  auto again = follower->SnapshotStream();
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ReadAll(*again, 700), sent);
  EXPECT_EQ(follower->state().ReadyIds("jobs"), ids);
  EXPECT_EQ(follower->state().Stats("jobs")->ready, 300u);
  // Take them all in order, through the window refills that read the streamed records.
  for (int i = 0; i < 300; ++i) {
    mq::pb::Command get;
    get.mutable_get()->set_queue("jobs");
    get.mutable_get()->set_consumer_id("9:x/1/1/get-noack:jobs");
    get.mutable_get()->set_owner("9:x/1");
    get.mutable_get()->set_no_ack(true);
    index_ = std::max<uint64_t>(index_, follower->state().last_applied());
    follower->Apply(++index_, get.SerializeAsString());
    ASSERT_EQ(follower->state().Stats("jobs")->ready, 299u - i);
  }
}

}  // namespace
}  // namespace haven::node
