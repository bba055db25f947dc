// bench_mq_load: an AMQP 0-9-1 load generator for the queue benchmark (haven vs RabbitMQ quorum
// queues). It declares a durable queue (x-queue-type=quorum by default), then runs N publisher
// connections, each on a confirm channel with a window of unconfirmed persistent messages, and M
// consumer connections with a prefetch and acks. Every message body starts with its send time, so
// each consumer measures publish-to-consume latency. Bounded by a message count and a duration; it
// prints one key=value line (confirmed and consumed msgs/s, latency percentiles, errors) that
// bench/mq/run.sh parses. It speaks AMQP through haven's own codec (src/mq/amqp_codec.h) over
// blocking sockets, one thread per connection, and never retries: any error is counted and the run
// exits non-zero.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "base/duration.h"
#include "base/status.h"
#include "mq/amqp_codec.h"

namespace haven::bench {
namespace {

namespace amqp = haven::mq::amqp;
using SteadyClock = std::chrono::steady_clock;

// Hard limits: a typo on the command line must not exhaust the machine.
constexpr int kMaxConnections = 256;  // per role: one thread each
constexpr int kMaxWindow = 65'535;
constexpr int64_t kMaxMessages = 100'000'000;
constexpr int64_t kMaxDurationMs = 3'600'000;
constexpr size_t kMinMessageSize = 8;  // the send timestamp
constexpr size_t kMaxMessageSize = 4 * 1024 * 1024;
constexpr uint32_t kFrameMax = 131'072;
constexpr int64_t kSetupTimeoutMs = 30'000;
constexpr size_t kMaxPendingCommands = 1'000'000;
constexpr size_t kMaxSamplesPerThread = 8'000'000;  // latencies kept per connection (32 MB)
constexpr size_t kReadChunk = 256 * 1024;
constexpr size_t kMaxTargets = 64;
constexpr uint16_t kChannel = 1;

struct Endpoint {
  std::string host;
  std::string port;
};

struct Options {
  std::vector<Endpoint> targets;  // connection i of each role goes to targets[i % size]
  int publishers = 4;
  int consumers = 2;
  int window = 64;     // unconfirmed publishes per publisher
  int prefetch = 256;  // unacked deliveries per consumer
  size_t message_size = 256;
  int64_t messages = 2'000'000;  // bound on messages published, all publishers together
  int64_t duration_ms = 15'000;  // publishing stops after this long
  int64_t drain_ms = 15'000;     // then this long at most for confirms and deliveries to finish
  double rate = 0;               // msgs/s, all publishers together; 0: as fast as the window allows
  std::string queue;
  std::string queue_type = "quorum";  // "" for a plain durable queue
  int quorum_size = 0;                // x-quorum-initial-group-size when > 0
  bool keep_queue = false;
  std::string user = "guest";
  std::string password = "guest";
  std::string vhost = "/";
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch())
      .count();
}

// ---- One AMQP connection with channel 1 open, over a blocking socket ----------------------------
struct Incoming {
  uint16_t channel = 0;
  amqp::Command command;
};

class Connection {
 public:
  explicit Connection(int fd)
      : fd_(fd), decoder_(kFrameMax), assembler0_(kMaxMessageSize), assembler1_(kMaxMessageSize) {}
  ~Connection() {
    if (fd_ >= 0) ::close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  static Result<std::unique_ptr<Connection>> Open(const Endpoint& e, const Options& o);

  Status Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::IoError(fmt::format("send: {}", std::strerror(errno)));
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }
  Status SendMethod(uint16_t channel, const amqp::Method& m) {
    return Send(amqp::EncodeMethodFrame(channel, m));
  }

  // Waits up to timeout_ns for bytes (0: only what is already buffered or readable now), then
  // appends every complete command to `out`. A close from the broker is an error carrying its text.
  Status Poll(int64_t timeout_ns, std::vector<Incoming>* out) {
    if (!pending_.empty()) {
      while (!pending_.empty()) {
        out->push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
      return Status::Ok();
    }
    pollfd p{fd_, POLLIN, 0};
    timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
                static_cast<long>(timeout_ns % 1'000'000'000)};
    int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r < 0 && errno == EINTR) return Status::Ok();
    if (r < 0) return Status::IoError(fmt::format("poll: {}", std::strerror(errno)));
    if (r == 0) return Status::Ok();
    ssize_t n = ::recv(fd_, buf_.data(), buf_.size(), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return Status::Ok();
    if (n < 0) return Status::IoError(fmt::format("recv: {}", std::strerror(errno)));
    if (n == 0) return Status::IoError("connection closed by the broker");
    if (Status s = decoder_.Feed(std::string_view(buf_.data(), static_cast<size_t>(n))); !s.ok()) {
      return s;
    }
    while (auto frame = decoder_.Next()) {
      if (frame->type == amqp::kFrameHeartbeat) continue;
      if (frame->channel > kChannel) {
        return Status::Internal(fmt::format("frame on unexpected channel {}", frame->channel));
      }
      auto& assembler = frame->channel == 0 ? assembler0_ : assembler1_;
      auto cmd = assembler.Add(*frame);
      if (!cmd.ok()) return cmd.status();
      if (!cmd->has_value()) continue;
      if (Status s = CheckClose(**cmd); !s.ok()) return s;
      out->push_back(Incoming{frame->channel, std::move(**cmd)});
    }
    return Status::Ok();
  }

  // Waits for method T on `channel` (a synchronous reply); other commands are kept for Poll.
  template <typename T>
  Result<T> Expect(uint16_t channel, int64_t timeout_ms = kSetupTimeoutMs) {
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(timeout_ms);
    std::vector<Incoming> got;
    while (SteadyClock::now() < deadline) {
      got.clear();
      if (Status s = Poll(100'000'000, &got); !s.ok()) return s;
      for (size_t i = 0; i < got.size(); ++i) {
        auto* m = std::get_if<T>(&got[i].command.method);
        if (m && got[i].channel == channel) {
          T result = *m;
          for (size_t j = i + 1; j < got.size(); ++j) pending_.push_back(std::move(got[j]));
          return result;
        }
        if (pending_.size() >= kMaxPendingCommands) {
          return Status::Internal("too many unexpected commands while waiting for a reply");
        }
        pending_.push_back(std::move(got[i]));
      }
    }
    return Status::Unavailable(
        fmt::format("no {}.{} within {} ms", T::kClassId, T::kMethodId, timeout_ms));
  }

  // connection.close, then close-ok awaited briefly (errors ignored: the run is over).
  void Close() {
    if (!SendMethod(0, amqp::ConnectionClose{amqp::kReplySuccess, "bench done", 0, 0}).ok()) return;
    pending_.clear();
    (void)Expect<amqp::ConnectionCloseOk>(0, 2'000);
  }

  uint32_t frame_max() const { return frame_max_; }
  void set_frame_max(uint32_t f) {
    frame_max_ = f;
    decoder_.set_frame_max(f);
  }

 private:
  static Status CheckClose(const amqp::Command& c) {
    if (auto* m = std::get_if<amqp::ConnectionClose>(&c.method)) {
      return Status::Unavailable(
          fmt::format("broker closed the connection: {} {}", m->reply_code, m->reply_text));
    }
    if (auto* m = std::get_if<amqp::ChannelClose>(&c.method)) {
      return Status::Unavailable(
          fmt::format("broker closed the channel: {} {}", m->reply_code, m->reply_text));
    }
    if (auto* m = std::get_if<amqp::BasicCancel>(&c.method)) {
      return Status::Unavailable(fmt::format("broker cancelled consumer {}", m->consumer_tag));
    }
    return Status::Ok();
  }

  int fd_;
  uint32_t frame_max_ = kFrameMax;
  amqp::FrameDecoder decoder_;
  amqp::CommandAssembler assembler0_;
  amqp::CommandAssembler assembler1_;
  std::deque<Incoming> pending_;
  std::vector<char> buf_ = std::vector<char>(kReadChunk);
};

Result<int> ConnectTcp(const Endpoint& e) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(e.host.c_str(), e.port.c_str(), &hints, &res); rc != 0) {
    return Status::InvalidArgument(fmt::format("resolve {}: {}", e.host, gai_strerror(rc)));
  }
  int fd = -1;
  int err = 0;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  if (fd < 0) {
    return Status::Unavailable(
        fmt::format("connect {}:{}: {}", e.host, e.port, std::strerror(err)));
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

amqp::FieldTable ClientProperties() {
  amqp::FieldTable caps;
  caps.Set("publisher_confirms", true);
  caps.Set("basic.nack", true);
  caps.Set("consumer_cancel_notify", true);
  amqp::FieldTable props;
  props.Set("product", "haven bench_mq_load");
  props.Set("capabilities", std::move(caps));
  return props;
}

// Handshake (spec 2.2.4) and channel 1 open.
Result<std::unique_ptr<Connection>> Connection::Open(const Endpoint& e, const Options& o) {
  auto fd = ConnectTcp(e);
  if (!fd.ok()) return fd.status();
  auto c = std::make_unique<Connection>(*fd);
  if (Status s = c->Send(amqp::kProtocolHeader); !s.ok()) return s;
  if (auto start = c->Expect<amqp::ConnectionStart>(0); !start.ok()) return start.status();
  amqp::ConnectionStartOk start_ok;
  start_ok.client_properties = ClientProperties();
  start_ok.mechanism = "PLAIN";
  start_ok.response = std::string(1, '\0') + o.user + std::string(1, '\0') + o.password;
  start_ok.locale = "en_US";
  if (Status s = c->SendMethod(0, start_ok); !s.ok()) return s;
  auto tune = c->Expect<amqp::ConnectionTune>(0);
  if (!tune.ok()) return tune.status();
  uint32_t frame_max = tune->frame_max == 0 ? kFrameMax : std::min(tune->frame_max, kFrameMax);
  uint16_t channel_max = tune->channel_max == 0 ? 16 : std::min<uint16_t>(tune->channel_max, 16);
  if (Status s = c->SendMethod(0, amqp::ConnectionTuneOk{channel_max, frame_max, 0}); !s.ok()) {
    return s;
  }
  c->set_frame_max(frame_max);
  amqp::ConnectionOpen open;
  open.virtual_host = o.vhost;
  if (Status s = c->SendMethod(0, open); !s.ok()) return s;
  if (auto ok = c->Expect<amqp::ConnectionOpenOk>(0); !ok.ok()) return ok.status();
  if (Status s = c->SendMethod(kChannel, amqp::ChannelOpen{}); !s.ok()) return s;
  if (auto ok = c->Expect<amqp::ChannelOpenOk>(kChannel); !ok.ok()) return ok.status();
  return c;
}

// ---- Shared run state ---------------------------------------------------------------------------
struct Shared {
  std::atomic<int64_t> reserved{0};   // messages claimed by publishers (bounded by --messages)
  std::atomic<int64_t> confirmed{0};  // acked by the broker
  std::atomic<int64_t> consumed{0};
  std::atomic<int> publishers_running{0};
  SteadyClock::time_point start;
  SteadyClock::time_point publish_end;  // publishing stops here
  SteadyClock::time_point drain_end;    // everything stops here
  std::mutex errors_mu;
  std::map<std::string, int64_t> error_kinds;
  std::atomic<int64_t> errors{0};

  void Error(const std::string& kind) {
    errors.fetch_add(1);
    std::lock_guard lock(errors_mu);
    if (error_kinds.size() < 32 || error_kinds.count(kind)) error_kinds[kind]++;
  }
};

struct Tally {
  int64_t published = 0;
  int64_t confirmed = 0;
  int64_t nacked = 0;
  int64_t unconfirmed = 0;  // still awaited when the run ended
  int64_t consumed = 0;
  SteadyClock::time_point last_confirm{};
  SteadyClock::time_point last_consume{};
  std::vector<uint32_t> latency_us;  // publish-to-consume (consumers) or publish-to-confirm
};

void Record(std::vector<uint32_t>* v, int64_t ns) {
  if (v->size() >= kMaxSamplesPerThread) return;
  v->push_back(static_cast<uint32_t>(std::clamp<int64_t>(ns / 1000, 0, UINT32_MAX)));
}

// ---- Publisher ----------------------------------------------------------------------------------
// One basic.publish with its header and body, encoded once; the send time is patched in.
class PublishTemplate {
 public:
  PublishTemplate(const Options& o, uint32_t frame_max) {
    amqp::BasicPublish publish;
    publish.routing_key = o.queue;  // default exchange: routes to the queue of that name
    amqp::BasicProperties props;
    props.delivery_mode = amqp::kDeliveryPersistent;
    props.content_type = "application/octet-stream";
    std::string body(o.message_size, 'm');
    frames_ = amqp::EncodeContentFrames(kChannel, publish, props, body, frame_max);
    // The first body frame: its payload begins after the method and header frames.
    size_t method_len = amqp::EncodeMethodFrame(kChannel, publish).size();
    std::string header = amqp::EncodeContentHeader(amqp::kClassBasic, o.message_size, props);
    stamp_offset_ = method_len + amqp::kFrameOverhead + header.size() + 7;
    // A codec whose framing differs would make every latency garbage: refuse to guess.
    if (stamp_offset_ + sizeof(int64_t) > frames_.size() ||
        static_cast<uint8_t>(frames_[stamp_offset_ - 7]) != amqp::kFrameBody) {
      std::fprintf(stderr, "load: cannot locate the body frame in an encoded publish\n");
      std::abort();
    }
  }
  std::string_view Stamp(int64_t now_ns) {
    std::memcpy(frames_.data() + stamp_offset_, &now_ns, sizeof(now_ns));
    return frames_;
  }

 private:
  std::string frames_;
  size_t stamp_offset_ = 0;
};

Status ProcessConfirms(const std::vector<Incoming>& got, std::map<uint64_t, int64_t>* unconfirmed,
                       Tally* t, Shared* sh) {
  const int64_t now = NowNs();
  for (const auto& in : got) {
    uint64_t tag = 0;
    bool multiple = false;
    bool nack = false;
    if (auto* a = std::get_if<amqp::BasicAck>(&in.command.method)) {
      tag = a->delivery_tag;
      multiple = a->multiple;
    } else if (auto* n = std::get_if<amqp::BasicNack>(&in.command.method)) {
      tag = n->delivery_tag;
      multiple = n->multiple;
      nack = true;
    } else {
      return Status::Internal(
          fmt::format("publisher got unexpected {}", amqp::NameOf(in.command.method)));
    }
    auto end = multiple ? unconfirmed->upper_bound(tag) : unconfirmed->find(tag);
    auto begin = multiple ? unconfirmed->begin() : end;
    if (!multiple) {
      if (end == unconfirmed->end()) return Status::Internal(fmt::format("ack of unknown {}", tag));
      ++end;
    }
    int64_t n = 0;
    for (auto it = begin; it != end; ++it) {
      if (!nack) Record(&t->latency_us, now - it->second);
      ++n;
    }
    unconfirmed->erase(begin, end);
    if (nack) {
      t->nacked += n;
      for (int64_t i = 0; i < n; ++i) sh->Error("nack");
    } else {
      t->confirmed += n;
      sh->confirmed.fetch_add(n);
      t->last_confirm = SteadyClock::now();
    }
  }
  return Status::Ok();
}

Status RunPublisher(Connection& c, const Options& o, Shared* sh, Tally* t) {
  PublishTemplate tmpl(o, c.frame_max());
  std::map<uint64_t, int64_t> unconfirmed;  // delivery tag -> send time (ns)
  uint64_t next_tag = 1;
  const int64_t interval_ns =
      o.rate > 0 ? static_cast<int64_t>(1e9 * o.publishers / o.rate) : 0;  // per publisher
  int64_t next_send_ns = NowNs();
  std::string batch;
  std::vector<Incoming> got;
  bool publishing = true;
  while (true) {
    const auto now = SteadyClock::now();
    if (publishing && now >= sh->publish_end) publishing = false;
    if (!publishing && (unconfirmed.empty() || now >= sh->drain_end)) break;
    batch.clear();
    int64_t now_ns = NowNs();
    while (publishing && unconfirmed.size() < static_cast<size_t>(o.window) &&
           (interval_ns == 0 || now_ns >= next_send_ns)) {
      if (sh->reserved.fetch_add(1) >= o.messages) {
        publishing = false;
        break;
      }
      batch.append(tmpl.Stamp(now_ns));
      unconfirmed.emplace(next_tag++, now_ns);
      ++t->published;
      if (interval_ns > 0) next_send_ns += interval_ns;
    }
    if (!batch.empty()) {
      if (Status s = c.Send(batch); !s.ok()) return s;
    }
    int64_t wait_ns = 100'000'000;
    if (publishing && interval_ns > 0 && unconfirmed.size() < static_cast<size_t>(o.window)) {
      wait_ns = std::clamp<int64_t>(next_send_ns - NowNs(), 0, wait_ns);
    }
    got.clear();
    if (Status s = c.Poll(wait_ns, &got); !s.ok()) return s;
    if (Status s = ProcessConfirms(got, &unconfirmed, t, sh); !s.ok()) return s;
  }
  t->unconfirmed = static_cast<int64_t>(unconfirmed.size());
  return Status::Ok();
}

// ---- Consumer -----------------------------------------------------------------------------------
// Consumers stop once every publisher is done and everything confirmed has been consumed, or at the
// drain deadline.
bool ConsumersDone(const Shared& sh) {
  return sh.publishers_running.load() == 0 && sh.consumed.load() >= sh.confirmed.load();
}

Status RunConsumer(Connection& c, int index, Shared* sh, Tally* t) {
  uint64_t last_tag = 0;
  uint64_t acked_tag = 0;
  std::vector<Incoming> got;
  while (SteadyClock::now() < sh->drain_end && !ConsumersDone(*sh)) {
    got.clear();
    if (Status s = c.Poll(50'000'000, &got); !s.ok()) return s;
    const int64_t now = NowNs();
    for (const auto& in : got) {
      auto* d = std::get_if<amqp::BasicDeliver>(&in.command.method);
      if (d == nullptr) {
        return Status::Internal(
            fmt::format("consumer {} got unexpected {}", index, amqp::NameOf(in.command.method)));
      }
      if (in.command.body.size() >= sizeof(int64_t)) {
        int64_t sent = 0;
        std::memcpy(&sent, in.command.body.data(), sizeof(sent));
        Record(&t->latency_us, now - sent);
      }
      if (d->redelivered) sh->Error("redelivered");
      last_tag = std::max(last_tag, d->delivery_tag);
      ++t->consumed;
    }
    if (!got.empty()) {
      sh->consumed.fetch_add(static_cast<int64_t>(got.size()));
      t->last_consume = SteadyClock::now();
    }
    if (last_tag > acked_tag) {
      // One ack for everything read so far: what a client acking each batch would send.
      if (Status s = c.SendMethod(kChannel, amqp::BasicAck{last_tag, true}); !s.ok()) return s;
      acked_tag = last_tag;
    }
  }
  return Status::Ok();
}

Status StartConsuming(Connection& c, const Options& o, int index) {
  amqp::BasicQos qos;
  qos.prefetch_count = static_cast<uint16_t>(o.prefetch);
  if (Status s = c.SendMethod(kChannel, qos); !s.ok()) return s;
  if (auto ok = c.Expect<amqp::BasicQosOk>(kChannel); !ok.ok()) return ok.status();
  amqp::BasicConsume consume;
  consume.queue = o.queue;
  consume.consumer_tag = fmt::format("bench-c{}", index);
  if (Status s = c.SendMethod(kChannel, consume); !s.ok()) return s;
  if (auto ok = c.Expect<amqp::BasicConsumeOk>(kChannel); !ok.ok()) return ok.status();
  return Status::Ok();
}

Status SelectConfirms(Connection& c) {
  if (Status s = c.SendMethod(kChannel, amqp::ConfirmSelect{}); !s.ok()) return s;
  if (auto ok = c.Expect<amqp::ConfirmSelectOk>(kChannel); !ok.ok()) return ok.status();
  return Status::Ok();
}

// ---- Queue setup --------------------------------------------------------------------------------
Status DeclareQueue(Connection& c, const Options& o) {
  amqp::QueueDeclare declare;
  declare.queue = o.queue;
  declare.durable = true;
  if (!o.queue_type.empty()) declare.arguments.Set("x-queue-type", o.queue_type);
  if (o.quorum_size > 0) {
    declare.arguments.Set("x-quorum-initial-group-size", static_cast<int32_t>(o.quorum_size));
  }
  if (Status s = c.SendMethod(kChannel, declare); !s.ok()) return s;
  auto ok = c.Expect<amqp::QueueDeclareOk>(kChannel);
  if (!ok.ok()) return ok.status();
  if (ok->message_count != 0) {
    return Status::Conflict(fmt::format("queue {} already holds {} messages: use a fresh --queue",
                                        o.queue, ok->message_count));
  }
  return Status::Ok();
}

Status DeleteQueue(Connection& c, const Options& o) {
  amqp::QueueDelete del;
  del.queue = o.queue;
  if (Status s = c.SendMethod(kChannel, del); !s.ok()) return s;
  auto ok = c.Expect<amqp::QueueDeleteOk>(kChannel);
  return ok.ok() ? Status::Ok() : ok.status();
}

// ---- Report -------------------------------------------------------------------------------------
double Percentile(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * static_cast<double>(sorted.size() - 1));
  return sorted[i] / 1000.0;
}

double Rate(int64_t n, SteadyClock::time_point start, SteadyClock::time_point last) {
  if (n == 0 || last <= start) return 0;
  return static_cast<double>(n) / std::chrono::duration<double>(last - start).count();
}

void Report(const Options& o, const Shared& sh, std::vector<Tally>& pubs,
            std::vector<Tally>& cons) {
  Tally p;
  Tally c;
  for (auto* group : {&pubs, &cons}) {
    Tally& all = group == &pubs ? p : c;
    for (auto& t : *group) {
      all.published += t.published;
      all.confirmed += t.confirmed;
      all.nacked += t.nacked;
      all.unconfirmed += t.unconfirmed;
      all.consumed += t.consumed;
      all.last_confirm = std::max(all.last_confirm, t.last_confirm);
      all.last_consume = std::max(all.last_consume, t.last_consume);
      all.latency_us.insert(all.latency_us.end(), t.latency_us.begin(), t.latency_us.end());
    }
    std::sort(all.latency_us.begin(), all.latency_us.end());
  }
  fmt::print(
      "publishers={} consumers={} window={} prefetch={} size={} published={} confirmed={} "
      "confirmed_rps={:.1f} consumed={} consumed_rps={:.1f} p50_ms={:.3f} p99_ms={:.3f} "
      "max_ms={:.3f} confirm_p50_ms={:.3f} confirm_p99_ms={:.3f} nacked={} unconfirmed={} "
      "not_consumed={} errors={}\n",
      o.publishers, o.consumers, o.window, o.prefetch, o.message_size, p.published, p.confirmed,
      Rate(p.confirmed, sh.start, p.last_confirm), c.consumed,
      Rate(c.consumed, sh.start, c.last_consume), Percentile(c.latency_us, 0.50),
      Percentile(c.latency_us, 0.99), c.latency_us.empty() ? 0.0 : c.latency_us.back() / 1000.0,
      Percentile(p.latency_us, 0.50), Percentile(p.latency_us, 0.99), p.nacked, p.unconfirmed,
      std::max<int64_t>(0, p.confirmed - c.consumed), sh.errors.load());
  std::string kinds;
  for (const auto& [k, n] : sh.error_kinds)
    kinds += fmt::format("{}{} x {}", kinds.empty() ? "" : "; ", n, k);
  fmt::print(stderr, "load: error kinds: {}\n", kinds.empty() ? "none" : kinds);
}

// ---- Run ----------------------------------------------------------------------------------------
int Run(const Options& o) {
  auto setup = Connection::Open(o.targets[0], o);
  if (!setup.ok()) {
    fmt::print(stderr, "load: setup connection: {}\n", setup.status().message());
    return 2;
  }
  if (Status s = DeclareQueue(**setup, o); !s.ok()) {
    fmt::print(stderr, "load: declare {}: {}\n", o.queue, s.message());
    return 2;
  }
  std::vector<std::unique_ptr<Connection>> consumers;
  std::vector<std::unique_ptr<Connection>> publishers;
  for (int i = 0; i < o.consumers + o.publishers; ++i) {
    const bool is_consumer = i < o.consumers;
    const int index = is_consumer ? i : i - o.consumers;
    const Endpoint& e = o.targets[static_cast<size_t>(index) % o.targets.size()];
    auto c = Connection::Open(e, o);
    Status s = c.ok() ? Status::Ok() : c.status();
    if (s.ok()) s = is_consumer ? StartConsuming(**c, o, index) : SelectConfirms(**c);
    if (!s.ok()) {
      fmt::print(stderr, "load: {} {} ({}:{}): {}\n", is_consumer ? "consumer" : "publisher", index,
                 e.host, e.port, s.message());
      return 2;
    }
    (is_consumer ? consumers : publishers).push_back(std::move(*c));
  }

  Shared sh;
  sh.start = SteadyClock::now();
  sh.publish_end = sh.start + std::chrono::milliseconds(o.duration_ms);
  sh.drain_end = sh.publish_end + std::chrono::milliseconds(o.drain_ms);
  sh.publishers_running = o.publishers;
  std::vector<Tally> pub_tallies(publishers.size());
  std::vector<Tally> con_tallies(consumers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < consumers.size(); ++i) {
    threads.emplace_back([&, i] {
      if (Status s = RunConsumer(*consumers[i], static_cast<int>(i), &sh, &con_tallies[i]);
          !s.ok()) {
        sh.Error(fmt::format("consumer: {}", s.message()));
      }
    });
  }
  for (size_t i = 0; i < publishers.size(); ++i) {
    threads.emplace_back([&, i] {
      if (Status s = RunPublisher(*publishers[i], o, &sh, &pub_tallies[i]); !s.ok()) {
        sh.Error(fmt::format("publisher: {}", s.message()));
      }
      sh.publishers_running.fetch_sub(1);
    });
  }
  for (auto& t : threads) t.join();
  Report(o, sh, pub_tallies, con_tallies);

  for (auto& c : publishers) c->Close();
  for (auto& c : consumers) c->Close();
  if (!o.keep_queue) {
    if (Status s = DeleteQueue(**setup, o); !s.ok()) {
      fmt::print(stderr, "load: delete {}: {}\n", o.queue, s.message());
    }
  }
  (*setup)->Close();
  return sh.errors.load() > 0 ? 1 : 0;
}

Result<std::vector<Endpoint>> ParseTargets(const std::string& csv) {
  std::vector<Endpoint> out;
  size_t pos = 0;
  while (pos <= csv.size()) {
    size_t comma = csv.find(',', pos);
    std::string item =
        csv.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t colon = item.rfind(':');
    if (item.empty() || colon == std::string::npos || colon == 0 || colon + 1 == item.size()) {
      return Status::InvalidArgument(fmt::format("target '{}' is not HOST:PORT", item));
    }
    out.push_back({item.substr(0, colon), item.substr(colon + 1)});
    if (out.size() > kMaxTargets) return Status::InvalidArgument("too many targets");
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

Status Validate(const Options& o) {
  auto in = [](int64_t v, int64_t lo, int64_t hi, const char* name) {
    return v >= lo && v <= hi
               ? Status::Ok()
               : Status::InvalidArgument(fmt::format("{} must be in [{}, {}]", name, lo, hi));
  };
  for (const Status& s :
       {in(o.publishers, 1, kMaxConnections, "--publishers"),
        in(o.consumers, 1, kMaxConnections, "--consumers"), in(o.window, 1, kMaxWindow, "--window"),
        in(o.prefetch, 1, 65'535, "--prefetch"),
        in(static_cast<int64_t>(o.message_size), kMinMessageSize, kMaxMessageSize, "--size"),
        in(o.messages, 1, kMaxMessages, "--messages"),
        in(o.duration_ms, 1, kMaxDurationMs, "--duration"),
        in(o.drain_ms, 0, kMaxDurationMs, "--drain"), in(o.quorum_size, 0, 99, "--quorum-size")}) {
    if (!s.ok()) return s;
  }
  if (o.rate < 0 || o.rate > 10'000'000) return Status::InvalidArgument("--rate out of range");
  if (!amqp::ValidateShortString(o.queue) || o.queue.empty()) {
    return Status::InvalidArgument("--queue must be 1-255 bytes");
  }
  return Status::Ok();
}

int Main(int argc, char** argv) {
  Options o;
  std::string targets = "127.0.0.1:5672";
  std::string duration = "15s";
  std::string drain = "15s";
  CLI::App app{
      "AMQP 0-9-1 load: confirmed persistent publishes into a durable (quorum) queue and "
      "consumers with acks; prints throughput and publish-to-consume latency."};
  app.add_option("--targets", targets,
                 "HOST:PORT,...: connection i of each role goes to target i % n");
  app.add_option("--publishers", o.publishers, "publisher connections (one confirm channel each)");
  app.add_option("--consumers", o.consumers, "consumer connections");
  app.add_option("--window", o.window, "unconfirmed publishes per publisher");
  app.add_option("--prefetch", o.prefetch, "basic.qos prefetch-count per consumer");
  app.add_option("--size", o.message_size, "message body bytes (>= 8: the send timestamp)");
  app.add_option("--messages", o.messages, "stop publishing after this many messages in all");
  app.add_option("--duration", duration, "stop publishing after this long (e.g. 15s)");
  app.add_option("--drain", drain, "then wait this long at most for confirms and deliveries");
  app.add_option("--rate", o.rate, "msgs/s for all publishers together (0: window-bound)");
  app.add_option("--queue", o.queue, "queue name (declared durable; default bench-mq-<time>)");
  app.add_option("--queue-type", o.queue_type, "x-queue-type argument ('' for none)");
  app.add_option("--quorum-size", o.quorum_size, "x-quorum-initial-group-size (0: not sent)");
  app.add_flag("--keep-queue", o.keep_queue, "do not delete the queue at the end");
  app.add_option("--user", o.user, "PLAIN user");
  app.add_option("--password", o.password, "PLAIN password");
  app.add_option("--vhost", o.vhost, "virtual host");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto t = ParseTargets(targets);
  auto d = ParseDurationMs(duration);
  auto dr = ParseDurationMs(drain);
  for (const Status* s : {&t.status(), &d.status(), &dr.status()}) {
    if (!s->ok()) {
      fmt::print(stderr, "load: {}\n", s->message());
      return 2;
    }
  }
  o.targets = *t;
  o.duration_ms = *d;
  o.drain_ms = *dr;
  if (o.queue.empty()) o.queue = fmt::format("bench-mq-{}", NowNs());
  if (Status s = Validate(o); !s.ok()) {
    fmt::print(stderr, "load: {}\n", s.message());
    return 2;
  }
  return Run(o);
}

}  // namespace
}  // namespace haven::bench

int main(int argc, char** argv) { return haven::bench::Main(argc, argv); }
