// HTTP/1.x head codec for the proxy's hot path: table-driven checks, memchr to find line ends,
// views over the caller's buffer, no allocation per message once the caller's vectors are warm.
#include "proxy/http1.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace haven::proxy::http1 {
namespace {

using CharTable = std::array<bool, 256>;

constexpr bool IsAlnum(unsigned c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

constexpr CharTable MakeTokenTable() {
  CharTable t{};
  for (unsigned c = 0; c < 256; ++c) t[c] = IsAlnum(c);
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}

// Field values: VCHAR, obs-text, SP and HT; every other control byte is refused.
constexpr CharTable MakeValueTable() {
  CharTable t{};
  for (unsigned c = 0; c < 256; ++c) t[c] = c == '\t' || (c >= 0x20 && c != 0x7f);
  return t;
}

// Request targets: no SP, no CTL, no DEL (obs-text passes: some clients send raw UTF-8).
constexpr CharTable MakeTargetTable() {
  CharTable t{};
  for (unsigned c = 0; c < 256; ++c) t[c] = c > 0x20 && c != 0x7f;
  return t;
}

constexpr CharTable kToken = MakeTokenTable();
constexpr CharTable kValue = MakeValueTable();
constexpr CharTable kTarget = MakeTargetTable();

constexpr uint64_t kMaxContentLength = uint64_t{1} << 62;

bool AllIn(const CharTable& table, std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [&table](char c) { return table[static_cast<unsigned char>(c)]; });
}

// Field values: the table's answer, eight bytes at a time. A word with no byte below 0x20 and no
// DEL is clean (bytes >= 0x80 are obs-text and pass); a word with one (often just HT) is checked
// byte by byte.
bool IsCleanValue(std::string_view s) {
  constexpr uint64_t kOnes = ~uint64_t{0} / 255;
  constexpr uint64_t kHigh = kOnes * 0x80;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t x = 0;
    std::memcpy(&x, s.data() + i, 8);
    const uint64_t below_space = (x - kOnes * 0x20) & ~x & kHigh;
    const uint64_t y = x ^ (kOnes * 0x7f);
    const uint64_t del = (y - kOnes) & ~y & kHigh;
    if ((below_space | del) != 0 && !AllIn(kValue, s.substr(i, 8))) return false;
  }
  return AllIn(kValue, s.substr(i));
}

bool IsToken(std::string_view s) { return !s.empty() && AllIn(kToken, s); }

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool IsOws(char c) { return c == ' ' || c == '\t'; }

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Calls fn(element) for each non-empty, OWS-trimmed element of a comma-separated list; stops
// early when fn returns false, and then returns false.
template <typename Fn>
bool ForEachListElement(std::string_view list, Fn&& fn) {
  while (true) {
    size_t comma = list.find(',');
    std::string_view element = TrimOws(list.substr(0, comma));
    if (!element.empty() && !fn(element)) return false;
    if (comma == std::string_view::npos) return true;
    list.remove_prefix(comma + 1);
  }
}

void AppendNumber(uint64_t n, std::string* out) {
  std::array<char, 24> buf{};  // 2^64 has 20 digits
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), n);
  out->append(buf.data(), end);
}

// ---------------------------------------------------------------------------------------------
// Lines

enum class LineResult { kLine, kNeedMore, kBareLf };

// The next line of `window` from *pos, without its line end. Bare LF ends a line only when
// `allow_bare_lf` (responses); in requests it is refused (a smuggling vector).
LineResult NextLine(std::string_view window, size_t* pos, bool allow_bare_lf,
                    std::string_view* line) {
  const char* start = window.data() + *pos;
  const size_t left = window.size() - *pos;
  const void* nl = left == 0 ? nullptr : std::memchr(start, '\n', left);
  if (nl == nullptr) return LineResult::kNeedMore;
  auto len = static_cast<size_t>(static_cast<const char*>(nl) - start);
  size_t eol = 1;
  if (len > 0 && start[len - 1] == '\r') {
    --len;
    eol = 2;
  } else if (!allow_bare_lf) {
    return LineResult::kBareLf;
  }
  *line = std::string_view(start, len);
  *pos += len + eol;
  return LineResult::kLine;
}

// Whether `window` may hold a whole head, or (for requests) a bare LF to refuse. A caller parses
// again on every read, so a head trickling in costs only this memchr walk per read until its end
// arrives, not a full validation each time.
bool WorthParsing(std::string_view w, bool allow_bare_lf) {
  size_t i = 0;
  while (i < w.size()) {
    const void* p = std::memchr(w.data() + i, '\n', w.size() - i);
    if (p == nullptr) return false;
    const auto nl = static_cast<size_t>(static_cast<const char*>(p) - w.data());
    if (!allow_bare_lf && (nl == 0 || w[nl - 1] != '\r')) return true;
    if (nl + 1 < w.size() && w[nl + 1] == '\n') return true;
    if (nl + 2 < w.size() && w[nl + 1] == '\r' && w[nl + 2] == '\n') return true;
    i = nl + 1;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Header fields and what they say about framing and the connection

// What the special headers of one message say, gathered while its fields are read.
struct Framing {
  bool has_length = false;
  uint64_t length = 0;
  bool has_te = false;
  bool te_final_chunked = false;
  int chunked_count = 0;
  int host_count = 0;
  size_t connection_tokens = 0;
  bool conn_close = false;
  bool conn_keep_alive = false;
  bool conn_upgrade = false;
  bool has_upgrade = false;
  bool expect_continue = false;
};

// Fails a parse: records status and message, returns kError.
ParseStatus Fail(ParseError* err, int status, std::string_view message) {
  if (err != nullptr) {
    err->status = status;
    err->message.assign(message);
  }
  return ParseStatus::kError;
}

// One "name: value" line into *h; on a bad line sets *why and returns false.
bool ParseFieldLine(std::string_view line, Header* h, std::string_view* why) {
  if (IsOws(line.front())) {
    *why = "obsolete line folding is not allowed";
    return false;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) {
    *why = "header line without a colon";
    return false;
  }
  std::string_view name = line.substr(0, colon);
  if (!name.empty() && IsOws(name.back())) {
    *why = "whitespace between header name and colon";
    return false;
  }
  if (!IsToken(name)) {
    *why = "invalid header name";
    return false;
  }
  std::string_view value = line.substr(colon + 1);
  if (!IsCleanValue(value)) {
    *why = "control character in header value";
    return false;
  }
  h->name = name;
  h->value = TrimOws(value);
  return true;
}

// Digits only, at most 2^62; false otherwise.
bool ParseLength(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19 || !std::all_of(s.begin(), s.end(), IsDigit)) return false;
  uint64_t v = 0;
  for (char c : s) v = v * 10 + static_cast<uint64_t>(c - '0');
  if (v > kMaxContentLength) return false;
  *out = v;
  return true;
}

bool ObserveContentLength(std::string_view value, Framing* f, std::string_view* why) {
  bool any = false;
  bool ok = ForEachListElement(value, [&](std::string_view element) {
    uint64_t v = 0;
    if (!ParseLength(element, &v)) {
      *why = "invalid Content-Length";
      return false;
    }
    if (f->has_length && v != f->length) {
      *why = "conflicting Content-Length values";
      return false;
    }
    f->has_length = true;
    f->length = v;
    any = true;
    return true;
  });
  if (ok && !any) *why = "empty Content-Length";
  return ok && any;
}

bool ObserveTransferEncoding(std::string_view value, Framing* f, std::string_view* why) {
  bool any = false;
  bool ok = ForEachListElement(value, [&](std::string_view element) {
    const size_t semi = element.find(';');
    std::string_view coding = TrimOws(element.substr(0, semi));
    if (!IsToken(coding)) {
      *why = "invalid Transfer-Encoding";
      return false;
    }
    const bool chunked = IEquals(coding, "chunked");
    if (chunked && (semi != std::string_view::npos || ++f->chunked_count > 1)) {
      *why = semi != std::string_view::npos ? "chunked takes no parameters"
                                            : "chunked applied more than once";
      return false;
    }
    f->te_final_chunked = chunked;
    any = true;
    return true;
  });
  if (ok && !any) *why = "empty Transfer-Encoding";
  f->has_te = true;
  return ok && any;
}

bool ObserveConnection(std::string_view value, Framing* f, std::string_view* why) {
  return ForEachListElement(value, [&](std::string_view token) {
    if (++f->connection_tokens > kMaxConnectionTokens) {
      *why = "too many Connection options";
      return false;
    }
    if (IEquals(token, "close")) f->conn_close = true;
    if (IEquals(token, "keep-alive")) f->conn_keep_alive = true;
    if (IEquals(token, "upgrade")) f->conn_upgrade = true;
    return true;
  });
}

// Updates *f from one header; dispatches on the name's length first so most headers cost one
// switch. False with *why on a bad value.
bool ObserveHeader(const Header& h, Framing* f, std::string_view* why) {
  switch (h.name.size()) {
    case 4:
      if (IEquals(h.name, "Host")) ++f->host_count;
      return true;
    case 6:
      if (IEquals(h.name, "Expect") && IEquals(h.value, "100-continue")) f->expect_continue = true;
      return true;
    case 7:
      if (IEquals(h.name, "Upgrade")) f->has_upgrade = true;
      return true;
    case 10:
      return !IEquals(h.name, "Connection") || ObserveConnection(h.value, f, why);
    case 14:
      return !IEquals(h.name, "Content-Length") || ObserveContentLength(h.value, f, why);
    case 17:
      return !IEquals(h.name, "Transfer-Encoding") || ObserveTransferEncoding(h.value, f, why);
    default:
      return true;
  }
}

bool KeepAliveByDefault(int version_minor, const Framing& f) {
  if (f.conn_close) return false;
  return version_minor == 1 || f.conn_keep_alive;
}

// Reads header lines from *pos up to and including the empty line that ends the head.
// kIncomplete when the window ends first (the caller decides between "wait" and 431).
ParseStatus ParseFields(std::string_view window, size_t* pos, bool allow_bare_lf,
                        size_t max_headers, int too_many_status, int bad_status,
                        std::vector<Header>* headers, Framing* f, ParseError* err) {
  while (true) {
    std::string_view line;
    switch (NextLine(window, pos, allow_bare_lf, &line)) {
      case LineResult::kNeedMore:
        return ParseStatus::kIncomplete;
      case LineResult::kBareLf:
        return Fail(err, bad_status, "bare LF in head");
      case LineResult::kLine:
        break;
    }
    if (line.empty()) return ParseStatus::kComplete;
    if (headers->size() >= max_headers) return Fail(err, too_many_status, "too many headers");
    Header h;
    std::string_view why;
    if (!ParseFieldLine(line, &h, &why) || !ObserveHeader(h, f, &why)) {
      return Fail(err, bad_status, why);
    }
    headers->push_back(h);
  }
}

// ---------------------------------------------------------------------------------------------
// Start lines

// "HTTP/1.0" or "HTTP/1.1" -> 0 or 1; another HTTP/x.y -> 505; anything else -> 400.
int ParseVersion(std::string_view v, int* minor) {
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || !IsDigit(v[5]) || v[6] != '.' ||
      !IsDigit(v[7])) {
    return 400;
  }
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) return 505;
  *minor = v[7] - '0';
  return 0;
}

bool HasHttpScheme(std::string_view target) {
  auto starts = [&](std::string_view scheme) {
    return target.size() > scheme.size() && IEquals(target.substr(0, scheme.size()), scheme);
  };
  return starts("http://") || starts("https://");
}

// host:port, as CONNECT needs it.
bool IsAuthorityForm(std::string_view target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == target.size()) return false;
  if (target.find_first_of("/?#@") != std::string_view::npos) return false;
  std::string_view port = target.substr(colon + 1);
  return port.size() <= 5 && std::all_of(port.begin(), port.end(), IsDigit);
}

bool IsValidTarget(std::string_view method, std::string_view target) {
  if (target.empty() || !AllIn(kTarget, target)) return false;
  if (method == "CONNECT") return IsAuthorityForm(target);
  if (target == "*") return method == "OPTIONS";
  return target.front() == '/' || HasHttpScheme(target);
}

ParseStatus ParseRequestLine(std::string_view line, RequestHead* out, ParseError* err) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return Fail(err, 400, "malformed request line");
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return Fail(err, 400, "malformed request line");
  out->method = line.substr(0, sp1);
  out->target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (!IsToken(out->method)) return Fail(err, 400, "invalid method");
  if (!IsValidTarget(out->method, out->target)) return Fail(err, 400, "invalid request target");
  const int bad = ParseVersion(line.substr(sp2 + 1), &out->version_minor);
  if (bad == 505) return Fail(err, 505, "HTTP version not supported");
  if (bad != 0) return Fail(err, 400, "malformed HTTP version");
  return ParseStatus::kComplete;
}

ParseStatus ParseStatusLine(std::string_view line, ResponseHead* out, ParseError* err) {
  if (line.size() < 12 || line[8] != ' ') return Fail(err, 502, "malformed status line");
  if (ParseVersion(line.substr(0, 8), &out->version_minor) != 0) {
    return Fail(err, 502, "unsupported upstream HTTP version");
  }
  std::string_view code = line.substr(9, 3);
  if (!std::all_of(code.begin(), code.end(), IsDigit)) return Fail(err, 502, "invalid status");
  out->status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
  if (out->status < 100 || out->status > 599) return Fail(err, 502, "invalid status");
  if (line.size() > 12 && line[12] != ' ') return Fail(err, 502, "malformed status line");
  out->reason = line.size() > 12 ? line.substr(13) : std::string_view();
  if (!AllIn(kValue, out->reason)) return Fail(err, 502, "control character in reason");
  return ParseStatus::kComplete;
}

// The part of `data` a head may occupy; a head not ended inside it is incomplete or too large.
std::string_view HeadWindow(std::string_view data, const Limits& limits) {
  return data.substr(0, std::min(data.size(), limits.max_head_bytes));
}

bool WindowFull(std::string_view data, const Limits& limits) {
  return data.size() >= limits.max_head_bytes;
}

size_t MaxHeaders(const Limits& limits) { return std::min(limits.max_headers, kMaxHeaders); }

// RFC 9112 2.2: empty lines before a request line are ignored (clients send one after a body).
void SkipLeadingEmptyLines(std::string_view window, size_t* pos) {
  while (window.size() - *pos >= 2 && window[*pos] == '\r' && window[*pos + 1] == '\n') *pos += 2;
}

ParseStatus FinishRequest(const Framing& f, RequestHead* out, ParseError* err) {
  if (f.host_count > 1) return Fail(err, 400, "more than one Host header");
  if (f.host_count == 0 && out->version_minor == 1) return Fail(err, 400, "missing Host header");
  if (f.has_length && f.has_te) {
    return Fail(err, 400, "both Content-Length and Transfer-Encoding");
  }
  if (f.has_te && out->version_minor == 0) {
    return Fail(err, 400, "Transfer-Encoding in an HTTP/1.0 request");
  }
  if (f.has_te && !f.te_final_chunked) return Fail(err, 501, "unsupported Transfer-Encoding");
  if (f.has_te) {
    out->body = BodyKind::kChunked;
  } else if (f.has_length) {
    out->body = BodyKind::kLength;
    out->content_length = f.length;
  }
  out->keep_alive = KeepAliveByDefault(out->version_minor, f);
  out->upgrade = f.conn_upgrade && f.has_upgrade;
  out->expect_continue = f.expect_continue && out->version_minor == 1;
  return ParseStatus::kComplete;
}

bool HasNoBody(int status, bool request_was_head) {
  return request_was_head || status < 200 || status == 204 || status == 304;
}

void FinishResponse(const Framing& f, bool request_was_head, ResponseHead* out) {
  out->keep_alive = KeepAliveByDefault(out->version_minor, f);
  if (HasNoBody(out->status, request_was_head)) {
    out->body = BodyKind::kNone;
  } else if (f.has_te) {
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length; without a final chunked the
    // body runs until the upstream closes.
    out->body = f.te_final_chunked ? BodyKind::kChunked : BodyKind::kUntilClose;
  } else if (f.has_length) {
    out->body = BodyKind::kLength;
    out->content_length = f.length;
  } else {
    out->body = BodyKind::kUntilClose;
  }
  // RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means framing we cannot trust for reuse.
  if (out->body == BodyKind::kUntilClose || (f.has_te && out->version_minor == 0)) {
    out->keep_alive = false;
  }
}

template <typename Head>
void ResetHead(Head* h) {
  std::vector<Header> headers = std::move(h->headers);
  headers.clear();
  *h = Head{};
  h->headers = std::move(headers);
}

// ---------------------------------------------------------------------------------------------
// Writing heads

// The options of all Connection headers (bounded: the parser refuses more).
struct ConnectionOptions {
  std::array<std::string_view, kMaxConnectionTokens> tokens;
  size_t count = 0;

  explicit ConnectionOptions(const std::vector<Header>& headers) {
    for (const Header& h : headers) {
      if (!IEquals(h.name, "Connection")) continue;
      ForEachListElement(h.value, [this](std::string_view t) {
        if (count == tokens.size()) return false;
        tokens[count++] = t;
        return true;
      });
    }
  }
  bool Names(std::string_view name) const {
    return std::any_of(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(count),
                       [name](std::string_view t) { return IEquals(t, name); });
  }
};

bool IsHopByHop(std::string_view name) {
  switch (name.size()) {
    case 2:
      return IEquals(name, "TE");
    case 7:
      return IEquals(name, "Trailer") || IEquals(name, "Upgrade");
    case 10:
      return IEquals(name, "Connection") || IEquals(name, "Keep-Alive");
    case 16:
      return IEquals(name, "Proxy-Connection");
    default:
      return false;
  }
}

// Headers a Connection option may not remove: dropping framing or Host on the client's word
// would let the next hop read the body differently from us (request smuggling).
bool IsProtected(std::string_view name) {
  return IEquals(name, "Content-Length") || IEquals(name, "Transfer-Encoding") ||
         IEquals(name, "Host");
}

bool IsDropped(std::string_view name, const ConnectionOptions& options) {
  return IsHopByHop(name) || (options.count > 0 && options.Names(name) && !IsProtected(name));
}

void AppendHeader(std::string_view name, std::string_view value, std::string* out) {
  out->append(name);
  out->append(": ");
  out->append(value);
  out->append("\r\n");
}

void AppendStatusLine(int version_minor, int status, std::string_view reason, std::string* out) {
  out->append(version_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ");
  AppendNumber(static_cast<uint64_t>(std::clamp(status, 0, 999)), out);
  out->push_back(' ');
  out->append(reason);
  out->append("\r\n");
}

void AppendConnection(int client_version_minor, bool keep_alive, std::string* out) {
  if (!keep_alive) {
    out->append("Connection: close\r\n");
  } else if (client_version_minor == 0) {
    out->append("Connection: keep-alive\r\n");
  }
}

}  // namespace

// -----------------------------------------------------------------------------------------------

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i] && Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

namespace {
std::string_view FindIn(const std::vector<Header>& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (IEquals(h.name, name)) return h.value;
  }
  return {};
}
}  // namespace

std::string_view RequestHead::Find(std::string_view name) const { return FindIn(headers, name); }

bool RequestHead::Has(std::string_view name) const {
  return std::any_of(headers.begin(), headers.end(),
                     [name](const Header& h) { return IEquals(h.name, name); });
}

std::string_view ResponseHead::Find(std::string_view name) const { return FindIn(headers, name); }

ParseStatus ParseRequestHead(std::string_view data, const Limits& limits, RequestHead* out,
                             ParseError* err) {
  ResetHead(out);
  const std::string_view window = HeadWindow(data, limits);
  size_t pos = 0;
  SkipLeadingEmptyLines(window, &pos);
  std::string_view line;
  LineResult lr = LineResult::kNeedMore;
  if (WorthParsing(window, /*allow_bare_lf=*/false)) {
    lr = NextLine(window, &pos, /*allow_bare_lf=*/false, &line);
  }
  if (lr == LineResult::kBareLf) return Fail(err, 400, "bare LF in head");
  if (lr == LineResult::kLine) {
    if (ParseRequestLine(line, out, err) == ParseStatus::kError) return ParseStatus::kError;
    Framing f;
    ParseStatus st =
        ParseFields(window, &pos, false, MaxHeaders(limits), 431, 400, &out->headers, &f, err);
    if (st == ParseStatus::kError) return st;
    if (st == ParseStatus::kComplete) {
      out->head_bytes = pos;
      return FinishRequest(f, out, err);
    }
  }
  if (WindowFull(data, limits)) return Fail(err, 431, "request head too large");
  return ParseStatus::kIncomplete;
}

ParseStatus ParseResponseHead(std::string_view data, const Limits& limits, bool request_was_head,
                              ResponseHead* out, ParseError* err) {
  ResetHead(out);
  const std::string_view window = HeadWindow(data, limits);
  size_t pos = 0;
  std::string_view line;
  if (WorthParsing(window, /*allow_bare_lf=*/true) &&
      NextLine(window, &pos, /*allow_bare_lf=*/true, &line) == LineResult::kLine) {
    if (ParseStatusLine(line, out, err) == ParseStatus::kError) return ParseStatus::kError;
    Framing f;
    ParseStatus st =
        ParseFields(window, &pos, true, MaxHeaders(limits), 502, 502, &out->headers, &f, err);
    if (st == ParseStatus::kError) return st;
    if (st == ParseStatus::kComplete) {
      out->head_bytes = pos;
      FinishResponse(f, request_was_head, out);
      return st;
    }
  }
  if (WindowFull(data, limits)) return Fail(err, 502, "response head too large");
  return ParseStatus::kIncomplete;
}

// -----------------------------------------------------------------------------------------------
// ChunkedScanner

namespace {
// A chunk-size line (size and extensions) longer than this is refused: nothing legitimate
// needs more, and it bounds the bytes scanned without progress.
constexpr size_t kMaxChunkLineBytes = 4096;
constexpr size_t kMaxChunkSizeDigits = 16;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

ChunkedScanner::ChunkedScanner(uint64_t max_body_bytes, size_t max_trailer_bytes)
    : max_body_bytes_(max_body_bytes), max_trailer_bytes_(max_trailer_bytes) {}

bool ChunkedScanner::done() const { return state_ == State::kDone; }
uint64_t ChunkedScanner::body_bytes() const { return body_bytes_; }
int ChunkedScanner::error_status() const { return error_status_; }

void ChunkedScanner::Reset() {
  state_ = State::kSize;
  chunk_size_ = chunk_left_ = body_bytes_ = 0;
  size_digits_ = line_bytes_ = trailer_bytes_ = 0;
  error_status_ = 0;
  error_message_.clear();
}

Result<size_t> ChunkedScanner::Fail(int status, std::string message) {
  state_ = State::kError;
  error_status_ = status;
  error_message_ = "chunked body: " + std::move(message);
  return Status(status == 400 ? Code::kInvalidArgument : Code::kTooLarge, error_message_);
}

Result<size_t> ChunkedScanner::Feed(std::string_view data) {
  if (state_ == State::kError) {
    return Status(error_status_ == 400 ? Code::kInvalidArgument : Code::kTooLarge, error_message_);
  }
  size_t i = 0;
  while (i < data.size() && state_ != State::kDone) {
    if (state_ == State::kData) {
      const uint64_t take = std::min<uint64_t>(chunk_left_, data.size() - i);
      i += static_cast<size_t>(take);
      chunk_left_ -= take;
      if (chunk_left_ == 0) state_ = State::kDataCr;
      continue;
    }
    const char c = data[i++];
    if (Result<size_t> r = Step(c); !r.ok()) return r;
  }
  return i;
}

// One byte of framing (everything but chunk data). Returns 0 or the error.
Result<size_t> ChunkedScanner::Step(char c) {
  switch (state_) {
    case State::kSize:
    case State::kExtension:
      return StepSizeLine(c);
    case State::kSizeLf:
      if (c != '\n') return Fail(400, "chunk size line not ended by CRLF");
      return EndSizeLine();
    case State::kDataCr:
      if (c != '\r') return Fail(400, "chunk data not followed by CRLF");
      state_ = State::kDataLf;
      return 0;
    case State::kDataLf:
      if (c != '\n') return Fail(400, "chunk data not followed by CRLF");
      state_ = State::kSize;
      return 0;
    case State::kTrailerStart:
    case State::kTrailerLine:
    case State::kTrailerLf:
    case State::kFinalLf:
      return StepTrailer(c);
    case State::kData:
    case State::kDone:
    case State::kError:
      break;
  }
  return 0;
}

Result<size_t> ChunkedScanner::StepSizeLine(char c) {
  if (++line_bytes_ > kMaxChunkLineBytes) return Fail(400, "chunk size line too long");
  if (state_ == State::kSize) {
    const int digit = HexValue(c);
    if (digit >= 0) {
      if (++size_digits_ > kMaxChunkSizeDigits) return Fail(400, "chunk size too large");
      chunk_size_ = (chunk_size_ << 4) | static_cast<uint64_t>(digit);
      return 0;
    }
    if (size_digits_ == 0) return Fail(400, "invalid chunk size");
    if (c != ';' && c != '\r' && !IsOws(c)) return Fail(400, "invalid chunk size");
    state_ = State::kExtension;
  }
  if (c == '\r') {
    state_ = State::kSizeLf;
    return 0;
  }
  if (!kValue[static_cast<unsigned char>(c)]) return Fail(400, "control character in chunk line");
  return 0;
}

Result<size_t> ChunkedScanner::EndSizeLine() {
  if (chunk_size_ > max_body_bytes_ - std::min(body_bytes_, max_body_bytes_)) {
    return Fail(413, "body larger than the limit");
  }
  body_bytes_ += chunk_size_;
  chunk_left_ = chunk_size_;
  state_ = chunk_size_ == 0 ? State::kTrailerStart : State::kData;
  chunk_size_ = 0;
  size_digits_ = line_bytes_ = 0;
  return 0;
}

Result<size_t> ChunkedScanner::StepTrailer(char c) {
  if (++trailer_bytes_ > max_trailer_bytes_) return Fail(431, "trailers too large");
  switch (state_) {
    case State::kTrailerStart:
      if (c == '\r') {
        state_ = State::kFinalLf;
        return 0;
      }
      if (IsOws(c)) return Fail(400, "obsolete line folding in trailers");
      state_ = State::kTrailerLine;
      [[fallthrough]];
    case State::kTrailerLine:
      if (c == '\r') {
        state_ = State::kTrailerLf;
      } else if (!kValue[static_cast<unsigned char>(c)]) {
        return Fail(400, "control character in trailer");
      }
      return 0;
    case State::kTrailerLf:
      if (c != '\n') return Fail(400, "trailer line not ended by CRLF");
      state_ = State::kTrailerStart;
      return 0;
    case State::kFinalLf:
      if (c != '\n') return Fail(400, "chunked body not ended by CRLF");
      state_ = State::kDone;
      return 0;
    default:
      return 0;
  }
}

// -----------------------------------------------------------------------------------------------
// Writers

void AppendUpstreamRequestHead(const RequestHead& req, std::string_view client_ip,
                               std::string_view upstream_host, std::string* out) {
  const ConnectionOptions options(req.headers);
  // The last X-Forwarded-For that survives gets the client appended: the list keeps its order.
  ptrdiff_t last_xff = -1;
  bool has_host = false;
  for (size_t i = 0; i < req.headers.size(); ++i) {
    const Header& h = req.headers[i];
    if (IEquals(h.name, "Host")) has_host = true;
    if (IEquals(h.name, "X-Forwarded-For") && !IsDropped(h.name, options)) {
      last_xff = static_cast<ptrdiff_t>(i);
    }
  }
  out->reserve(out->size() + req.head_bytes + client_ip.size() + upstream_host.size() + 48);
  out->append(req.method);
  out->push_back(' ');
  out->append(req.target);
  out->append(" HTTP/1.1\r\n");
  for (size_t i = 0; i < req.headers.size(); ++i) {
    const Header& h = req.headers[i];
    if (IsDropped(h.name, options)) continue;
    if (static_cast<ptrdiff_t>(i) != last_xff) {
      AppendHeader(h.name, h.value, out);
      continue;
    }
    out->append(h.name);
    out->append(": ");
    out->append(h.value);
    if (!h.value.empty()) out->append(", ");
    out->append(client_ip);
    out->append("\r\n");
  }
  if (last_xff < 0) AppendHeader("X-Forwarded-For", client_ip, out);
  if (!has_host) AppendHeader("Host", upstream_host, out);
  out->append("\r\n");
}

void AppendClientResponseHead(const ResponseHead& res, int client_version_minor, bool keep_alive,
                              std::string* out) {
  const ConnectionOptions options(res.headers);
  const bool has_te = std::any_of(res.headers.begin(), res.headers.end(), [](const Header& h) {
    return IEquals(h.name, "Transfer-Encoding");
  });
  out->reserve(out->size() + res.head_bytes + 48);
  AppendStatusLine(client_version_minor, res.status,
                   res.reason.empty() ? ReasonPhrase(res.status) : res.reason, out);
  for (const Header& h : res.headers) {
    if (IsDropped(h.name, options)) continue;
    if (has_te && IEquals(h.name, "Content-Length")) continue;  // RFC 9112 6.3: TE wins
    AppendHeader(h.name, h.value, out);
  }
  AppendConnection(client_version_minor, keep_alive, out);
  out->append("\r\n");
}

void AppendErrorResponse(int status, std::string_view message, int version_minor, bool keep_alive,
                         std::string* out) {
  AppendStatusLine(version_minor, status, ReasonPhrase(status), out);
  out->append("Content-Type: text/plain\r\nContent-Length: ");
  AppendNumber(message.size() + 1, out);
  out->append("\r\n");
  AppendConnection(version_minor, keep_alive, out);
  out->append("\r\n");
  out->append(message);
  out->push_back('\n');
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 421:
      return "Misdirected Request";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

}  // namespace haven::proxy::http1
