#include "node/amqp_connection.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include <boost/asio/write.hpp>

#include "base/log.h"
#include "mq/amqp_codec.h"
#include "mq/x_death.h"

namespace haven::node {

namespace amqp = mq::amqp;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr size_t kReadChunk = size_t{64} * 1024;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// 22 URL-safe random characters (~131 bits), as RabbitMQ's generated names.
std::string RandomName(const std::string& prefix) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out = prefix;
  for (int i = 0; i < 22; ++i) out += kAlphabet[rng() % 64];
  return out;
}

amqp::AmqpError Error(uint16_t code, std::string text, uint16_t class_id = 0,
                      uint16_t method_id = 0) {
  return {code, std::move(text), class_id, method_id};
}

template <typename M>
amqp::AmqpError ErrorFor(uint16_t code, std::string text) {
  return Error(code, std::move(text), M::kClassId, M::kMethodId);
}

std::string BigEndian32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
  return s;
}

amqp::FieldTable ServerProperties() {
  amqp::FieldTable caps;
  caps.Set("publisher_confirms", true);
  caps.Set("basic.nack", true);
  caps.Set("consumer_cancel_notify", true);
  caps.Set("exchange_exchange_bindings", false);
  caps.Set("connection.blocked", true);
  caps.Set("per_consumer_qos", true);
  caps.Set("authentication_failure_close", true);
  amqp::FieldTable props;
  props.Set("product", "haven");
  props.Set("platform", "C++");
  props.Set("information", "haven AMQP 0-9-1 broker on a replicated log");
  props.Set("capabilities", caps);
  return props;
}

// PLAIN: "[authzid]\0user\0password"; AMQPLAIN: a field table (without its size) with LOGIN and
// PASSWORD.
std::optional<std::pair<std::string, std::string>> ParseCredentials(const std::string& mechanism,
                                                                    const std::string& response) {
  if (mechanism == "PLAIN") {
    size_t a = response.find('\0');
    if (a == std::string::npos) return std::nullopt;
    size_t b = response.find('\0', a + 1);
    if (b == std::string::npos) return std::nullopt;
    return std::make_pair(response.substr(a + 1, b - a - 1), response.substr(b + 1));
  }
  if (mechanism == "AMQPLAIN") {
    if (response.size() > 65536) return std::nullopt;
    auto table =
        amqp::DecodeFieldTable(BigEndian32(static_cast<uint32_t>(response.size())) + response);
    if (!table.ok()) return std::nullopt;
    const amqp::FieldValue* login = table->Find("LOGIN");
    const amqp::FieldValue* password = table->Find("PASSWORD");
    if (!login || !password || !login->AsString() || !password->AsString()) return std::nullopt;
    return std::make_pair(std::string(*login->AsString()), std::string(*password->AsString()));
  }
  return std::nullopt;
}

// queue.declare x-arguments haven understands; others are ignored, as RabbitMQ ignores unknown
// ones.
std::optional<amqp::AmqpError> ParseQueueArgs(const amqp::FieldTable& t, mq::pb::QueueArgs* out) {
  for (const auto& entry : t.entries) {
    const std::string& k = entry.name;  // not a structured binding: the lambdas capture it
    const amqp::FieldValue& v = entry.value;
    auto bad = [&](const std::string& why) {
      return ErrorFor<amqp::QueueDeclare>(amqp::kPreconditionFailed,
                                          "PRECONDITION_FAILED - invalid arg '" + k + "': " + why);
    };
    auto text = [&]() -> std::optional<std::string> {
      auto s = v.AsString();
      return s ? std::optional<std::string>(std::string(*s)) : std::nullopt;
    };
    auto count = [&]() -> std::optional<int64_t> {
      auto n = v.AsInt();
      return (n && *n >= 0) ? n : std::nullopt;
    };
    if (k == "x-dead-letter-exchange" || k == "x-dead-letter-routing-key" || k == "x-overflow" ||
        k == "x-queue-type") {
      auto s = text();
      if (!s) return bad("expected a string");
      if (k == "x-dead-letter-exchange") out->set_dead_letter_exchange(*s);
      if (k == "x-dead-letter-routing-key") out->set_dead_letter_routing_key(*s);
      if (k == "x-queue-type") out->set_queue_type(*s);
      if (k == "x-overflow") {
        if (*s == "drop-head") {
          out->set_overflow(mq::pb::OVERFLOW_DROP_HEAD);
        } else if (*s == "reject-publish") {
          out->set_overflow(mq::pb::OVERFLOW_REJECT_PUBLISH);
        } else {
          return bad("'" + *s + "' is not supported (drop-head, reject-publish)");
        }
      }
    } else if (k == "x-delivery-limit" || k == "x-message-ttl" || k == "x-max-length" ||
               k == "x-max-length-bytes") {
      auto n = count();
      if (!n) return bad("expected a non-negative integer");
      if (k == "x-delivery-limit") out->set_delivery_limit(*n);
      if (k == "x-message-ttl") out->set_message_ttl_ms(*n);
      if (k == "x-max-length") out->set_max_length(*n);
      if (k == "x-max-length-bytes") out->set_max_length_bytes(*n);
    }
  }
  return std::nullopt;
}

std::optional<mq::pb::ExchangeType> ExchangeTypeOf(const std::string& type) {
  if (type == "direct") return mq::pb::EXCHANGE_DIRECT;
  if (type == "fanout") return mq::pb::EXCHANGE_FANOUT;
  if (type == "topic") return mq::pb::EXCHANGE_TOPIC;
  if (type == "headers") return mq::pb::EXCHANGE_HEADERS;
  return std::nullopt;
}

// The expiration property: a non-negative integer of milliseconds, as text.
std::optional<int64_t> ParseExpiration(const std::string& s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

struct AmqpConnection::Impl : std::enable_shared_from_this<Impl> {
  enum class State { kHeader, kAwaitStartOk, kAwaitTuneOk, kAwaitOpen, kOpen, kClosing };

  struct Consumer {
    std::string tag;
    std::string id;  // OWNER/channel/tag
    bool no_ack = false;
    uint16_t prefetch = 0;            // its own limit (basic.qos global=false before consume)
    uint32_t credit = 0;              // the window the broker has for it (0: none)
    bool ready = false;               // consume-ok sent: deliveries may follow
    std::vector<mq::Delivery> early;  // applied before consume-ok was sent
  };
  struct Unacked {
    std::string consumer_id;
    uint64_t message_id = 0;
    bool counted = false;  // a push delivery: counts toward the channel's global prefetch
  };
  struct Channel {
    explicit Channel(uint64_t max_body, uint64_t gen) : assembler(max_body), generation(gen) {}
    amqp::CommandAssembler assembler;
    uint64_t generation;
    bool closing = false;  // we sent channel.close and wait for close-ok
    bool confirm = false;
    uint64_t next_publish_seq = 1;
    // Publisher confirms: every seq below confirm_floor is answered or in the ack run; the run
    // (seqs acked in order from the floor up, not sent yet) goes out as one basic.ack multiple
    // per executor turn instead of one frame per message.
    uint64_t confirm_floor = 1;
    uint64_t ack_run_first = 0;  // 0: no run
    uint64_t ack_run_last = 0;
    std::set<uint64_t> answered_above;  // answered out of order (a failed proposal): rare
    uint16_t prefetch = 0;              // per consumer, for consumers created after it is set
    uint16_t global_prefetch = 0;       // shared by all the channel's consumers (0: no limit)
    size_t counted_unacked = 0;         // unacked entries with `counted`
    // Deliveries the broker made that would put the channel over global_prefetch: sent, in order,
    // as acks make room. Bounded: each consumer's broker window is at most global_prefetch.
    std::deque<std::pair<std::string, mq::Delivery>> held;  // (consumer tag, delivery)
    uint64_t next_delivery_tag = 1;
    std::map<uint64_t, Unacked> unacked;
    std::map<std::string, Consumer> consumers;  // by tag
    std::set<std::string> get_holders;
    std::string last_queue;  // queue.declare's: what an empty queue name means
  };

  Impl(const AmqpServerOptions& o, net::IoRuntime& ex, BrokerNode& b, tcp::socket s,
       ClosedFn closed, AmqpConnection* outer_conn)
      : opts(o),
        executor(ex),
        broker(b),
        socket(std::move(s)),
        on_closed(std::move(closed)),
        outer(outer_conn),
        decoder(o.frame_max),
        rbuf(kReadChunk),
        frame_max(o.frame_max),
        channel_max(o.channel_max) {}

  // ---- lifecycle ----
  void Start() {
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    auto ep = socket.remote_endpoint(ec);
    remote = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    owner = broker.NewOwnerId();
    std::weak_ptr<Impl> weak = shared_from_this();
    BrokerConnectionSink sink;
    sink.deliver = [weak](const mq::Delivery& d) {
      if (auto self = weak.lock()) self->OnDelivery(d);
    };
    sink.cancelled = [weak](const std::string& id) {
      if (auto self = weak.lock()) self->OnBrokerCancel(id);
    };
    sink.dropped = [weak] {
      if (auto self = weak.lock()) {
        self->attached = false;  // already dropped: no DropOwner on close
        self->ConnectionError(Error(amqp::kConnectionForced, "CONNECTION_FORCED - owner dropped"));
      }
    };
    sink.restored = [weak](const std::map<std::string, std::vector<mq::Delivery>>& held) {
      if (auto self = weak.lock()) self->OnRestored(held);
    };
    broker.Attach(owner, std::move(sink));
    attached = true;
    last_recv = last_send = NowMs();
    handshake_timer = executor.RunAfter(opts.handshake_timeout_ms, [weak] {
      auto self = weak.lock();
      if (self && self->state != State::kOpen) self->Finish("handshake timeout");
    });
    DoRead();
  }

  void Finish(const std::string& reason) {
    if (closed) return;
    closed = true;
    HLOG_DEBUG("amqp_connection_closed", "owner={} remote={} reason=\"{}\"", owner, remote, reason);
    for (auto* t : {&handshake_timer, &heartbeat_timer, &close_timer}) {
      if (*t) (*t)->Cancel();
    }
    error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
    if (attached) broker.Detach(owner);  // consumers cancelled, unacked requeued
    attached = false;
    // channels stay: a handler up the stack may hold one; they go with this object.
    // Later: the server's erase must not run inside a broker callback that is iterating.
    executor.Post([cb = on_closed, conn = outer] {
      if (cb) cb(conn);
    });
  }

  // ---- reading ----
  bool ShouldPause() const {
    return in_flight >= opts.max_in_flight || Buffered() >= opts.max_write_buffer_bytes;
  }
  void MaybeResume() {
    if (!paused || closed) return;
    if (in_flight < opts.max_in_flight / 2 + 1 && Buffered() < opts.max_write_buffer_bytes / 2) {
      paused = false;
      DoRead();
    }
  }
  void DoRead() {
    if (closed || reading) return;
    if (ShouldPause()) {
      paused = true;
      return;
    }
    reading = true;
    socket.async_read_some(asio::buffer(rbuf),
                           [self = shared_from_this()](error_code ec, size_t n) {
                             self->reading = false;
                             if (self->closed) return;
                             if (ec) return self->Finish("read: " + ec.message());
                             self->last_recv = NowMs();
                             self->OnBytes(std::string_view(self->rbuf.data(), n));
                             self->DoRead();
                           });
  }

  void OnBytes(std::string_view bytes) {
    if (state == State::kHeader) {
      size_t take = std::min(bytes.size(), 8 - header.size());
      header.append(bytes.substr(0, take));
      bytes.remove_prefix(take);
      if (header.size() < 8) return;
      auto ok = amqp::ParseProtocolHeader(header);
      if (!ok.ok() || !*ok) {
        Send(std::string(amqp::kProtocolHeader));
        return CloseAfterFlush();
      }
      amqp::ConnectionStart start;
      start.server_properties = ServerProperties();
      SendMethod(0, start);
      state = State::kAwaitStartOk;
    }
    if (bytes.empty() || close_after_flush) return;
    Status fed = decoder.Feed(bytes);
    while (auto frame = decoder.Next()) {
      if (closed || close_after_flush) return;
      OnFrame(*frame);
    }
    if (!fed.ok() && !closed && state != State::kClosing) {
      // The decoder stays failed, so no close-ok could be read: close once the close is sent.
      ConnectionError(amqp::ToAmqpError(fed));
      CloseAfterFlush();
    }
  }

  // ---- writing ----
  size_t Buffered() const { return out.size() + wbuf.size(); }
  void Send(std::string_view bytes) {
    if (closed) return;
    out.append(bytes);
    last_send = NowMs();
    if (Buffered() > opts.hard_write_buffer_bytes) return Finish("output buffer over limit");
    FlushSoon();
  }
  // What this turn of the executor sends (the confirms and deliveries of a whole batch of applied
  // commands) goes out in one write, after the handlers already queued.
  void FlushSoon() {
    if (flush_posted) return;
    flush_posted = true;
    executor.Post([self = shared_from_this()] {
      self->flush_posted = false;
      self->SendAckRuns();
      self->Flush();
    });
  }
  // ---- publisher confirms ----
  void Confirm(uint16_t id, Channel& ch, uint64_t seq, bool ack) {
    if (ack && seq == ch.confirm_floor) {
      if (ch.ack_run_first == 0) ch.ack_run_first = seq;
      ch.ack_run_last = seq;
      RaiseConfirmFloor(ch);
      ack_runs.insert(id);
      return FlushSoon();
    }
    SendAckRun(id, ch);  // it answers lower seqs: first
    if (ack) {
      SendMethod(id, amqp::BasicAck{seq, false});
    } else {
      SendMethod(id, amqp::BasicNack{seq, false, false});
    }
    if (seq == ch.confirm_floor) {
      RaiseConfirmFloor(ch);
    } else if (seq > ch.confirm_floor && ch.answered_above.size() < opts.max_in_flight) {
      ch.answered_above.insert(seq);
    }
  }
  static void RaiseConfirmFloor(Channel& ch) {
    ++ch.confirm_floor;
    while (!ch.answered_above.empty() && *ch.answered_above.begin() <= ch.confirm_floor) {
      if (*ch.answered_above.begin() == ch.confirm_floor) ++ch.confirm_floor;
      ch.answered_above.erase(ch.answered_above.begin());
    }
  }
  // Multiple: it answers every seq up to the run's last, and all below the run were answered.
  void SendAckRun(uint16_t id, Channel& ch) {
    if (ch.ack_run_last == 0) return;
    SendMethod(id, amqp::BasicAck{ch.ack_run_last, ch.ack_run_last > ch.ack_run_first});
    ch.ack_run_first = ch.ack_run_last = 0;
  }
  void SendAckRuns() {
    for (uint16_t id : ack_runs) {
      if (auto it = channels.find(id); it != channels.end()) SendAckRun(id, it->second);
    }
    ack_runs.clear();
  }
  template <typename M>
  void SendMethod(uint16_t channel, const M& m) {
    Send(amqp::EncodeMethodFrame(channel, m));
  }
  void Flush() {
    if (writing || out.empty() || closed) return;
    writing = true;
    wbuf.swap(out);
    out.clear();
    asio::async_write(socket, asio::buffer(wbuf),
                      [self = shared_from_this()](error_code ec, size_t) {
                        self->writing = false;
                        self->wbuf.clear();
                        if (self->closed) return;
                        if (ec) return self->Finish("write: " + ec.message());
                        if (self->close_after_flush && self->out.empty())
                          return self->Finish("closed");
                        self->Flush();
                        self->MaybeResume();
                      });
  }
  void CloseAfterFlush() {
    close_after_flush = true;
    if (!writing && out.empty()) Finish("closed");
  }

  // ---- errors ----
  void ConnectionError(const amqp::AmqpError& e) {
    if (closed || state == State::kClosing) return;
    SendAckRuns();
    HLOG_DEBUG("amqp_connection_error", "owner={} code={} text=\"{}\"", owner, e.code, e.text);
    if (state == State::kHeader) return Finish(e.text);
    amqp::ConnectionClose close{e.code, e.text, e.class_id, e.method_id};
    SendMethod(0, close);
    state = State::kClosing;
    for (auto& [id, ch] : channels) CleanupChannel(id, ch);
    std::weak_ptr<Impl> weak = shared_from_this();
    close_timer = executor.RunAfter(opts.close_timeout_ms, [weak] {
      if (auto self = weak.lock()) self->Finish("no close-ok");
    });
  }
  void ChannelError(uint16_t id, const amqp::AmqpError& e) {
    if (!amqp::IsChannelError(e.code)) return ConnectionError(e);
    auto it = channels.find(id);
    if (it == channels.end() || it->second.closing) return;
    SendAckRun(id, it->second);  // confirms of messages applied before the error
    amqp::ChannelClose close{e.code, e.text, e.class_id, e.method_id};
    SendMethod(id, close);
    it->second.closing = true;
    CleanupChannel(id, it->second);
  }
  // The channel ends: its consumers go (their unacked messages back to the queues).
  void CleanupChannel(uint16_t id, Channel& ch) {
    SendAckRun(id, ch);
    for (auto& [tag, c] : ch.consumers) {
      mq::pb::Command cmd;
      cmd.mutable_cancel()->set_consumer_id(c.id);
      FireAndForget(std::move(cmd));
    }
    for (const std::string& holder : ch.get_holders) {
      mq::pb::Command cmd;
      cmd.mutable_recover()->set_consumer_id(holder);
      FireAndForget(std::move(cmd));
    }
    ch.consumers.clear();
    ch.get_holders.clear();
    ch.unacked.clear();
    ch.counted_unacked = 0;
    ch.held.clear();
    ch.assembler.Reset();
  }
  void FireAndForget(mq::pb::Command cmd) {
    if (!attached || closed) return;  // Detach's DropOwner covers it
    broker.Propose(std::move(cmd), [](const Result<mq::ApplyResult>&) {});
  }

  // ---- frames ----
  void OnFrame(const amqp::Frame& f) {
    if (f.type == amqp::kFrameHeartbeat) return;
    if (state == State::kClosing) return OnFrameWhileClosing(f);
    if (f.channel == 0) {
      if (f.type != amqp::kFrameMethod) {
        return ConnectionError(Error(amqp::kUnexpectedFrame, "UNEXPECTED_FRAME - on channel 0"));
      }
      auto m = amqp::DecodeMethod(f.payload);
      if (!m.ok()) return ConnectionError(amqp::ToAmqpError(m.status()));
      return OnConnectionMethod(*m);
    }
    if (state != State::kOpen) {
      return ConnectionError(Error(amqp::kChannelError, "CHANNEL_ERROR - connection not open"));
    }
    auto it = channels.find(f.channel);
    if (it == channels.end()) return OnUnopenedChannel(f);
    Channel& ch = it->second;
    if (ch.closing) return OnFrameOnClosingChannel(f);
    auto cmd = ch.assembler.Add(f);
    if (!cmd.ok()) return ChannelError(f.channel, amqp::ToAmqpError(cmd.status()));
    if (*cmd) OnChannelCommand(f.channel, std::move(**cmd));
  }

  void OnFrameWhileClosing(const amqp::Frame& f) {
    if (f.channel != 0 || f.type != amqp::kFrameMethod) return;
    auto m = amqp::DecodeMethod(f.payload);
    if (!m.ok()) return;
    if (std::holds_alternative<amqp::ConnectionClose>(*m)) {
      SendMethod(0, amqp::ConnectionCloseOk{});
      return CloseAfterFlush();
    }
    if (std::holds_alternative<amqp::ConnectionCloseOk>(*m)) Finish("close-ok");
  }

  void OnUnopenedChannel(const amqp::Frame& f) {
    std::optional<amqp::Method> m;
    if (f.type == amqp::kFrameMethod) {
      auto d = amqp::DecodeMethod(f.payload);
      if (!d.ok()) return ConnectionError(amqp::ToAmqpError(d.status()));
      m = std::move(*d);
    }
    if (!m || !std::holds_alternative<amqp::ChannelOpen>(*m)) {
      return ConnectionError(
          Error(amqp::kChannelError,
                "CHANNEL_ERROR - expected 'channel.open' on channel " + std::to_string(f.channel)));
    }
    if (f.channel > channel_max) {
      return ConnectionError(ErrorFor<amqp::ChannelOpen>(
          amqp::kChannelError, "CHANNEL_ERROR - channel " + std::to_string(f.channel) +
                                   " above channel_max " + std::to_string(channel_max)));
    }
    channels.emplace(std::piecewise_construct, std::forward_as_tuple(f.channel),
                     std::forward_as_tuple(opts.max_body_bytes, ++next_generation));
    SendMethod(f.channel, amqp::ChannelOpenOk{});
  }

  void OnFrameOnClosingChannel(const amqp::Frame& f) {
    if (f.type != amqp::kFrameMethod) return;
    auto m = amqp::DecodeMethod(f.payload);
    if (!m.ok()) return;
    if (std::holds_alternative<amqp::ChannelClose>(*m)) {
      SendMethod(f.channel, amqp::ChannelCloseOk{});
      channels.erase(f.channel);
    } else if (std::holds_alternative<amqp::ChannelCloseOk>(*m)) {
      channels.erase(f.channel);
    }
  }

  // ---- connection class ----
  void OnConnectionMethod(amqp::Method& m) {
    if (std::holds_alternative<amqp::ConnectionClose>(m)) {
      SendAckRuns();
      SendMethod(0, amqp::ConnectionCloseOk{});
      state = State::kClosing;
      for (auto& [id, ch] : channels) CleanupChannel(id, ch);
      return CloseAfterFlush();
    }
    switch (state) {
      case State::kAwaitStartOk:
        if (auto* s = std::get_if<amqp::ConnectionStartOk>(&m)) return OnStartOk(*s);
        break;
      case State::kAwaitTuneOk:
        if (auto* t = std::get_if<amqp::ConnectionTuneOk>(&m)) return OnTuneOk(*t);
        break;
      case State::kAwaitOpen:
        if (auto* o = std::get_if<amqp::ConnectionOpen>(&m)) return OnOpen(*o);
        break;
      case State::kOpen:
        if (std::holds_alternative<amqp::ConnectionBlocked>(m) ||
            std::holds_alternative<amqp::ConnectionUnblocked>(m)) {
          return;
        }
        break;
      default:
        break;
    }
    auto id = amqp::IdOf(m);
    ConnectionError(
        Error(amqp::kCommandInvalid,
              "COMMAND_INVALID - unexpected " + std::string(amqp::NameOf(m)) + " on channel 0",
              id.class_id, id.method_id));
  }

  void OnStartOk(const amqp::ConnectionStartOk& s) {
    auto creds = ParseCredentials(s.mechanism, s.response);
    if (!creds || creds->first != opts.user || creds->second != opts.password) {
      return ConnectionError(ErrorFor<amqp::ConnectionStartOk>(
          amqp::kAccessRefused,
          "ACCESS_REFUSED - Login was refused using authentication "
          "mechanism " +
              s.mechanism));
    }
    user = creds->first;
    amqp::ConnectionTune tune{opts.channel_max, opts.frame_max, opts.heartbeat_s};
    SendMethod(0, tune);
    state = State::kAwaitTuneOk;
  }

  void OnTuneOk(const amqp::ConnectionTuneOk& t) {
    uint32_t fm = t.frame_max == 0 ? opts.frame_max : std::min(t.frame_max, opts.frame_max);
    if (fm < amqp::kFrameMinSize) {
      return ConnectionError(ErrorFor<amqp::ConnectionTuneOk>(
          amqp::kNotAllowed, "NOT_ALLOWED - frame_max " + std::to_string(fm) + " below " +
                                 std::to_string(amqp::kFrameMinSize)));
    }
    frame_max = fm;
    decoder.set_frame_max(fm);
    channel_max = t.channel_max == 0 ? opts.channel_max : std::min(t.channel_max, opts.channel_max);
    heartbeat_s = t.heartbeat;
    state = State::kAwaitOpen;
    ArmHeartbeat();
  }

  void OnOpen(const amqp::ConnectionOpen& o) {
    if (o.virtual_host != "/") {
      return ConnectionError(ErrorFor<amqp::ConnectionOpen>(
          amqp::kNotAllowed, "NOT_ALLOWED - vhost '" + o.virtual_host + "' not found"));
    }
    state = State::kOpen;
    if (handshake_timer) handshake_timer->Cancel();
    SendMethod(0, amqp::ConnectionOpenOk{});
  }

  // Every half interval: send a heartbeat if we sent nothing for that long; close after two
  // intervals of silence (not counted while we pause reading ourselves).
  void ArmHeartbeat() {
    if (heartbeat_s == 0 || closed) return;
    int64_t half = int64_t{heartbeat_s} * 500;
    std::weak_ptr<Impl> weak = shared_from_this();
    heartbeat_timer = executor.RunAfter(half, [weak, half] {
      auto self = weak.lock();
      if (!self || self->closed) return;
      int64_t now = NowMs();
      if (self->paused) self->last_recv = now;
      if (now - self->last_recv > 4 * half) return self->Finish("missed heartbeats");
      if (now - self->last_send >= half) self->Send(amqp::EncodeHeartbeat());
      self->ArmHeartbeat();
    });
  }

  // ---- proposals ----
  // Proposes `cmd` for channel `id`; `on_ok` runs if the command applied without error and the
  // channel is still the same open one. An ApplyResult error closes the channel (or connection);
  // a failed proposal (no leader, outcome unknown) closes the connection with 541.
  template <typename M, typename F>
  void ProposeOn(uint16_t id, mq::pb::Command cmd, F on_ok) {
    if (closed) return;  // after Detach: nothing may be created for this owner
    ++in_flight;
    uint64_t gen = channels.at(id).generation;
    std::weak_ptr<Impl> weak = shared_from_this();
    broker.Propose(std::move(cmd), [weak, id, gen,
                                    on_ok = std::move(on_ok)](Result<mq::ApplyResult> r) mutable {
      auto self = weak.lock();
      if (!self) return;
      --self->in_flight;
      self->MaybeResume();
      Channel* ch = self->LiveChannel(id, gen);
      if (!ch) return;
      if (!r.ok()) {
        return self->ConnectionError(
            ErrorFor<M>(amqp::kInternalError, "INTERNAL_ERROR - " + r.status().ToString()));
      }
      if (!r->error.ok()) {
        return self->ChannelError(id, ErrorFor<M>(r->error.reply_code, r->error.reply_text));
      }
      on_ok(*ch, *r);
    });
  }
  Channel* LiveChannel(uint16_t id, uint64_t gen) {
    if (closed || state != State::kOpen) return nullptr;
    auto it = channels.find(id);
    if (it == channels.end() || it->second.closing || it->second.generation != gen) return nullptr;
    return &it->second;
  }

  // ---- channel commands ----
  void OnChannelCommand(uint16_t id, amqp::Command cmd) {
    Channel& ch = channels.at(id);
    amqp::Method& m = cmd.method;
    if (std::holds_alternative<amqp::ChannelOpen>(m)) {
      return ConnectionError(
          ErrorFor<amqp::ChannelOpen>(amqp::kChannelError, "CHANNEL_ERROR - channel already open"));
    }
    if (std::holds_alternative<amqp::ChannelClose>(m)) {
      CleanupChannel(id, ch);
      channels.erase(id);
      return SendMethod(id, amqp::ChannelCloseOk{});
    }
    if (std::holds_alternative<amqp::ChannelCloseOk>(m)) return;  // not closing: ignore
    if (auto* f = std::get_if<amqp::ChannelFlow>(&m)) return ChannelFlow(id, *f);
    if (auto* x = std::get_if<amqp::ExchangeDeclare>(&m)) return ExchangeDeclare(id, *x);
    if (auto* x = std::get_if<amqp::ExchangeDelete>(&m)) return ExchangeDelete(id, *x);
    if (auto* x = std::get_if<amqp::QueueDeclare>(&m)) return QueueDeclare(id, ch, *x);
    if (auto* x = std::get_if<amqp::QueueBind>(&m)) return QueueBind(id, ch, *x);
    if (auto* x = std::get_if<amqp::QueueUnbind>(&m)) return QueueUnbind(id, ch, *x);
    if (auto* x = std::get_if<amqp::QueuePurge>(&m)) return QueuePurge(id, ch, *x);
    if (auto* x = std::get_if<amqp::QueueDelete>(&m)) return QueueDelete(id, ch, *x);
    if (auto* x = std::get_if<amqp::BasicQos>(&m)) return BasicQos(id, ch, *x);
    if (auto* x = std::get_if<amqp::BasicConsume>(&m)) return BasicConsume(id, ch, *x);
    if (auto* x = std::get_if<amqp::BasicCancel>(&m)) return BasicCancel(id, ch, *x);
    if (auto* x = std::get_if<amqp::BasicPublish>(&m)) return BasicPublish(id, ch, *x, cmd);
    if (auto* x = std::get_if<amqp::BasicGet>(&m)) return BasicGet(id, ch, *x);
    if (auto* x = std::get_if<amqp::BasicAck>(&m)) {
      return Settle<amqp::BasicAck>(id, ch, x->delivery_tag, x->multiple, std::nullopt);
    }
    if (auto* x = std::get_if<amqp::BasicNack>(&m)) {
      return Settle<amqp::BasicNack>(id, ch, x->delivery_tag, x->multiple, x->requeue);
    }
    if (auto* x = std::get_if<amqp::BasicReject>(&m)) {
      return Settle<amqp::BasicReject>(id, ch, x->delivery_tag, false, x->requeue);
    }
    if (std::holds_alternative<amqp::BasicRecover>(m)) return BasicRecover(id, ch, true);
    if (std::holds_alternative<amqp::BasicRecoverAsync>(m)) return BasicRecover(id, ch, false);
    if (auto* x = std::get_if<amqp::ConfirmSelect>(&m)) {
      ch.confirm = true;
      if (!x->no_wait) SendMethod(id, amqp::ConfirmSelectOk{});
      return;
    }
    auto mid = amqp::IdOf(m);
    if (mid.class_id == amqp::kClassTx) {
      return ConnectionError(Error(amqp::kNotImplemented,
                                   "NOT_IMPLEMENTED - transactions are not supported", mid.class_id,
                                   mid.method_id));
    }
    if (std::holds_alternative<amqp::ExchangeBind>(m) ||
        std::holds_alternative<amqp::ExchangeUnbind>(m)) {
      return ConnectionError(Error(amqp::kNotImplemented,
                                   "NOT_IMPLEMENTED - exchange-to-exchange bindings", mid.class_id,
                                   mid.method_id));
    }
    ConnectionError(Error(amqp::kCommandInvalid,
                          "COMMAND_INVALID - unexpected " + std::string(amqp::NameOf(m)),
                          mid.class_id, mid.method_id));
  }

  const std::string& QueueName(Channel& ch, const std::string& name) {
    return name.empty() ? ch.last_queue : name;
  }

  void ExchangeDeclare(uint16_t id, const amqp::ExchangeDeclare& x) {
    auto type = ExchangeTypeOf(x.type);
    if (!type && !x.passive) {
      return ConnectionError(ErrorFor<amqp::ExchangeDeclare>(
          amqp::kCommandInvalid, "COMMAND_INVALID - invalid exchange type '" + x.type + "'"));
    }
    mq::pb::Command cmd;
    auto* c = cmd.mutable_declare_exchange();
    c->set_name(x.exchange);
    c->set_type(type.value_or(mq::pb::EXCHANGE_DIRECT));
    c->set_passive(x.passive);
    c->set_durable(x.durable);
    c->set_auto_delete(x.auto_delete);
    c->set_internal(x.internal);
    c->set_arguments(amqp::EncodeFieldTable(x.arguments));
    bool no_wait = x.no_wait;
    ProposeOn<amqp::ExchangeDeclare>(id, std::move(cmd), [this, id, no_wait](Channel&, auto&) {
      if (!no_wait) SendMethod(id, amqp::ExchangeDeclareOk{});
    });
  }

  void ExchangeDelete(uint16_t id, const amqp::ExchangeDelete& x) {
    mq::pb::Command cmd;
    cmd.mutable_delete_exchange()->set_name(x.exchange);
    cmd.mutable_delete_exchange()->set_if_unused(x.if_unused);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::ExchangeDelete>(id, std::move(cmd), [this, id, no_wait](Channel&, auto&) {
      if (!no_wait) SendMethod(id, amqp::ExchangeDeleteOk{});
    });
  }

  void QueueDeclare(uint16_t id, Channel& ch, const amqp::QueueDeclare& x) {
    mq::pb::Command cmd;
    auto* c = cmd.mutable_declare_queue();
    if (auto err = ParseQueueArgs(x.arguments, c->mutable_args())) return ChannelError(id, *err);
    bool server_named = x.queue.empty() && !x.passive;
    std::string name = server_named ? RandomName("amq.gen-") : QueueName(ch, x.queue);
    c->set_name(name);
    c->set_server_named(server_named);
    c->set_passive(x.passive);
    c->set_durable(x.durable);
    c->set_exclusive(x.exclusive);
    c->set_auto_delete(x.auto_delete);
    c->set_owner(owner);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::QueueDeclare>(
        id, std::move(cmd), [this, id, no_wait, name](Channel& ch, const mq::ApplyResult& r) {
          ch.last_queue = name;
          if (no_wait) return;
          SendMethod(
              id, amqp::QueueDeclareOk{name, Clamp32(r.message_count), Clamp32(r.consumer_count)});
        });
  }
  static uint32_t Clamp32(uint64_t v) {
    return static_cast<uint32_t>(std::min<uint64_t>(v, UINT32_MAX));
  }

  // queue.bind and queue.unbind name a binding the same way.
  template <typename Cmd, typename Method>
  void FillBinding(Cmd* c, Channel& ch, const Method& x) {
    c->set_exchange(x.exchange);
    c->set_queue(QueueName(ch, x.queue));
    c->set_routing_key(x.routing_key);
    c->set_arguments(amqp::EncodeFieldTable(x.arguments));
    c->set_owner(owner);
  }

  void QueueBind(uint16_t id, Channel& ch, const amqp::QueueBind& x) {
    mq::pb::Command cmd;
    FillBinding(cmd.mutable_bind(), ch, x);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::QueueBind>(id, std::move(cmd), [this, id, no_wait](Channel&, auto&) {
      if (!no_wait) SendMethod(id, amqp::QueueBindOk{});
    });
  }

  void QueueUnbind(uint16_t id, Channel& ch, const amqp::QueueUnbind& x) {
    mq::pb::Command cmd;
    FillBinding(cmd.mutable_unbind(), ch, x);
    ProposeOn<amqp::QueueUnbind>(
        id, std::move(cmd), [this, id](Channel&, auto&) { SendMethod(id, amqp::QueueUnbindOk{}); });
  }

  void QueuePurge(uint16_t id, Channel& ch, const amqp::QueuePurge& x) {
    mq::pb::Command cmd;
    cmd.mutable_purge_queue()->set_name(QueueName(ch, x.queue));
    cmd.mutable_purge_queue()->set_owner(owner);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::QueuePurge>(id, std::move(cmd),
                                [this, id, no_wait](Channel&, const mq::ApplyResult& r) {
                                  if (!no_wait) {
                                    SendMethod(id, amqp::QueuePurgeOk{Clamp32(r.message_count)});
                                  }
                                });
  }

  void QueueDelete(uint16_t id, Channel& ch, const amqp::QueueDelete& x) {
    mq::pb::Command cmd;
    auto* c = cmd.mutable_delete_queue();
    c->set_name(QueueName(ch, x.queue));
    c->set_if_unused(x.if_unused);
    c->set_if_empty(x.if_empty);
    c->set_owner(owner);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::QueueDelete>(id, std::move(cmd),
                                 [this, id, no_wait](Channel&, const mq::ApplyResult& r) {
                                   if (!no_wait) {
                                     SendMethod(id, amqp::QueueDeleteOk{Clamp32(r.message_count)});
                                   }
                                 });
  }

  // ---- basic ----
  static bool ReservedTag(const std::string& tag) {
    return tag.rfind("get:", 0) == 0 || tag.rfind("get-noack:", 0) == 0;
  }

  // RabbitMQ (3.3 and later, 3.10 included) refuses client-initiated flow control: active=false
  // closes the connection with 540 NOT_IMPLEMENTED "active=false"; active=true is acknowledged.
  // Clients limit deliveries with basic.qos instead.
  void ChannelFlow(uint16_t id, const amqp::ChannelFlow& f) {
    if (!f.active) {
      return ConnectionError(
          ErrorFor<amqp::ChannelFlow>(amqp::kNotImplemented, "NOT_IMPLEMENTED - active=false"));
    }
    SendMethod(id, amqp::ChannelFlowOk{true});
  }

  // RabbitMQ's basic.qos: global=false sets the window of each consumer created after it;
  // global=true one window shared by all the channel's consumers, existing ones included.
  // prefetch_size is not implemented (540), as in RabbitMQ.
  void BasicQos(uint16_t id, Channel& ch, const amqp::BasicQos& x) {
    if (x.prefetch_size != 0) {
      return ConnectionError(ErrorFor<amqp::BasicQos>(
          amqp::kNotImplemented,
          "NOT_IMPLEMENTED - prefetch_size!=0 (" + std::to_string(x.prefetch_size) + ")"));
    }
    if (!x.global) {
      ch.prefetch = x.prefetch_count;
      return SendMethod(id, amqp::BasicQosOk{});
    }
    ch.global_prefetch = x.prefetch_count;
    for (auto& [tag, c] : ch.consumers) {
      uint32_t credit = CreditFor(ch, c.prefetch);
      if (c.no_ack || credit == c.credit) continue;
      c.credit = credit;
      mq::pb::Command cmd;
      cmd.mutable_set_credit()->set_consumer_id(c.id);
      cmd.mutable_set_credit()->set_credit(credit);
      ProposeOn<amqp::BasicQos>(id, std::move(cmd), [](Channel&, auto&) {});
    }
    SendMethod(id, amqp::BasicQosOk{});
    Pump(id, ch);
  }

  // The broker-side window of a consumer: its own prefetch, never above the channel's global one
  // (so what the connection holds back is bounded by consumers x global prefetch). 0: none.
  static uint32_t CreditFor(const Channel& ch, uint16_t prefetch) {
    if (ch.global_prefetch == 0) return prefetch;
    if (prefetch == 0) return ch.global_prefetch;
    return std::min(prefetch, ch.global_prefetch);
  }

  void BasicConsume(uint16_t id, Channel& ch, const amqp::BasicConsume& x) {
    std::string tag = x.consumer_tag.empty() ? RandomName("amq.ctag-") : x.consumer_tag;
    if (ch.consumers.contains(tag) || ReservedTag(tag)) {
      return ConnectionError(ErrorFor<amqp::BasicConsume>(
          amqp::kNotAllowed, "NOT_ALLOWED - attempt to reuse consumer tag '" + tag + "'"));
    }
    if (ch.consumers.size() >= opts.max_consumers_per_channel) {
      return ConnectionError(ErrorFor<amqp::BasicConsume>(
          amqp::kResourceError, "RESOURCE_ERROR - too many consumers on the channel"));
    }
    Consumer& c = ch.consumers[tag];
    c.tag = tag;
    c.id = owner + "/" + std::to_string(id) + "/" + tag;
    c.no_ack = x.no_ack;
    c.prefetch = ch.prefetch;
    c.credit = CreditFor(ch, c.prefetch);
    mq::pb::Command cmd;
    auto* pc = cmd.mutable_consume();
    pc->set_queue(QueueName(ch, x.queue));
    pc->set_consumer_id(c.id);
    pc->set_owner(owner);
    pc->set_credit(c.credit);
    pc->set_no_ack(x.no_ack);
    pc->set_exclusive(x.exclusive);
    bool no_wait = x.no_wait;
    ProposeOn<amqp::BasicConsume>(id, std::move(cmd), [this, id, tag, no_wait](Channel& ch, auto&) {
      auto it = ch.consumers.find(tag);
      if (it == ch.consumers.end()) return;
      if (!no_wait) SendMethod(id, amqp::BasicConsumeOk{tag});
      it->second.ready = true;
      std::vector<mq::Delivery> early = std::move(it->second.early);
      for (const mq::Delivery& d : early) Deliver(id, ch, it->second, d);
    });
  }

  void BasicCancel(uint16_t id, Channel& ch, const amqp::BasicCancel& x) {
    auto it = ch.consumers.find(x.consumer_tag);
    if (it == ch.consumers.end()) {
      if (!x.no_wait) SendMethod(id, amqp::BasicCancelOk{x.consumer_tag});
      return;
    }
    mq::pb::Command cmd;
    cmd.mutable_cancel()->set_consumer_id(it->second.id);
    std::string tag = x.consumer_tag;
    bool no_wait = x.no_wait;
    ProposeOn<amqp::BasicCancel>(id, std::move(cmd), [this, id, tag, no_wait](Channel& ch, auto&) {
      ch.consumers.erase(tag);
      DropHeld(ch, tag);
      if (!no_wait) SendMethod(id, amqp::BasicCancelOk{tag});
    });
  }

  void BasicPublish(uint16_t id, Channel& ch, const amqp::BasicPublish& x, amqp::Command& cmd) {
    if (closed) return;
    if (x.immediate) {
      return ConnectionError(
          ErrorFor<amqp::BasicPublish>(amqp::kNotImplemented, "NOT_IMPLEMENTED - immediate=true"));
    }
    const amqp::ContentHeader& h = *cmd.header;
    mq::pb::Command pc;
    auto* p = pc.mutable_publish();
    if (h.props.expiration) {
      auto ms = ParseExpiration(*h.props.expiration);
      if (!ms) {
        return ChannelError(
            id, ErrorFor<amqp::BasicPublish>(
                    amqp::kPreconditionFailed,
                    "PRECONDITION_FAILED - invalid expiration '" + *h.props.expiration + "'"));
      }
      p->set_expiration_ms(*ms);
    }
    p->set_exchange(x.exchange);
    p->set_routing_key(x.routing_key);
    p->set_mandatory(x.mandatory);
    p->set_properties(h.raw_properties);
    std::string returned_body = x.mandatory ? cmd.body : std::string();
    p->set_body(std::move(cmd.body));
    uint64_t seq = ch.confirm ? ch.next_publish_seq++ : 0;
    ++in_flight;
    uint64_t gen = ch.generation;
    std::weak_ptr<Impl> weak = shared_from_this();
    broker.Propose(std::move(pc), [weak, id, gen, seq, x, props = h.raw_properties,
                                   body = std::move(returned_body)](Result<mq::ApplyResult> r) {
      auto self = weak.lock();
      if (!self) return;
      --self->in_flight;
      self->MaybeResume();
      Channel* ch = self->LiveChannel(id, gen);
      if (!ch) return;
      if (r.ok() && !r->error.ok()) {
        return self->ChannelError(
            id, ErrorFor<amqp::BasicPublish>(r->error.reply_code, r->error.reply_text));
      }
      if (r.ok() && r->unroutable && x.mandatory) {
        amqp::BasicReturn ret{amqp::kNoRoute, "NO_ROUTE", x.exchange, x.routing_key};
        self->Send(amqp::EncodeContentFrames(id, ret, props, body, self->frame_max));
      }
      if (seq == 0) return;
      self->Confirm(id, *ch, seq, r.ok() && r->rejected_queues.empty());
    });
  }

  void BasicGet(uint16_t id, Channel& ch, const amqp::BasicGet& x) {
    std::string queue = QueueName(ch, x.queue);
    std::string holder =
        owner + "/" + std::to_string(id) + "/" + (x.no_ack ? "get-noack:" : "get:") + queue;
    if (!x.no_ack) ch.get_holders.insert(holder);
    mq::pb::Command cmd;
    auto* g = cmd.mutable_get();
    g->set_queue(queue);
    g->set_consumer_id(holder);
    g->set_owner(owner);
    g->set_no_ack(x.no_ack);
    // get-ok goes out from OnDelivery, which the broker calls before this.
    ProposeOn<amqp::BasicGet>(id, std::move(cmd), [this, id](Channel&, const mq::ApplyResult& r) {
      if (r.get_empty) SendMethod(id, amqp::BasicGetEmpty{});
    });
  }

  template <typename M>
  void Settle(uint16_t id, Channel& ch, uint64_t tag, bool multiple, std::optional<bool> requeue) {
    std::map<std::string, std::vector<uint64_t>> by_consumer;
    auto take = [&](std::map<uint64_t, Unacked>::iterator it) {
      by_consumer[it->second.consumer_id].push_back(it->second.message_id);
      if (it->second.counted) --ch.counted_unacked;
      return ch.unacked.erase(it);
    };
    if (multiple) {
      auto end = tag == 0 ? ch.unacked.end() : ch.unacked.upper_bound(tag);
      if (tag != 0 && !ch.unacked.contains(tag) && ch.unacked.begin() == end) {
        return ChannelError(
            id, ErrorFor<M>(amqp::kPreconditionFailed,
                            "PRECONDITION_FAILED - unknown delivery tag " + std::to_string(tag)));
      }
      for (auto it = ch.unacked.begin(); it != end;) it = take(it);
    } else {
      auto it = ch.unacked.find(tag);
      if (it == ch.unacked.end()) {
        return ChannelError(
            id, ErrorFor<M>(amqp::kPreconditionFailed,
                            "PRECONDITION_FAILED - unknown delivery tag " + std::to_string(tag)));
      }
      take(it);
    }
    for (auto& [consumer_id, ids] : by_consumer) {
      mq::pb::Command cmd;
      if (requeue) {
        auto* n = cmd.mutable_nack();
        n->set_consumer_id(consumer_id);
        n->mutable_message_ids()->Add(ids.begin(), ids.end());
        n->set_requeue(*requeue);
      } else {
        auto* a = cmd.mutable_ack();
        a->set_consumer_id(consumer_id);
        a->mutable_message_ids()->Add(ids.begin(), ids.end());
      }
      ProposeOn<M>(id, std::move(cmd), [](Channel&, auto&) {});
    }
    Pump(id, ch);
  }

  void BasicRecover(uint16_t id, Channel& ch, bool reply) {
    std::vector<std::string> ids;
    for (const auto& [tag, c] : ch.consumers) {
      if (!c.no_ack) ids.push_back(c.id);
    }
    ids.insert(ids.end(), ch.get_holders.begin(), ch.get_holders.end());
    ch.unacked.clear();
    ch.counted_unacked = 0;
    ch.held.clear();  // the broker takes these back too: they are unacked there
    if (ids.empty()) {
      if (reply) SendMethod(id, amqp::BasicRecoverOk{});
      return;
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      mq::pb::Command cmd;
      cmd.mutable_recover()->set_consumer_id(ids[i]);
      bool last = i + 1 == ids.size();
      ProposeOn<amqp::BasicRecover>(id, std::move(cmd), [this, id, last, reply](Channel&, auto&) {
        if (last && reply) SendMethod(id, amqp::BasicRecoverOk{});
      });
    }
  }

  // ---- from the broker ----
  // "OWNER/CHANNEL/TAG" of this connection -> (channel, tag).
  std::optional<std::pair<uint16_t, std::string>> SplitConsumerId(const std::string& cid) const {
    if (cid.size() <= owner.size() + 1 || cid.compare(0, owner.size(), owner) != 0 ||
        cid[owner.size()] != '/') {
      return std::nullopt;
    }
    size_t start = owner.size() + 1;
    size_t slash = cid.find('/', start);
    if (slash == std::string::npos || slash == start || slash - start > 5) return std::nullopt;
    uint32_t ch = 0;
    for (size_t i = start; i < slash; ++i) {
      if (cid[i] < '0' || cid[i] > '9') return std::nullopt;
      ch = ch * 10 + static_cast<uint32_t>(cid[i] - '0');
    }
    if (ch == 0 || ch > 65535) return std::nullopt;
    return std::make_pair(static_cast<uint16_t>(ch), cid.substr(slash + 1));
  }

  void OnDelivery(const mq::Delivery& d) {
    if (closed || state == State::kClosing || !d.payload) return;
    auto where = SplitConsumerId(d.consumer_id);
    if (!where) return;
    auto it = channels.find(where->first);
    // A closed channel's consumers are being cancelled: the broker requeues what it sent them.
    if (it == channels.end() || it->second.closing) return;
    Channel& ch = it->second;
    if (d.get) return SendGetOk(where->first, ch, d, where->second.rfind("get:", 0) == 0);
    auto c = ch.consumers.find(where->second);
    if (c == ch.consumers.end()) return;
    if (!c->second.ready) {
      c->second.early.push_back(d);
      return;
    }
    Deliver(where->first, ch, c->second, d);
  }

  // Sends a push delivery now, or holds it while the channel is at its global prefetch (acked
  // deliveries only: no-ack consumers have no window, as in RabbitMQ).
  void Deliver(uint16_t id, Channel& ch, const Consumer& c, const mq::Delivery& d) {
    if (!c.no_ack && ch.global_prefetch != 0 &&
        (ch.counted_unacked >= ch.global_prefetch || !ch.held.empty())) {
      ch.held.emplace_back(c.tag, d);
      return;
    }
    SendDelivery(id, ch, c, d);
  }

  // Sends held deliveries while the channel's global window has room.
  void Pump(uint16_t id, Channel& ch) {
    while (!ch.held.empty() &&
           (ch.global_prefetch == 0 || ch.counted_unacked < ch.global_prefetch)) {
      auto [tag, d] = std::move(ch.held.front());
      ch.held.pop_front();
      auto c = ch.consumers.find(tag);
      if (c != ch.consumers.end()) SendDelivery(id, ch, c->second, d);
    }
  }

  // A consumer that is gone: the broker took back what it had, held deliveries included.
  static void DropHeld(Channel& ch, const std::string& tag) {
    std::erase_if(ch.held, [&](const auto& h) { return h.first == tag; });
  }

  void Track(Channel& ch, uint64_t tag, const mq::Delivery& d, bool counted) {
    if (ch.unacked.size() >= opts.max_unacked_per_channel) return;  // acks of it: 406
    ch.unacked[tag] = {d.consumer_id, d.message_id, counted};
    if (counted) ++ch.counted_unacked;
  }

  void SendDelivery(uint16_t id, Channel& ch, const Consumer& c, const mq::Delivery& d) {
    uint64_t tag = ch.next_delivery_tag++;
    if (!c.no_ack) Track(ch, tag, d, /*counted=*/true);
    amqp::BasicDeliver m{c.tag, tag, d.redelivered, d.payload->exchange, d.payload->routing_key};
    std::string props;
    Send(amqp::EncodeContentFrames(id, m, PropertiesFor(d, props), d.payload->body, frame_max));
  }

  void SendGetOk(uint16_t id, Channel& ch, const mq::Delivery& d, bool track) {
    uint64_t tag = ch.next_delivery_tag++;
    if (track) Track(ch, tag, d, /*counted=*/false);
    amqp::BasicGetOk m{tag, d.redelivered, d.payload->exchange, d.payload->routing_key,
                       Clamp32(d.message_count)};
    std::string props;
    Send(amqp::EncodeContentFrames(id, m, PropertiesFor(d, props), d.payload->body, frame_max));
  }

  // The properties a delivery goes out with: a message of a quorum queue returned before carries
  // x-delivery-count (its returns so far), as RabbitMQ's quorum queues add it. The stored message
  // is not changed; classic queues (x-queue-type=classic) add nothing, as in RabbitMQ.
  // `scratch` holds edited properties; the common case copies nothing.
  std::string_view PropertiesFor(const mq::Delivery& d, std::string& scratch) const {
    const std::string& raw = d.payload->properties;
    if (d.delivery_count == 0) return raw;
    const mq::pb::Queue* q = broker.state().FindQueue(d.queue);
    if (q != nullptr && q->args().queue_type() == "classic") return raw;
    auto with = mq::WithHeader(raw, "x-delivery-count", int64_t{d.delivery_count});
    if (!with.ok()) {
      HLOG_WARN("amqp_delivery_count_skipped", "owner={} queue={} error=\"{}\"", owner, d.queue,
                with.status().ToString());
      return raw;
    }
    scratch = std::move(*with);
    return scratch;
  }

  void OnBrokerCancel(const std::string& consumer_id) {
    if (closed || state == State::kClosing) return;
    auto where = SplitConsumerId(consumer_id);
    if (!where) return;
    auto it = channels.find(where->first);
    if (it == channels.end() || it->second.closing) return;
    if (it->second.consumers.erase(where->second) == 0) return;
    DropHeld(it->second, where->second);
    SendMethod(where->first, amqp::BasicCancel{where->second, true});
  }

  // The broker's state was replaced by a snapshot: a consumer it no longer has is cancelled (as
  // when its queue is deleted), and a message it says a consumer holds that this connection never
  // sent goes out now. A consumer whose consume is not applied yet is left alone.
  void OnRestored(const std::map<std::string, std::vector<mq::Delivery>>& held) {
    if (closed || state == State::kClosing) return;
    std::vector<std::string> gone;
    for (const auto& [id, ch] : channels) {
      if (ch.closing) continue;
      for (const auto& [tag, c] : ch.consumers) {
        if (c.ready && !held.contains(c.id)) gone.push_back(c.id);
      }
    }
    for (const std::string& id : gone) OnBrokerCancel(id);
    for (const auto& [consumer_id, deliveries] : held) {
      std::set<uint64_t> known = KnownMessages(consumer_id);
      for (const mq::Delivery& d : deliveries) {
        if (!known.contains(d.message_id)) OnDelivery(d);
      }
    }
  }

  // What this connection already has of a consumer's messages: sent and unacked, held back by
  // the channel's window, or waiting for consume-ok.
  std::set<uint64_t> KnownMessages(const std::string& consumer_id) const {
    std::set<uint64_t> out;
    auto where = SplitConsumerId(consumer_id);
    if (!where) return out;
    auto it = channels.find(where->first);
    if (it == channels.end()) return out;
    const Channel& ch = it->second;
    for (const auto& [tag, u] : ch.unacked) {
      if (u.consumer_id == consumer_id) out.insert(u.message_id);
    }
    for (const auto& [tag, d] : ch.held) {
      if (d.consumer_id == consumer_id) out.insert(d.message_id);
    }
    if (auto c = ch.consumers.find(where->second); c != ch.consumers.end()) {
      for (const mq::Delivery& d : c->second.early) out.insert(d.message_id);
    }
    return out;
  }

  const AmqpServerOptions opts;  // a copy: this may outlive the server by a handler or two
  net::IoRuntime& executor;
  BrokerNode& broker;
  tcp::socket socket;
  ClosedFn on_closed;
  AmqpConnection* outer;
  std::string owner;
  std::string remote;
  std::string user;
  bool attached = false;
  bool closed = false;
  State state = State::kHeader;
  std::string header;
  amqp::FrameDecoder decoder;
  std::vector<char> rbuf;
  bool reading = false;
  bool paused = false;
  std::string out;   // waiting for the write in progress
  std::string wbuf;  // being written
  bool writing = false;
  bool close_after_flush = false;
  bool flush_posted = false;
  std::set<uint16_t> ack_runs;  // channels with an ack run to send
  uint32_t frame_max;
  uint16_t channel_max;
  uint16_t heartbeat_s = 0;
  int64_t last_recv = 0;
  int64_t last_send = 0;
  size_t in_flight = 0;  // proposals not yet answered
  uint64_t next_generation = 0;
  std::map<uint16_t, Channel> channels;
  std::shared_ptr<net::Timer> handshake_timer;
  std::shared_ptr<net::Timer> heartbeat_timer;
  std::shared_ptr<net::Timer> close_timer;
};

AmqpConnection::AmqpConnection(const AmqpServerOptions& opts, net::IoRuntime& executor,
                               BrokerNode& broker, tcp::socket socket, ClosedFn on_closed)
    : impl_(std::make_shared<Impl>(opts, executor, broker, std::move(socket), std::move(on_closed),
                                   this)) {}

AmqpConnection::~AmqpConnection() = default;

void AmqpConnection::Start() { impl_->Start(); }
void AmqpConnection::Shutdown() { impl_->Finish("server stopping"); }
const std::string& AmqpConnection::owner() const { return impl_->owner; }

}  // namespace haven::node
