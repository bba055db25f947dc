// The AMQP broker shell end to end: a RaftLog (cluster of one over MemLogStore) feeding a
// BrokerNode, an AmqpServer on an ephemeral loopback port, and a small blocking client built from
// the codec.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <ctime>
#include <future>
#include <map>
#include <optional>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include "base/clock.h"
#include "mq/amqp_codec.h"
#include "node/amqp_server.h"
#include "node/broker_node.h"
#include "node/raft_log.h"
#include "node_test_util.h"
#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

using testutil::FreeAddress;
using testutil::WaitUntil;

namespace amqp = mq::amqp;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A blocking AMQP client: just enough to drive the broker from a test.
class Client {
 public:
  explicit Client(uint16_t port) : socket_(ioc_), decoder_(0) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), port});
  }

  void SetTimeoutMs(int ms) { timeout_ms_ = ms; }
  void SendRaw(std::string_view bytes) {
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(bytes.data(), bytes.size()), ec);
  }
  void Send(uint16_t channel, const amqp::Method& m) {
    SendRaw(amqp::EncodeMethodFrame(channel, m));
  }
  void Publish(uint16_t channel, const std::string& exchange, const std::string& key,
               const std::string& body, bool mandatory = false) {
    amqp::BasicPublish p;
    p.exchange = exchange;
    p.routing_key = key;
    p.mandatory = mandatory;
    amqp::BasicProperties props;
    props.content_type = "text/plain";
    SendRaw(amqp::EncodeContentFrames(channel, p, props, body, 131072));
  }

  // Raw bytes (nullopt: closed or timed out). poll + recv: Asio's blocking reads ignore
  // SO_RCVTIMEO.
  std::optional<std::string> ReadSome() {
    pollfd p{socket_.native_handle(), POLLIN, 0};
    if (::poll(&p, 1, timeout_ms_) != 1) return std::nullopt;
    char buf[65536];
    ssize_t n = ::recv(socket_.native_handle(), buf, sizeof(buf), 0);
    if (n <= 0) {
      eof_ = true;
      return std::nullopt;
    }
    return std::string(buf, static_cast<size_t>(n));
  }
  // The next non-heartbeat frame; nullopt when the server closed the socket or nothing came.
  std::optional<amqp::Frame> ReadFrame() {
    for (;;) {
      if (auto f = decoder_.Next()) {
        if (f->type == amqp::kFrameHeartbeat) continue;
        return f;
      }
      auto bytes = ReadSome();
      if (!bytes) return std::nullopt;
      if (!decoder_.Feed(*bytes).ok()) return std::nullopt;
    }
  }
  // The next whole command (method with its content) and its channel.
  std::optional<std::pair<uint16_t, amqp::Command>> Read() {
    for (;;) {
      auto f = ReadFrame();
      if (!f) return std::nullopt;
      auto it = assemblers_.try_emplace(f->channel, uint64_t{1} << 30).first;
      auto cmd = it->second.Add(*f);
      if (!cmd.ok()) {
        ADD_FAILURE() << cmd.status().ToString();
        return std::nullopt;
      }
      if (*cmd) return std::make_pair(f->channel, std::move(**cmd));
    }
  }
  template <typename M>
  std::optional<M> Expect(uint16_t channel) {
    auto r = Read();
    if (!r) {
      ADD_FAILURE() << "nothing read, expected " << M::kClassId << "." << M::kMethodId;
      return std::nullopt;
    }
    EXPECT_EQ(r->first, channel);
    auto* m = std::get_if<M>(&r->second.method);
    if (!m) {
      ADD_FAILURE() << "got " << amqp::NameOf(r->second.method) << ", expected " << M::kClassId
                    << "." << M::kMethodId;
      return std::nullopt;
    }
    return *m;
  }
  // Reads until the server closes the socket (true) or a read times out (false).
  bool WaitClosed() {
    while (ReadSome()) {
    }
    return eof_;
  }
  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

  // Protocol header to open-ok. Returns the server's close when the server refuses.
  std::optional<amqp::ConnectionClose> Handshake(const std::string& user = "guest",
                                                 const std::string& password = "guest",
                                                 uint16_t heartbeat_s = 0) {
    SendRaw(amqp::kProtocolHeader);
    auto start = Expect<amqp::ConnectionStart>(0);
    EXPECT_TRUE(start.has_value());
    if (start) {
      auto caps = start->server_properties.Find("capabilities");
      EXPECT_NE(caps, nullptr);
    }
    amqp::ConnectionStartOk ok;
    ok.mechanism = "PLAIN";
    ok.response = std::string("\0", 1) + user + std::string("\0", 1) + password;
    ok.locale = "en_US";
    Send(0, ok);
    auto r = Read();
    if (!r) return amqp::ConnectionClose{0, "no answer"};
    if (auto* c = std::get_if<amqp::ConnectionClose>(&r->second.method)) return *c;
    auto* tune = std::get_if<amqp::ConnectionTune>(&r->second.method);
    EXPECT_NE(tune, nullptr);
    if (!tune) return amqp::ConnectionClose{0, "no tune"};
    Send(0, amqp::ConnectionTuneOk{tune->channel_max, tune->frame_max, heartbeat_s});
    Send(0, amqp::ConnectionOpen{});
    Expect<amqp::ConnectionOpenOk>(0);
    return std::nullopt;
  }
  void OpenChannel(uint16_t ch) {
    Send(ch, amqp::ChannelOpen{});
    Expect<amqp::ChannelOpenOk>(ch);
  }
  void DeclareQueue(uint16_t ch, const std::string& name) {
    amqp::QueueDeclare d;
    d.queue = name;
    Send(ch, d);
    auto ok = Expect<amqp::QueueDeclareOk>(ch);
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ(ok->queue, name);
  }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
  amqp::FrameDecoder decoder_;
  int timeout_ms_ = 5000;
  bool eof_ = false;
  std::map<uint16_t, amqp::CommandAssembler> assemblers_;
};

class AmqpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    executor_.Start();
    BrokerNodeOptions bo;
    bo.raft_id = 1;
    bo.expire_check_ms = 50;
    broker_ = std::make_unique<BrokerNode>(
        bo, executor_,
        [this](std::string data, ReplicatedLog::DoneFn done) {
          log_->Propose(Machine::kQueues, std::move(data), std::move(done));
        },
        clock_);
    RaftLogOptions ro;
    ro.node_id = 1;
    ro.listen = FreeAddress();
    ro.peers = {{1, ro.listen}};
    ro.tick_ms = 20;
    RaftLogCallbacks cb;
    cb.on_commit = [this](const CommittedEntry& e) {
      if (e.machine == Machine::kQueues) broker_->Apply(e.index, e.data);
      return Status::Ok();
    };
    cb.on_restore = [](uint64_t, const std::string&) {};
    cb.on_leadership = [this](bool leader) { broker_->OnLeadership(leader); };
    log_ = std::make_unique<RaftLog>(store_, executor_, std::move(cb), ro);
    ASSERT_TRUE(log_->Start().ok());
    ASSERT_TRUE(WaitUntil([&] { return log_->status().node.role == raft::Role::kLeader; }));
    AmqpServerOptions so;
    so.listen = "127.0.0.1:0";
    server_ = std::make_unique<AmqpServer>(so, executor_, *broker_);
    Status s = server_->Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::string addr = server_->address();
    port_ = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
  }
  void TearDown() override {
    if (server_) server_->Stop();
    if (log_) log_->Stop();  // proposals still in flight are failed, not leaked
    executor_.Stop();
  }
  std::unique_ptr<Client> Connect() {
    auto c = std::make_unique<Client>(port_);
    EXPECT_FALSE(c->Handshake().has_value());
    c->OpenChannel(1);
    return c;
  }
  // Publishes n messages to `queue` with confirms and checks that acks answer all n, in order:
  // confirms applied in one turn come as one basic.ack multiple, the others one by one.
  void PublishConfirmed(Client& c, uint16_t ch, const std::string& queue, int n) {
    c.Send(ch, amqp::ConfirmSelect{});
    c.Expect<amqp::ConfirmSelectOk>(ch);
    for (int i = 0; i < n; ++i) c.Publish(ch, "", queue, "msg" + std::to_string(i));
    uint64_t answered = 0;
    while (answered < static_cast<uint64_t>(n)) {
      auto ack = c.Expect<amqp::BasicAck>(ch);
      ASSERT_TRUE(ack.has_value()) << "after ack " << answered;
      ASSERT_GT(ack->delivery_tag, answered);
      ASSERT_LE(ack->delivery_tag, static_cast<uint64_t>(n));
      if (!ack->multiple) {
        EXPECT_EQ(ack->delivery_tag, answered + 1);
      }
      answered = ack->delivery_tag;
    }
  }

  // Runs fn on the executor (where the broker lives) and returns its value.
  template <typename F>
  auto OnExecutor(F fn) {
    std::promise<decltype(fn())> p;
    executor_.Post([&] { p.set_value(fn()); });
    return p.get_future().get();
  }
  size_t Ready(const std::string& queue) {
    return OnExecutor([&] {
      auto st = broker_->state().Stats(queue);
      return st ? static_cast<size_t>(st->ready) : size_t{999};
    });
  }

  SystemClock clock_;
  net::IoRuntime executor_{1};
  storage::MemLogStore store_;
  std::unique_ptr<BrokerNode> broker_;
  std::unique_ptr<RaftLog> log_;
  std::unique_ptr<AmqpServer> server_;
  uint16_t port_ = 0;
};

TEST_F(AmqpTest, PublishWithConfirmsThenConsumeWithPrefetch) {
  auto c = Connect();
  c->DeclareQueue(1, "work");
  PublishConfirmed(*c, 1, "work", 100);

  c->OpenChannel(2);
  c->Send(2, amqp::BasicQos{0, 10, false});
  c->Expect<amqp::BasicQosOk>(2);
  amqp::BasicConsume consume;
  consume.queue = "work";
  c->Send(2, consume);
  auto ok = c->Expect<amqp::BasicConsumeOk>(2);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->consumer_tag.rfind("amq.ctag-", 0), 0u);
  int received = 0;
  while (received < 100) {
    // A window of 10, then nothing more until acked.
    for (int i = 0; i < 10; ++i) {
      auto r = c->Read();
      ASSERT_TRUE(r.has_value()) << "after " << received;
      auto* d = std::get_if<amqp::BasicDeliver>(&r->second.method);
      ASSERT_NE(d, nullptr) << amqp::NameOf(r->second.method);
      EXPECT_EQ(r->second.body, "msg" + std::to_string(received));
      EXPECT_EQ(d->delivery_tag, static_cast<uint64_t>(received + 1));
      EXPECT_FALSE(d->redelivered);
      ASSERT_TRUE(r->second.header.has_value());
      EXPECT_EQ(r->second.header->props.content_type, "text/plain");
      ++received;
    }
    if (received == 10) {
      c->SetTimeoutMs(300);
      EXPECT_FALSE(c->ReadFrame().has_value()) << "more than the prefetch window";
      c->SetTimeoutMs(5000);
    }
    c->Send(2, amqp::BasicAck{static_cast<uint64_t>(received), true});
  }
  ASSERT_TRUE(WaitUntil([&] {
    std::promise<uint64_t> p;
    executor_.Post([&] {
      auto st = broker_->state().Stats("work");
      p.set_value(st ? st->ready + st->unacked : 999);
    });
    return p.get_future().get() == 0;
  }));
}

TEST_F(AmqpTest, UnackedMessagesAreRedeliveredWhenTheConsumerConnectionCloses) {
  auto pub = Connect();
  pub->DeclareQueue(1, "jobs");
  PublishConfirmed(*pub, 1, "jobs", 5);

  auto first = Connect();
  amqp::BasicConsume consume;
  consume.queue = "jobs";
  consume.consumer_tag = "worker";
  first->Send(1, consume);
  first->Expect<amqp::BasicConsumeOk>(1);
  for (int i = 0; i < 5; ++i) {
    auto d = first->Expect<amqp::BasicDeliver>(1);
    ASSERT_TRUE(d.has_value());
    EXPECT_FALSE(d->redelivered);
  }
  first->Close();  // no ack

  auto second = Connect();
  second->Send(1, consume);
  second->Expect<amqp::BasicConsumeOk>(1);
  for (int i = 0; i < 5; ++i) {
    auto r = second->Read();
    ASSERT_TRUE(r.has_value());
    auto* d = std::get_if<amqp::BasicDeliver>(&r->second.method);
    ASSERT_NE(d, nullptr);
    EXPECT_TRUE(d->redelivered);
    EXPECT_EQ(r->second.body, "msg" + std::to_string(i));
  }
}

// A follower that installs a snapshot skips the entries it replaces, and with them their
// deliveries and cancels: its connections are told what the state now says.
TEST_F(AmqpTest, ASnapshotInstalledUnderAConnectionCancelsAndDeliversWhatItNowSays) {
  auto c = Connect();
  c->DeclareQueue(1, "work");
  c->DeclareQueue(1, "other");
  PublishConfirmed(*c, 1, "work", 5);
  c->OpenChannel(2);
  c->Send(2, amqp::BasicQos{0, 2, false});
  c->Expect<amqp::BasicQosOk>(2);
  amqp::BasicConsume keep;
  keep.queue = "work";
  keep.consumer_tag = "keep";
  c->Send(2, keep);
  ASSERT_TRUE(c->Expect<amqp::BasicConsumeOk>(2).has_value());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(c->Expect<amqp::BasicDeliver>(2).has_value());
  c->OpenChannel(3);
  amqp::BasicConsume gone;
  gone.queue = "other";
  gone.consumer_tag = "gone";
  c->Send(3, gone);
  ASSERT_TRUE(c->Expect<amqp::BasicConsumeOk>(3).has_value());

  // The state a leader's snapshot brings: "keep" was given msg2 as well, and "gone" was
  // cancelled, in entries this node never applied.
  mq::pb::Snapshot snap;
  ASSERT_TRUE(snap.ParseFromString(OnExecutor([&] { return broker_->TakeSnapshot(); })));
  for (mq::pb::QueueState& qs : *snap.mutable_queues()) {
    if (qs.queue().name() == "other") qs.clear_consumers();
    if (qs.queue().name() != "work") continue;
    ASSERT_EQ(qs.consumers_size(), 1);
    ASSERT_EQ(qs.ready(0).body(), "msg2");
    *qs.mutable_consumers(0)->add_unacked() = qs.ready(0);
    qs.mutable_ready()->erase(qs.mutable_ready()->begin());
  }
  Status s = OnExecutor([&] { return broker_->Restore(snap.SerializeAsString()); });
  ASSERT_TRUE(s.ok()) << s.ToString();

  auto cancel = c->Expect<amqp::BasicCancel>(3);
  ASSERT_TRUE(cancel.has_value());
  EXPECT_EQ(cancel->consumer_tag, "gone");
  auto r = c->Read();
  ASSERT_TRUE(r.has_value());
  auto* d = std::get_if<amqp::BasicDeliver>(&r->second.method);
  ASSERT_NE(d, nullptr) << amqp::NameOf(r->second.method);
  EXPECT_EQ(r->second.body, "msg2");
  EXPECT_EQ(d->delivery_tag, 3u);
  c->SetTimeoutMs(300);
  EXPECT_FALSE(c->ReadFrame().has_value()) << "msg0 and msg1 were sent again";
  c->SetTimeoutMs(5000);
  // All three are acked as the broker knows them: the channel stays open.
  c->Send(2, amqp::BasicAck{3, true});
  ASSERT_TRUE(WaitUntil([&] {
    return OnExecutor([&] { return broker_->state().Stats("work")->counters.acked(); }) == 3;
  }));
  for (int i = 0; i < 2; ++i) {
    auto next = c->Read();
    ASSERT_TRUE(next.has_value());
    EXPECT_EQ(next->second.body, "msg" + std::to_string(3 + i));
  }
}

TEST_F(AmqpTest, MalformedFrameClosesOnlyThatConnection) {
  auto bad = Connect();
  auto good = Connect();
  // A method frame whose frame-end octet is wrong.
  std::string frame = amqp::EncodeMethodFrame(1, amqp::BasicQos{0, 1, false});
  frame.back() = 'X';
  bad->SendRaw(frame);
  auto close = bad->Expect<amqp::ConnectionClose>(0);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kFrameError);
  bad->Send(0, amqp::ConnectionCloseOk{});
  EXPECT_TRUE(bad->WaitClosed());

  good->DeclareQueue(1, "still-fine");
}

TEST_F(AmqpTest, WrongProtocolHeaderGetsTheRightOneAndAClose) {
  Client c(port_);
  c.SendRaw(std::string("AMQP\x00\x00\x08\x00", 8));
  auto bytes = c.ReadSome();
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(*bytes, amqp::kProtocolHeader);
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(AmqpTest, BadCredentialsAreRefusedWith403) {
  Client c(port_);
  auto close = c.Handshake("guest", "wrong");
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kAccessRefused);
}

TEST_F(AmqpTest, UnknownQueueClosesTheChannelOnly) {
  auto c = Connect();
  amqp::QueueDeclare d;
  d.queue = "nope";
  d.passive = true;
  c->Send(1, d);
  auto close = c->Expect<amqp::ChannelClose>(1);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kNotFound);
  EXPECT_EQ(close->class_id, amqp::kClassQueue);
  EXPECT_EQ(close->method_id, 10);
  c->Send(1, amqp::ChannelCloseOk{});
  c->OpenChannel(2);
  c->DeclareQueue(2, "exists");
  c->OpenChannel(1);  // the closed channel can be opened again
}

TEST_F(AmqpTest, BasicGetAndServerNamedQueueAndMandatoryReturn) {
  auto c = Connect();
  amqp::QueueDeclare d;  // server-named
  c->Send(1, d);
  auto ok = c->Expect<amqp::QueueDeclareOk>(1);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->queue.rfind("amq.gen-", 0), 0u);
  std::string q = ok->queue;

  amqp::BasicGet get;
  get.queue = q;
  c->Send(1, get);
  c->Expect<amqp::BasicGetEmpty>(1);

  c->Send(1, amqp::ConfirmSelect{});
  c->Expect<amqp::ConfirmSelectOk>(1);
  c->Publish(1, "", q, "hello");
  c->Expect<amqp::BasicAck>(1);
  c->Publish(1, "", "no-such-queue", "lost", /*mandatory=*/true);
  auto ret = c->Read();
  ASSERT_TRUE(ret.has_value());
  auto* r = std::get_if<amqp::BasicReturn>(&ret->second.method);
  ASSERT_NE(r, nullptr) << amqp::NameOf(ret->second.method);
  EXPECT_EQ(r->reply_code, amqp::kNoRoute);
  EXPECT_EQ(ret->second.body, "lost");
  auto ack = c->Expect<amqp::BasicAck>(1);
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->delivery_tag, 2u);

  c->Send(1, get);
  auto got = c->Read();
  ASSERT_TRUE(got.has_value());
  auto* g = std::get_if<amqp::BasicGetOk>(&got->second.method);
  ASSERT_NE(g, nullptr) << amqp::NameOf(got->second.method);
  EXPECT_EQ(got->second.body, "hello");
  c->Send(1, amqp::BasicAck{g->delivery_tag, false});
  c->Send(1, amqp::BasicAck{g->delivery_tag, false});  // twice: unknown tag, 406
  auto close = c->Expect<amqp::ChannelClose>(1);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kPreconditionFailed);
}

TEST_F(AmqpTest, TransactionsAreNotImplemented) {
  auto c = Connect();
  c->Send(1, amqp::TxSelect{});
  auto close = c->Expect<amqp::ConnectionClose>(0);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kNotImplemented);
}

TEST_F(AmqpTest, RejectWithRequeueRedelivers) {
  auto c = Connect();
  c->DeclareQueue(1, "retry");
  PublishConfirmed(*c, 1, "retry", 1);
  amqp::BasicConsume consume;
  consume.queue = "retry";
  c->Send(1, consume);
  c->Expect<amqp::BasicConsumeOk>(1);
  auto first = c->Expect<amqp::BasicDeliver>(1);
  ASSERT_TRUE(first.has_value());
  EXPECT_FALSE(first->redelivered);
  c->Send(1, amqp::BasicReject{first->delivery_tag, true});
  auto again = c->Expect<amqp::BasicDeliver>(1);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->redelivered);
  EXPECT_GT(again->delivery_tag, first->delivery_tag);
  c->Send(1, amqp::BasicAck{again->delivery_tag, false});
  ASSERT_TRUE(WaitUntil([&] {
    return OnExecutor([&] {
      auto st = broker_->state().Stats("retry");
      return st && st->ready == 0 && st->unacked == 0;
    });
  }));
}

TEST_F(AmqpTest, TheLeaderExpiresMessagesPastTheirTtl) {
  auto c = Connect();
  amqp::QueueDeclare d;
  d.queue = "short-lived";
  d.arguments.Set("x-message-ttl", int32_t{100});
  c->Send(1, d);
  c->Expect<amqp::QueueDeclareOk>(1);
  PublishConfirmed(*c, 1, "short-lived", 3);
  EXPECT_TRUE(WaitUntil([&] { return Ready("short-lived") == 0; }, 5'000));
}

TEST_F(AmqpTest, DropPreviousBootsKeepsThisBootsOwners) {
  auto c = Connect();
  c->DeclareQueue(1, "boot-q");
  amqp::BasicConsume consume;
  consume.queue = "boot-q";
  consume.consumer_tag = "mine";
  c->Send(1, consume);
  c->Expect<amqp::BasicConsumeOk>(1);
  // A consumer left behind by an earlier boot of raft id 1.
  std::promise<bool> added;
  executor_.Post([&] {
    mq::pb::Command cmd;
    auto* cc = cmd.mutable_consume();
    cc->set_queue("boot-q");
    cc->set_owner("1:00000000deadbeef/7");
    cc->set_consumer_id("1:00000000deadbeef/7/1/old");
    broker_->Propose(cmd,
                     [&](Result<mq::ApplyResult> r) { added.set_value(r.ok() && r->error.ok()); });
  });
  ASSERT_TRUE(added.get_future().get());
  auto consumers = [&] {
    return OnExecutor([&] { return broker_->state().ConsumerIds("boot-q"); });
  };
  ASSERT_EQ(consumers().size(), 2u);
  executor_.Post([&] { broker_->DropPreviousBoots(); });
  ASSERT_TRUE(WaitUntil([&] { return consumers().size() == 1; }));
  EXPECT_TRUE(consumers()[0].ends_with("/1/mine"));
  // The connection still works.
  c->DeclareQueue(1, "after-drop");
}

TEST_F(AmqpTest, HeartbeatsBothWays) {
  Client c(port_);
  ASSERT_FALSE(c.Handshake("guest", "guest", /*heartbeat_s=*/1).has_value());
  c.SetTimeoutMs(2000);
  auto bytes = c.ReadSome();
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(*bytes, amqp::EncodeHeartbeat());
  // Silent for more than two intervals: the server closes.
  c.SetTimeoutMs(4000);
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
}

// Reads commands until none comes for the client's timeout.
std::vector<amqp::Command> ReadUntilQuiet(Client& c, int quiet_ms) {
  c.SetTimeoutMs(quiet_ms);
  std::vector<amqp::Command> out;
  while (auto r = c.Read()) out.push_back(std::move(r->second));
  c.SetTimeoutMs(5000);
  return out;
}

std::vector<amqp::BasicDeliver> Deliveries(const std::vector<amqp::Command>& cmds) {
  std::vector<amqp::BasicDeliver> out;
  for (const auto& cmd : cmds) {
    if (const auto* d = std::get_if<amqp::BasicDeliver>(&cmd.method)) out.push_back(*d);
  }
  return out;
}

// RabbitMQ refuses client-initiated flow control (540 "active=false"): haven does the same.
TEST_F(AmqpTest, ChannelFlowActiveFalseIsRefusedAsRabbitMqRefusesIt) {
  auto c = Connect();
  c->Send(1, amqp::ChannelFlow{true});
  auto ok = c->Expect<amqp::ChannelFlowOk>(1);
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE(ok->active);
  c->Send(1, amqp::ChannelFlow{false});
  auto close = c->Expect<amqp::ConnectionClose>(0);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kNotImplemented);
  EXPECT_EQ(close->reply_text, "NOT_IMPLEMENTED - active=false");
  EXPECT_EQ(close->class_id, amqp::kClassChannel);
  EXPECT_EQ(close->method_id, 20);
}

TEST_F(AmqpTest, PrefetchSizeIsNotImplemented) {
  auto c = Connect();
  c->Send(1, amqp::BasicQos{4096, 10, false});
  auto close = c->Expect<amqp::ConnectionClose>(0);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->reply_code, amqp::kNotImplemented);
  EXPECT_EQ(close->class_id, amqp::kClassBasic);
}

// global=true: one window for all the channel's consumers; global=false: each consumer's own.
TEST_F(AmqpTest, GlobalQosCapsTheWholeChannel) {
  auto c = Connect();
  c->DeclareQueue(1, "shared");
  PublishConfirmed(*c, 1, "shared", 12);
  c->OpenChannel(2);
  c->Send(2, amqp::BasicQos{0, 2, false});  // each consumer: 2
  c->Expect<amqp::BasicQosOk>(2);
  c->Send(2, amqp::BasicQos{0, 3, true});  // the channel: 3
  c->Expect<amqp::BasicQosOk>(2);
  for (const char* tag : {"a", "b"}) {
    amqp::BasicConsume consume;
    consume.queue = "shared";
    consume.consumer_tag = tag;
    c->Send(2, consume);
  }
  auto first = ReadUntilQuiet(*c, 400);
  int consume_oks = 0;
  for (const auto& cmd : first)
    consume_oks += std::holds_alternative<amqp::BasicConsumeOk>(cmd.method);
  EXPECT_EQ(consume_oks, 2);
  auto got = Deliveries(first);
  ASSERT_EQ(got.size(), 3u) << "the channel's global window is 3";
  std::map<std::string, int> per_tag;
  for (const auto& d : got) ++per_tag[d.consumer_tag];
  EXPECT_LE(per_tag["a"], 2);
  EXPECT_LE(per_tag["b"], 2);

  // One ack makes room for exactly one more.
  c->Send(2, amqp::BasicAck{got[0].delivery_tag, false});
  auto second = Deliveries(ReadUntilQuiet(*c, 400));
  ASSERT_EQ(second.size(), 1u);

  // Acking everything drains the queue, 3 at a time.
  uint64_t last = second.back().delivery_tag;
  size_t total = got.size() + second.size();
  while (total < 12) {
    c->Send(2, amqp::BasicAck{last, true});
    auto more = Deliveries(ReadUntilQuiet(*c, 400));
    ASSERT_FALSE(more.empty()) << "stalled after " << total;
    ASSERT_LE(more.size(), 3u);
    total += more.size();
    last = more.back().delivery_tag;
  }
  EXPECT_EQ(total, 12u);
  c->Send(2, amqp::BasicAck{last, true});
  EXPECT_TRUE(WaitUntil([&] {
    return OnExecutor([&] {
      auto st = broker_->state().Stats("shared");
      return st && st->ready == 0 && st->unacked == 0;
    });
  }));
}

// A global limit set after the consumers exist applies to them too (RabbitMQ: the channel's
// limit covers every consumer on it); setting it back to 0 lifts it.
TEST_F(AmqpTest, GlobalQosAppliesToExistingConsumers) {
  auto c = Connect();
  c->DeclareQueue(1, "later");
  c->OpenChannel(2);
  for (const char* tag : {"x", "y"}) {
    amqp::BasicConsume consume;
    consume.queue = "later";
    consume.consumer_tag = tag;
    c->Send(2, consume);
    c->Expect<amqp::BasicConsumeOk>(2);
  }
  c->Send(2, amqp::BasicQos{0, 2, true});
  c->Expect<amqp::BasicQosOk>(2);
  auto publisher = Connect();  // its confirms must not interleave with the deliveries
  PublishConfirmed(*publisher, 1, "later", 6);
  auto got = Deliveries(ReadUntilQuiet(*c, 400));
  EXPECT_EQ(got.size(), 2u) << "the global window of 2 on consumers made before it";
  c->Send(2, amqp::BasicQos{0, 0, true});
  c->Expect<amqp::BasicQosOk>(2);
  auto rest = Deliveries(ReadUntilQuiet(*c, 400));
  EXPECT_EQ(got.size() + rest.size(), 6u) << "no limit any more";
}

// The header value of `name` in a delivered command, if any.
std::optional<amqp::FieldValue> HeaderOf(const amqp::Command& cmd, std::string_view name) {
  if (!cmd.header || !cmd.header->props.headers) return std::nullopt;
  const amqp::FieldValue* v = cmd.header->props.headers->Find(name);
  return v ? std::optional<amqp::FieldValue>(*v) : std::nullopt;
}

// A delivery on channel 1 (skipping nothing else).
std::optional<amqp::Command> NextDelivery(Client& c) {
  auto r = c.Read();
  if (!r || !std::holds_alternative<amqp::BasicDeliver>(r->second.method)) {
    ADD_FAILURE() << "expected basic.deliver, got "
                  << (r ? amqp::NameOf(r->second.method) : std::string_view("nothing"));
    return std::nullopt;
  }
  return std::move(r->second);
}

TEST_F(AmqpTest, RedeliveriesCarryXDeliveryCountAndTheStoredMessageIsUnchanged) {
  auto c = Connect();
  c->DeclareQueue(1, "counted");
  PublishConfirmed(*c, 1, "counted", 1);
  amqp::BasicConsume consume;
  consume.queue = "counted";
  consume.consumer_tag = "t";
  c->Send(1, consume);
  c->Expect<amqp::BasicConsumeOk>(1);
  auto first = NextDelivery(*c);
  ASSERT_TRUE(first.has_value());
  EXPECT_FALSE(HeaderOf(*first, "x-delivery-count").has_value()) << "first delivery";
  uint64_t tag = std::get<amqp::BasicDeliver>(first->method).delivery_tag;
  for (int64_t n = 1; n <= 2; ++n) {
    c->Send(1, amqp::BasicNack{tag, false, true});
    auto again = NextDelivery(*c);
    ASSERT_TRUE(again.has_value());
    const auto& d = std::get<amqp::BasicDeliver>(again->method);
    EXPECT_TRUE(d.redelivered);
    EXPECT_EQ(HeaderOf(*again, "x-delivery-count"), amqp::FieldValue(n));
    EXPECT_EQ(again->header->props.content_type, "text/plain");
    EXPECT_EQ(again->body, "msg0");
    tag = d.delivery_tag;
  }
  // Back in the queue (cancel returns it): stored with the properties it was published with.
  c->Send(1, amqp::BasicCancel{"t", false});
  c->Expect<amqp::BasicCancelOk>(1);
  ASSERT_TRUE(WaitUntil([&] { return Ready("counted") == 1; }));
  amqp::BasicProperties published;
  published.content_type = "text/plain";
  std::string stored = OnExecutor([&] {
    mq::pb::Snapshot snap = broker_->state().TakeSnapshot();
    for (const auto& q : snap.queues()) {
      if (q.queue().name() == "counted" && q.ready_size() == 1) return q.ready(0).properties();
    }
    return std::string("<none>");
  });
  EXPECT_EQ(stored, amqp::EncodeProperties(published));
}

TEST_F(AmqpTest, ClassicQueuesAddNoXDeliveryCount) {
  auto c = Connect();
  amqp::QueueDeclare d;
  d.queue = "classic-q";
  d.arguments.Set("x-queue-type", "classic");
  c->Send(1, d);
  c->Expect<amqp::QueueDeclareOk>(1);
  PublishConfirmed(*c, 1, "classic-q", 1);
  amqp::BasicConsume consume;
  consume.queue = "classic-q";
  c->Send(1, consume);
  c->Expect<amqp::BasicConsumeOk>(1);
  auto first = NextDelivery(*c);
  ASSERT_TRUE(first.has_value());
  c->Send(1, amqp::BasicReject{std::get<amqp::BasicDeliver>(first->method).delivery_tag, true});
  auto again = NextDelivery(*c);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(std::get<amqp::BasicDeliver>(again->method).redelivered);
  EXPECT_FALSE(HeaderOf(*again, "x-delivery-count").has_value());
}

TEST_F(AmqpTest, RejectedToADeadLetterExchangeCarriesXDeath) {
  auto c = Connect();
  c->DeclareQueue(1, "dead");
  amqp::QueueDeclare d;
  d.queue = "src";
  d.arguments.Set("x-dead-letter-exchange", "");
  d.arguments.Set("x-dead-letter-routing-key", "dead");
  c->Send(1, d);
  c->Expect<amqp::QueueDeclareOk>(1);
  PublishConfirmed(*c, 1, "src", 1);
  amqp::BasicGet get;
  get.queue = "src";
  c->Send(1, get);
  auto got = c->Expect<amqp::BasicGetOk>(1);
  ASSERT_TRUE(got.has_value());
  int64_t before = static_cast<int64_t>(std::time(nullptr));
  c->Send(1, amqp::BasicReject{got->delivery_tag, false});
  ASSERT_TRUE(WaitUntil([&] { return Ready("dead") == 1; }));
  get.queue = "dead";
  get.no_ack = true;
  c->Send(1, get);
  auto r = c->Read();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(std::holds_alternative<amqp::BasicGetOk>(r->second.method));
  EXPECT_EQ(r->second.header->props.content_type, "text/plain");
  auto xd = HeaderOf(r->second, "x-death");
  ASSERT_TRUE(xd.has_value());
  const auto* array = xd->get_if<amqp::FieldArray>();
  ASSERT_NE(array, nullptr);
  ASSERT_EQ(array->items.size(), 1u);
  const auto* e = array->items[0].get_if<amqp::FieldTable>();
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(*e->Find("count"), amqp::FieldValue(int64_t{1}));
  EXPECT_EQ(e->Find("reason")->AsString(), "rejected");
  EXPECT_EQ(e->Find("queue")->AsString(), "src");
  EXPECT_EQ(e->Find("exchange")->AsString(), "");
  EXPECT_EQ(*e->Find("routing-keys"),
            amqp::FieldValue(amqp::FieldArray({amqp::FieldValue("src")})));
  const auto* time = e->Find("time")->get_if<amqp::Timestamp>();
  ASSERT_NE(time, nullptr);
  EXPECT_GE(static_cast<int64_t>(time->seconds), before - 60);
  EXPECT_LE(static_cast<int64_t>(time->seconds), before + 60);
  EXPECT_EQ(HeaderOf(r->second, "x-first-death-reason"), amqp::FieldValue("rejected"));
  EXPECT_EQ(HeaderOf(r->second, "x-last-death-queue"), amqp::FieldValue("src"));
}

}  // namespace
}  // namespace haven::node
