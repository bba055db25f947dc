// HTTP/1.x message heads for the proxy: strict parsing into views over the caller's buffer, and
// the rewritten heads the proxy sends on. Pure: no I/O, no allocation per message once warm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace haven::proxy::http1 {

struct Header {
  std::string_view name, value;  // value without surrounding OWS
};

enum class BodyKind { kNone, kLength, kChunked, kUntilClose };

// A hard cap on Limits::max_headers whatever the configuration says.
inline constexpr size_t kMaxHeaders = 256;
// The options all Connection headers of one message may name together; more is a bad request
// (this bounds the work of stripping the headers they name).
inline constexpr size_t kMaxConnectionTokens = 32;

struct Limits {
  size_t max_head_bytes = 64 << 10;  // request/status line + headers + final CRLF
  size_t max_headers = 100;          // hard cap kMaxHeaders = 256
};

enum class ParseStatus { kComplete, kIncomplete, kError };

struct ParseError {
  int status = 400;     // what the proxy answers: 400, 431 (head too large/too many headers),
                        // 501 (unsupported transfer-coding), 505 (version not HTTP/1.0 or 1.1)
  std::string message;  // one line, for the client and the log
};

struct RequestHead {
  std::string_view method, target;
  int version_minor = 1;        // 0 or 1
  std::vector<Header> headers;  // reused: clear() keeps capacity
  BodyKind body =
      BodyKind::kNone;  // kLength (content_length), kChunked or kNone; never kUntilClose
  uint64_t content_length = 0;
  bool keep_alive = true;        // by version and Connection tokens
  bool expect_continue = false;  // Expect: 100-continue
  bool upgrade = false;          // Connection: upgrade with an Upgrade header
  size_t head_bytes = 0;         // bytes the head took in the buffer, final CRLF included
  std::string_view Find(
      std::string_view name) const;  // first value, ASCII case-insensitive; "" if none
  bool Has(std::string_view name) const;
};

struct ResponseHead {
  int status = 0;
  std::string_view reason;
  int version_minor = 1;
  std::vector<Header> headers;
  BodyKind body = BodyKind::kNone;  // kNone for 1xx/204/304 and answers to HEAD; kUntilClose when
  uint64_t content_length = 0;      // neither Content-Length nor chunked
  bool keep_alive = true;
  size_t head_bytes = 0;
  std::string_view Find(std::string_view name) const;
};

// Parses the head at the start of `data`. kIncomplete: the head's end is not in `data` yet and
// `data` is still within the limits (past them it is a kError 431). On kError *err says why.
ParseStatus ParseRequestHead(std::string_view data, const Limits& limits, RequestHead* out,
                             ParseError* err);
// `request_was_head`: the answer to a HEAD request has no body whatever its headers say.
// A bad response head is the upstream's fault, so err->status is always 502 here.
ParseStatus ParseResponseHead(std::string_view data, const Limits& limits, bool request_was_head,
                              ResponseHead* out, ParseError* err);

// Finds where a chunked body ends, fed incrementally (the body is forwarded verbatim, so the
// scanner only needs to know where it stops). Chunk extensions are skipped, trailers are allowed
// (bounded).
class ChunkedScanner {
 public:
  explicit ChunkedScanner(uint64_t max_body_bytes, size_t max_trailer_bytes = 16 << 10);
  // Scans `data`, which follows whatever was fed before. Returns how many bytes of `data` belong to
  // the body (all of it unless the body ends inside `data`), or an error (bad chunk size line,
  // missing CRLF, sum of chunk sizes over max_body_bytes -> status 413, trailers too large -> 431).
  // After done() or an error, Feed returns 0 / the same error until Reset().
  Result<size_t> Feed(std::string_view data);
  bool done() const;
  uint64_t body_bytes() const;  // sum of chunk sizes so far
  // The HTTP status of the last error (400, 413 or 431); 0 while there is none.
  int error_status() const;
  void Reset();

 private:
  enum class State {
    kSize,          // hex digits of a chunk size
    kExtension,     // after the size, up to CR
    kSizeLf,        // LF ending the size line
    kData,          // chunk data
    kDataCr,        // CR after chunk data
    kDataLf,        // LF after chunk data
    kTrailerStart,  // start of a trailer line (or the final CRLF)
    kTrailerLine,   // inside a trailer field line
    kTrailerLf,     // LF ending a trailer line
    kFinalLf,       // LF of the final CRLF
    kDone,
    kError,
  };
  Result<size_t> Fail(int status, std::string message);
  Result<size_t> Step(char c);
  Result<size_t> StepSizeLine(char c);
  Result<size_t> EndSizeLine();
  Result<size_t> StepTrailer(char c);

  uint64_t max_body_bytes_;
  size_t max_trailer_bytes_;
  State state_ = State::kSize;
  uint64_t chunk_size_ = 0;  // of the chunk being read
  uint64_t chunk_left_ = 0;  // data bytes of the current chunk still to come
  size_t size_digits_ = 0;   // hex digits seen in the current size line
  size_t line_bytes_ = 0;    // bytes of the current size line (bounded, extensions included)
  uint64_t body_bytes_ = 0;
  size_t trailer_bytes_ = 0;
  int error_status_ = 0;
  std::string error_message_;
};

// The request head as sent upstream: "METHOD TARGET HTTP/1.1", every header except the hop-by-hop
// ones (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, and every header the
// Connection header names; Transfer-Encoding is kept: chunked bodies are forwarded as they are),
// the client's address appended to X-Forwarded-For (", ip" after an existing value, or a new
// header), Host added from `upstream_host` when the request has none (HTTP/1.0), nothing else
// added (keep-alive is HTTP/1.1's default). Appends to *out. Connection may not name
// Content-Length, Transfer-Encoding or Host away: the next hop must frame the body as we did.
void AppendUpstreamRequestHead(const RequestHead& req, std::string_view client_ip,
                               std::string_view upstream_host, std::string* out);

// The response head for the client: status line in the client's version ("HTTP/1.<minor>"),
// hop-by-hop headers removed, then "Connection: close" when !keep_alive, or
// "Connection: keep-alive" for an HTTP/1.0 client that keeps the connection. Framing headers
// (Content-Length / Transfer-Encoding: chunked) kept as they are, except a Content-Length next to
// chunked, which is dropped (RFC 9112 6.3). A kUntilClose body ends only when the upstream closes,
// so it cannot be kept alive: the caller must pass keep_alive=false for it.
void AppendClientResponseHead(const ResponseHead& res, int client_version_minor, bool keep_alive,
                              std::string* out);

// A whole canned error response, text/plain, body = message + "\n", with Content-Length and
// "Connection: close" unless keep_alive.
void AppendErrorResponse(int status, std::string_view message, int version_minor, bool keep_alive,
                         std::string* out);

std::string_view ReasonPhrase(int status);  // "Service Unavailable", ... ("Unknown" otherwise)
bool IEquals(std::string_view a, std::string_view b);  // ASCII case-insensitive

}  // namespace haven::proxy::http1
