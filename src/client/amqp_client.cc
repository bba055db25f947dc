#include "client/amqp_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

namespace haven::client {

namespace amqp = mq::amqp;

namespace {

constexpr uint16_t kChannel = 1;
constexpr uint32_t kClientFrameMax = 131072;
constexpr uint64_t kMaxInboundBody = uint64_t{128} << 20;
constexpr size_t kMaxInbox = 1 << 16;  // commands queued while waiting for a reply
constexpr std::string_view kTimeoutPrefix = "timeout: ";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status Timeout(std::string what) {
  return Status::Unavailable(std::string(kTimeoutPrefix) + std::move(what));
}

// How a close from the broker reads as a Status: soft errors about the queue are the caller's to
// handle (not retried); 320/506/541 (node going away, a proposal without a leader) are retried
// on another node; other hard errors mean a client bug.
Status CloseToStatus(std::string_view who, uint16_t code, const std::string& text) {
  std::string m = std::string(who) + " closed by broker: " + std::to_string(code) + " " + text;
  switch (code) {
    case amqp::kNotFound:
      return Status::NotFound(m);
    case amqp::kAccessRefused:
      return Status(Code::kPermissionDenied, m);
    case amqp::kPreconditionFailed:
    case amqp::kResourceLocked:
      return Status::Conflict(m);
    case amqp::kContentTooLarge:
      return Status::TooLarge(m);
    case amqp::kConnectionForced:
    case amqp::kResourceError:
    case amqp::kInternalError:
    case amqp::kReplySuccess:
      return Status::Unavailable(m);
    default:
      return Status::Internal(m);
  }
}

// Connection-level trouble that another node (or a later try) may not have.
bool Retryable(const Status& s) {
  return s.code() == Code::kUnavailable || s.code() == Code::kIoError;
}

Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return Status::InvalidArgument("address must be HOST:PORT: '" + address + "'");
  }
  return std::make_pair(address.substr(0, colon), address.substr(colon + 1));
}

Status Backoff(int64_t& backoff_ms, int64_t max_ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
  backoff_ms = std::min(backoff_ms * 2, max_ms);
  return Status::Ok();
}

}  // namespace

// ConnectAny's final answer: no node worked for failover_deadline_ms.
static bool GaveUp(const Status& s) { return s.message().starts_with("failover gave up"); }

bool IsTimeout(const Status& status) {
  return status.code() == Code::kUnavailable && status.message().starts_with(kTimeoutPrefix);
}

namespace detail {

// One AMQP connection with one channel (1), spoken synchronously over a non-blocking socket
// polled with deadlines. Any error is sticky: the connection is then only good for closing.
class AmqpConn {
 public:
  explicit AmqpConn(std::string address) : address_(std::move(address)), decoder_(0) {}
  ~AmqpConn() {
    if (fd_ >= 0) ::close(fd_);
  }

  // TCP connect, handshake (heartbeats off), channel 1 open.
  Status Open(const AmqpOptions& o) {
    int64_t deadline = NowMs() + o.connect_timeout_ms;
    if (Status s = ConnectTcp(deadline); !s.ok()) return s;
    if (Status s = Send(amqp::kProtocolHeader, deadline); !s.ok()) return s;
    auto start = Expect<amqp::ConnectionStart>(deadline);
    if (!start.ok()) return start.status();
    amqp::ConnectionStartOk ok;
    ok.mechanism = "PLAIN";
    ok.response = std::string(1, '\0') + o.user + std::string(1, '\0') + o.password;
    ok.locale = "en_US";
    if (Status s = SendMethod(0, ok, deadline); !s.ok()) return s;
    auto tune = Expect<amqp::ConnectionTune>(deadline);
    if (!tune.ok()) return tune.status();
    frame_max_ =
        tune->frame_max == 0 ? kClientFrameMax : std::min(tune->frame_max, kClientFrameMax);
    uint16_t channel_max = tune->channel_max == 0 ? uint16_t{1} : tune->channel_max;
    if (Status s = SendMethod(0, amqp::ConnectionTuneOk{channel_max, frame_max_, 0}, deadline);
        !s.ok()) {
      return s;
    }
    decoder_.set_frame_max(frame_max_);
    if (Status s = SendMethod(0, amqp::ConnectionOpen{}, deadline); !s.ok()) return s;
    if (auto r = Expect<amqp::ConnectionOpenOk>(deadline); !r.ok()) return r.status();
    if (Status s = SendMethod(kChannel, amqp::ChannelOpen{}, deadline); !s.ok()) return s;
    if (auto r = Expect<amqp::ChannelOpenOk>(deadline); !r.ok()) return r.status();
    return Status::Ok();
  }

  // Sends `m` and waits for the reply of type M; other commands (deliveries, confirms) that come
  // first are kept for Read.
  template <typename M>
  Result<M> Call(const amqp::Method& m, int64_t timeout_ms) {
    int64_t deadline = NowMs() + timeout_ms;
    if (Status s = SendMethod(kChannel, m, deadline); !s.ok()) return s;
    return Expect<M>(deadline);
  }

  Status SendMethod(uint16_t channel, const amqp::Method& m, int64_t deadline) {
    return Send(amqp::EncodeMethodFrame(channel, m), deadline);
  }
  Status SendContent(const amqp::Method& m, const amqp::BasicProperties& props,
                     std::string_view body, int64_t deadline) {
    return Send(amqp::EncodeContentFrames(kChannel, m, props, body, frame_max_), deadline);
  }

  // The next command from the broker; nullopt when none came by `deadline`.
  Result<std::optional<amqp::Command>> Read(int64_t deadline) {
    if (!inbox_.empty()) {
      amqp::Command c = std::move(inbox_.front());
      inbox_.pop_front();
      return std::optional<amqp::Command>(std::move(c));
    }
    return ReadWire(deadline);
  }

  // connection.close, then a short wait for close-ok; the socket closes in the destructor.
  void CloseGracefully(int64_t timeout_ms) {
    if (!error_.ok() || fd_ < 0) return;
    int64_t deadline = NowMs() + timeout_ms;
    if (!SendMethod(0, amqp::ConnectionClose{amqp::kReplySuccess, "bye", 0, 0}, deadline).ok()) {
      return;
    }
    for (int i = 0; i < 1000; ++i) {
      auto r = ReadWire(deadline);
      if (!r.ok() || !r->has_value()) return;
      if (std::holds_alternative<amqp::ConnectionCloseOk>((*r)->method)) return;
    }
  }

  const std::string& address() const { return address_; }

 private:
  Status ConnectTcp(int64_t deadline) {
    auto hp = SplitHostPort(address_);
    if (!hp.ok()) return hp.status();
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(hp->first.c_str(), hp->second.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
      return Status::IoError("resolve " + address_ + ": " + ::gai_strerror(rc));
    }
    Status result = Status::IoError("connect " + address_ + ": no address");
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      result = ConnectOne(ai, deadline);
      if (result.ok()) break;
    }
    ::freeaddrinfo(res);
    return result;
  }

  Status ConnectOne(const addrinfo* ai, int64_t deadline) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd_ < 0) return Status::IoError(std::string("socket: ") + std::strerror(errno));
    // Small method frames must not wait for the peer's delayed ACK (Nagle): 40 ms per handshake
    // step and per confirm round trip otherwise.
    int one = 1;
    (void)::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(fd_, ai->ai_addr, ai->ai_addrlen) == 0) return Status::Ok();
    if (errno != EINPROGRESS) return Errno("connect");
    pollfd p{fd_, POLLOUT, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, deadline - NowMs())));
    if (n == 0) return Timeout("connect " + address_);
    int err = 0;
    socklen_t len = sizeof(err);
    if (n < 0 || ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return Errno("connect");
    if (err != 0) {
      errno = err;
      return Errno("connect");
    }
    return Status::Ok();
  }

  Status Errno(std::string_view what) {
    return Status::IoError(std::string(what) + " " + address_ + ": " + std::strerror(errno));
  }

  Status Fail(Status s) {
    if (error_.ok()) error_ = s;
    return s;
  }

  Status Send(std::string_view bytes, int64_t deadline) {
    if (!error_.ok()) return error_;
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        bytes.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return Fail(Errno("send"));
      }
      pollfd p{fd_, POLLOUT, 0};
      int64_t left = deadline - NowMs();
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) == 0) {
        return Fail(Timeout("send to " + address_));  // a half-written frame: unusable
      }
    }
    return Status::Ok();
  }

  template <typename M>
  Result<M> Expect(int64_t deadline) {
    for (;;) {
      auto r = ReadWire(deadline);
      if (!r.ok()) return r.status();
      if (!r->has_value()) {
        return Fail(Timeout("waiting for " + std::to_string(M::kClassId) + "." +
                            std::to_string(M::kMethodId) + " from " + address_));
      }
      if (auto* m = std::get_if<M>(&(*r)->method)) return *m;
      if (inbox_.size() >= kMaxInbox) return Fail(Status::Internal("inbox overflow"));
      inbox_.push_back(std::move(**r));
    }
  }

  // Decoded commands straight off the socket; closes from the broker become errors.
  Result<std::optional<amqp::Command>> ReadWire(int64_t deadline) {
    if (!error_.ok()) return error_;
    for (;;) {
      while (auto f = decoder_.Next()) {
        if (f->type == amqp::kFrameHeartbeat) continue;
        if (f->channel != 0 && f->channel != kChannel) {
          return Fail(Status::Internal("frame on unknown channel " + std::to_string(f->channel)));
        }
        auto it = assemblers_.try_emplace(f->channel, kMaxInboundBody).first;
        auto cmd = it->second.Add(*f);
        if (!cmd.ok())
          return Fail(Status::Internal("bad frame from broker: " + cmd.status().ToString()));
        if (!cmd->has_value()) continue;
        if (Status s = HandleClose(f->channel, **cmd); !s.ok()) return s;
        return std::optional<amqp::Command>(std::move(**cmd));
      }
      if (Status s = ReadMore(deadline); !s.ok()) {
        if (IsTimeout(s)) return std::optional<amqp::Command>();
        return s;
      }
    }
  }

  Status HandleClose(uint16_t channel, const amqp::Command& cmd) {
    int64_t deadline = NowMs() + 1000;
    if (auto* c = std::get_if<amqp::ConnectionClose>(&cmd.method)) {
      (void)SendMethod(0, amqp::ConnectionCloseOk{}, deadline);
      return Fail(CloseToStatus("connection", c->reply_code, c->reply_text));
    }
    if (auto* c = std::get_if<amqp::ChannelClose>(&cmd.method)) {
      (void)SendMethod(channel, amqp::ChannelCloseOk{}, deadline);
      return Fail(CloseToStatus("channel", c->reply_code, c->reply_text));
    }
    return Status::Ok();
  }

  Status ReadMore(int64_t deadline) {
    pollfd p{fd_, POLLIN, 0};
    int64_t left = std::max<int64_t>(0, deadline - NowMs());
    int n = ::poll(&p, 1, static_cast<int>(left));
    if (n == 0) return Timeout("read");
    if (n < 0 && errno != EINTR) return Fail(Errno("poll"));
    char buf[65536];
    ssize_t got = ::recv(fd_, buf, sizeof(buf), 0);
    if (got == 0) return Fail(Status::IoError("connection to " + address_ + " closed"));
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return Status::Ok();
      return Fail(Errno("recv"));
    }
    if (Status s = decoder_.Feed(std::string_view(buf, static_cast<size_t>(got))); !s.ok()) {
      return Fail(Status::Internal("bad frame from broker: " + s.ToString()));
    }
    return Status::Ok();
  }

  std::string address_;
  int fd_ = -1;
  amqp::FrameDecoder decoder_;
  std::map<uint16_t, amqp::CommandAssembler> assemblers_;
  std::deque<amqp::Command> inbox_;
  uint32_t frame_max_ = amqp::kFrameMinSize;
  Status error_;
};

}  // namespace detail

namespace {

// Connects to the addresses round robin from `next`, with bounded backoff, until one accepts or
// the failover deadline passes; `setup` runs on the new connection (declare, consume, ...).
Result<std::unique_ptr<detail::AmqpConn>> ConnectAny(
    const AmqpOptions& o, size_t& next, const std::function<Status(detail::AmqpConn&)>& setup) {
  if (o.addresses.empty()) return Status::InvalidArgument("no broker addresses");
  int64_t deadline = NowMs() + o.failover_deadline_ms;
  int64_t backoff = std::max<int64_t>(1, o.backoff_initial_ms);
  Status last;
  for (int attempt = 0;; ++attempt) {
    const std::string& addr = o.addresses[next % o.addresses.size()];
    next = (next + 1) % o.addresses.size();
    auto conn = std::make_unique<detail::AmqpConn>(addr);
    last = conn->Open(o);
    if (last.ok()) last = setup(*conn);
    if (last.ok()) return conn;
    if (!Retryable(last)) return last;
    if (NowMs() >= deadline) break;
    // A full round of refusals: wait before the next one (a leader election takes a while).
    if ((attempt + 1) % o.addresses.size() == 0) (void)Backoff(backoff, o.backoff_max_ms);
  }
  return Status::IoError("failover gave up after " + std::to_string(o.failover_deadline_ms) +
                         " ms; last error: " + last.ToString());
}

Status DeclareQueue(detail::AmqpConn& c, const AmqpOptions& o, const std::string& queue) {
  if (!o.declare_queue || queue.empty()) return Status::Ok();
  amqp::QueueDeclare d;
  d.queue = queue;
  d.durable = true;
  d.arguments = o.queue_arguments;
  return c.Call<amqp::QueueDeclareOk>(d, o.io_timeout_ms).status();
}

const std::string kNoAddress;

}  // namespace

// ---- Producer -----------------------------------------------------------------------------------

Producer::Producer(ProducerOptions options) : options_(std::move(options)) {
  options_.confirm_window = std::clamp<uint32_t>(options_.confirm_window, 1, 65535);
}

Producer::~Producer() { Close(); }

const std::string& Producer::current_address() const {
  return conn_ ? conn_->address() : kNoAddress;
}

Status Producer::Connect() {
  if (options_.queue.empty() && options_.exchange.empty()) {
    return Status::InvalidArgument("producer needs a queue or an exchange");
  }
  return EnsureConnected();
}

Status Producer::EnsureConnected() {
  if (conn_) return Status::Ok();
  auto conn = ConnectAny(options_, next_address_, [this](detail::AmqpConn& c) {
    if (Status s = DeclareQueue(c, options_, options_.queue); !s.ok()) return s;
    return c.Call<amqp::ConfirmSelectOk>(amqp::ConfirmSelect{}, options_.io_timeout_ms).status();
  });
  if (!conn.ok()) return conn.status();
  conn_ = std::move(*conn);
  next_seq_ = 1;
  // Every message not confirmed on the old connection goes again, in order, with new tags.
  for (Pending& p : pending_) {
    ++republished_;
    if (Status s = SendPending(p); !s.ok()) {
      conn_.reset();  // Failover's loop tries again
      return s;
    }
  }
  return Status::Ok();
}

Status Producer::Failover(const Status& why) {
  if (!Retryable(why)) return why;
  conn_.reset();
  ++reconnects_;
  for (int i = 0; i < 100; ++i) {  // each round is bounded by failover_deadline_ms
    Status s = EnsureConnected();
    if (s.ok() || !Retryable(s) || GaveUp(s)) return s;
    conn_.reset();
  }
  return Status::IoError("failover: too many connection losses in a row");
}

Status Producer::SendPending(Pending& p) {
  p.seq = next_seq_++;
  amqp::BasicPublish pub;
  pub.exchange = options_.exchange;
  pub.routing_key = options_.queue;
  return conn_->SendContent(pub, p.props, p.body, NowMs() + options_.io_timeout_ms);
}

Status Producer::PublishAsync(std::string body, amqp::BasicProperties props) {
  if (body.size() > options_.max_body_bytes) {
    return Status::TooLarge("message body of " + std::to_string(body.size()) + " bytes");
  }
  if (Status s = EnsureConnected(); !s.ok()) return s;
  while (pending_.size() >= options_.confirm_window) {
    if (Status s = PumpOnce(options_.confirm_timeout_ms); !s.ok()) {
      if (Status f = Failover(s); !f.ok()) return f;
    }
  }
  if (!props.delivery_mode) props.delivery_mode = 2;
  pending_.push_back(Pending{0, std::move(body), std::move(props), 0});
  if (Status s = SendPending(pending_.back()); !s.ok()) return Failover(s);
  // Take whatever confirms already arrived, without waiting.
  if (Status s = PumpOnce(0); !s.ok() && !IsTimeout(s)) return Failover(s);
  return Status::Ok();
}

Status Producer::WaitConfirms(int64_t timeout_ms) {
  int64_t deadline = NowMs() + timeout_ms;
  while (!pending_.empty()) {
    if (Status s = EnsureConnected(); !s.ok()) return s;
    int64_t left = deadline - NowMs();
    if (left <= 0) {
      return Timeout(std::to_string(pending_.size()) + " messages unconfirmed after " +
                     std::to_string(timeout_ms) + " ms");
    }
    Status s = PumpOnce(std::min(left, options_.confirm_timeout_ms));
    if (s.ok()) continue;
    if (IsTimeout(s) && left < options_.confirm_timeout_ms) continue;  // the caller's deadline
    if (Status f = Failover(s); !f.ok()) return f;
  }
  return Status::Ok();
}

Status Producer::Publish(std::string body, amqp::BasicProperties props) {
  if (Status s = PublishAsync(std::move(body), std::move(props)); !s.ok()) return s;
  return WaitConfirms(options_.confirm_timeout_ms * 4);
}

// Reads one command (waiting up to timeout_ms) and applies it. Timeout: IsTimeout status.
Status Producer::PumpOnce(int64_t timeout_ms) {
  auto r = conn_->Read(NowMs() + timeout_ms);
  if (!r.ok()) return r.status();
  if (!r->has_value()) return Timeout("no confirm within " + std::to_string(timeout_ms) + " ms");
  const amqp::Method& m = (*r)->method;
  if (auto* a = std::get_if<amqp::BasicAck>(&m))
    return HandleAck(a->delivery_tag, a->multiple, false);
  if (auto* n = std::get_if<amqp::BasicNack>(&m))
    return HandleAck(n->delivery_tag, n->multiple, true);
  return Status::Ok();  // basic.return and the like: nothing to do (we never set mandatory)
}

Status Producer::HandleAck(uint64_t tag, bool multiple, bool nack) {
  std::vector<Pending> nacked;
  auto settle = [&](std::deque<Pending>::iterator it) {
    if (nack) {
      nacked.push_back(std::move(*it));
    } else {
      ++confirmed_;
      if (on_confirm_) on_confirm_(it->props);
    }
    return pending_.erase(it);
  };
  if (multiple) {
    while (!pending_.empty() && pending_.front().seq <= tag) settle(pending_.begin());
  } else {
    auto it = std::lower_bound(pending_.begin(), pending_.end(), tag,
                               [](const Pending& p, uint64_t t) { return p.seq < t; });
    if (it != pending_.end() && it->seq == tag) settle(it);
  }
  Status result;
  for (Pending& p : nacked) {
    if (++p.nacks > options_.max_nack_retries) {
      // Not Unavailable: a failover would hide that this message is gone.
      result = Status::Conflict("message nacked " + std::to_string(p.nacks) + " times; dropped");
      continue;
    }
    ++republished_;
    pending_.push_back(std::move(p));
    if (Status s = SendPending(pending_.back()); !s.ok()) return s;
  }
  return result;
}

void Producer::Close() {
  if (conn_) conn_->CloseGracefully(1000);
  conn_.reset();
  pending_.clear();
}

// ---- Consumer -----------------------------------------------------------------------------------

Consumer::Consumer(ConsumerOptions options) : options_(std::move(options)) {
  options_.prefetch = std::max<uint16_t>(options_.prefetch, 1);
}

Consumer::~Consumer() { Close(); }

const std::string& Consumer::current_address() const {
  return conn_ ? conn_->address() : kNoAddress;
}

Status Consumer::Connect() {
  if (options_.queue.empty()) return Status::InvalidArgument("consumer needs a queue");
  return EnsureConnected();
}

Status Consumer::EnsureConnected() {
  if (conn_) return Status::Ok();
  auto conn = ConnectAny(options_, next_address_, [this](detail::AmqpConn& c) {
    if (Status s = DeclareQueue(c, options_, options_.queue); !s.ok()) return s;
    amqp::BasicQos qos;
    qos.prefetch_count = options_.prefetch;
    if (auto r = c.Call<amqp::BasicQosOk>(qos, options_.io_timeout_ms); !r.ok()) {
      return r.status();
    }
    amqp::BasicConsume consume;
    consume.queue = options_.queue;
    return c.Call<amqp::BasicConsumeOk>(consume, options_.io_timeout_ms).status();
  });
  if (!conn.ok()) return conn.status();
  conn_ = std::move(*conn);
  ++epoch_;
  return Status::Ok();
}

Status Consumer::Failover(const Status& why) {
  if (!Retryable(why)) return why;
  conn_.reset();
  ++reconnects_;
  return EnsureConnected();
}

Result<Message> Consumer::Next(int64_t timeout_ms) {
  int64_t deadline = NowMs() + timeout_ms;
  for (int rounds = 0; rounds < 1000000; ++rounds) {
    if (Status s = EnsureConnected(); !s.ok()) {
      if (!Retryable(s) || GaveUp(s)) return s;
      continue;
    }
    auto r = conn_->Read(deadline);
    if (!r.ok()) {
      if (Status f = Failover(r.status()); !f.ok() && (!Retryable(f) || GaveUp(f))) return f;
      if (NowMs() >= deadline) break;
      continue;
    }
    if (!r->has_value()) break;
    amqp::Command& cmd = **r;
    auto* d = std::get_if<amqp::BasicDeliver>(&cmd.method);
    if (!d || !cmd.header) continue;  // qos-ok/cancel-ok stragglers and the like
    Message m;
    m.body = std::move(cmd.body);
    m.properties = std::move(cmd.header->props);
    m.redelivered = d->redelivered;
    m.delivery_tag = d->delivery_tag;
    m.epoch = epoch_;
    return m;
  }
  return Timeout("no message within " + std::to_string(timeout_ms) + " ms");
}

Status Consumer::Ack(const Message& msg) {
  if (!conn_ || msg.epoch != epoch_) return Status::Ok();  // dropped: it will be redelivered
  Status s = conn_->SendMethod(kChannel, amqp::BasicAck{msg.delivery_tag, false},
                               NowMs() + options_.io_timeout_ms);
  if (s.ok()) return s;
  Status f = Failover(s);
  return Retryable(f) ? Status::Ok() : f;
}

void Consumer::Close() {
  if (conn_) conn_->CloseGracefully(1000);
  conn_.reset();
}

}  // namespace haven::client
