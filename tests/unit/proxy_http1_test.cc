// The proxy's HTTP/1.x head codec: strict request parsing (smuggling rules), tolerant response
// parsing, the rewritten heads, and the chunked-body scanner.
#include "proxy/http1.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace haven::proxy::http1 {
namespace {

struct Parsed {
  ParseStatus st;
  RequestHead head;
  ParseError err;
};

Parsed Req(std::string_view data, Limits limits = {}) {
  Parsed p;
  p.st = ParseRequestHead(data, limits, &p.head, &p.err);
  return p;
}

// Expects a request head to be refused with `status`.
void ExpectReqError(std::string_view data, int status) {
  Parsed p = Req(data);
  EXPECT_EQ(p.st, ParseStatus::kError) << data;
  EXPECT_EQ(p.err.status, status) << data << " -> " << p.err.message;
  EXPECT_FALSE(p.err.message.empty());
}

struct ParsedRes {
  ParseStatus st;
  ResponseHead head;
  ParseError err;
};

ParsedRes Res(std::string_view data, bool head_request = false, Limits limits = {}) {
  ParsedRes p;
  p.st = ParseResponseHead(data, limits, head_request, &p.head, &p.err);
  return p;
}

// ----------------------------------------------------------------------------------------------
// Requests

TEST(Http1Request, ParsesSimpleGet) {
  std::string data = "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept:  */*  \r\n\r\nNEXT";
  Parsed p = Req(data);
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.method, "GET");
  EXPECT_EQ(p.head.target, "/a?b=c");
  EXPECT_EQ(p.head.version_minor, 1);
  ASSERT_EQ(p.head.headers.size(), 2u);
  EXPECT_EQ(p.head.headers[1].name, "Accept");
  EXPECT_EQ(p.head.headers[1].value, "*/*");
  EXPECT_EQ(p.head.Find("host"), "example.com");
  EXPECT_EQ(p.head.Find("missing"), "");
  EXPECT_TRUE(p.head.Has("ACCEPT"));
  EXPECT_FALSE(p.head.Has("Accept-Encoding"));
  EXPECT_EQ(p.head.body, BodyKind::kNone);
  EXPECT_TRUE(p.head.keep_alive);
  EXPECT_EQ(p.head.head_bytes, data.size() - 4);
  // Views point into the caller's buffer: no copies.
  EXPECT_EQ(p.head.method.data(), data.data());
}

TEST(Http1Request, BodyFraming) {
  Parsed p = Req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kLength);
  EXPECT_EQ(p.head.content_length, 42u);

  p = Req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.body, BodyKind::kChunked);

  p = Req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.content_length, 7u);

  p = Req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4611686018427387904\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.content_length, uint64_t{1} << 62);
}

TEST(Http1Request, ExpectContinueAndUpgrade) {
  Parsed p = Req("PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_TRUE(p.head.expect_continue);
  // HTTP/1.0 clients do not wait for 100 Continue (RFC 9110 10.1.1).
  p = Req("PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_FALSE(p.head.expect_continue);

  p =
      Req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
          "Upgrade: websocket\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_TRUE(p.head.upgrade);
  p = Req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_FALSE(p.head.upgrade);
}

TEST(Http1Request, KeepAliveMatrix) {
  struct Case {
    const char* version;
    const char* connection;  // nullptr: no header
    bool keep_alive;
  };
  const Case cases[] = {
      {"1.1", nullptr, true},       {"1.1", "close", false},
      {"1.1", "keep-alive", true},  {"1.0", nullptr, false},
      {"1.0", "close", false},      {"1.0", "Keep-Alive", true},
      {"1.1", "foo, CLOSE", false}, {"1.0", "keep-alive, close", false},
  };
  for (const Case& c : cases) {
    std::string data = std::string("GET / HTTP/") + c.version + "\r\nHost: h\r\n";
    if (c.connection != nullptr) data += std::string("Connection: ") + c.connection + "\r\n";
    data += "\r\n";
    Parsed p = Req(data);
    ASSERT_EQ(p.st, ParseStatus::kComplete) << data;
    EXPECT_EQ(p.head.keep_alive, c.keep_alive) << data;
  }
}

TEST(Http1Request, TargetForms) {
  EXPECT_EQ(Req("GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n").st, ParseStatus::kComplete);
  EXPECT_EQ(Req("GET HTTPS://h/x HTTP/1.1\r\nHost: h\r\n\r\n").st, ParseStatus::kComplete);
  EXPECT_EQ(Req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").st, ParseStatus::kComplete);
  EXPECT_EQ(Req("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n").st, ParseStatus::kComplete);
  ExpectReqError("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET /\tHTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(Http1Request, RequestLineErrors) {
  ExpectReqError("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError(" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET /\r\n\r\n", 400);
  ExpectReqError("GET\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505);
  ExpectReqError("GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505);
  ExpectReqError("GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505);
  ExpectReqError("GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET / http/1.1\r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET / FOO\r\nHost: h\r\n\r\n", 400);
}

TEST(Http1Request, LeadingEmptyLinesAreSkipped) {
  std::string data = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
  Parsed p = Req(data);
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.head_bytes, data.size());
}

TEST(Http1Request, LineEndingsMustBeCrlf) {
  ExpectReqError("GET / HTTP/1.1\nHost: h\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\n\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400);
  // A bare LF is refused as soon as it arrives, not after the head would be complete.
  ExpectReqError("GET / HTTP/1.1\n", 400);
}

TEST(Http1Request, HeaderFieldErrors) {
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A : b\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A\t: b\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\tc\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX(A): b\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01z\r\n\r\n", 400);
  ExpectReqError(std::string_view("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0z\r\n\r\n", 38), 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fz\r\n\r\n", 400);
  // HT inside a value and obs-text are fine.
  Parsed p = Req("GET / HTTP/1.1\r\nHost: h\r\nX-A: \ta\tb\xc3\xa9 \r\nX-Empty:\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.Find("x-a"), "a\tb\xc3\xa9");
  EXPECT_TRUE(p.head.Has("X-Empty"));
  EXPECT_EQ(p.head.Find("X-Empty"), "");
}

// Every byte at every position of a long value: only HT, SP, VCHAR and obs-text pass.
TEST(Http1Request, ValueBytesEverywhere) {
  for (size_t at = 0; at < 21; ++at) {
    for (int byte = 0; byte < 256; ++byte) {
      std::string value(21, 'v');
      value[at] = static_cast<char>(byte);
      if (byte == '\r' || byte == '\n') continue;  // line structure, tested elsewhere
      std::string data = "GET / HTTP/1.1\r\nHost: h\r\nX: " + value + "\r\n\r\n";
      const bool allowed = byte == '\t' || (byte >= 0x20 && byte != 0x7f);
      Parsed p = Req(data);
      EXPECT_EQ(p.st == ParseStatus::kComplete, allowed) << at << " " << byte;
    }
  }
}

TEST(Http1Request, SmugglingFraming) {
  ExpectReqError(
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
  ExpectReqError(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4611686018427387905\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 501);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
  ExpectReqError(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
      "Transfer-Encoding: Chunked\r\n\r\n",
      400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400);
  ExpectReqError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(Http1Request, HostRules) {
  ExpectReqError("GET / HTTP/1.1\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
  ExpectReqError("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400);
  EXPECT_EQ(Req("GET / HTTP/1.0\r\n\r\n").st, ParseStatus::kComplete);
}

TEST(Http1Request, TooManyConnectionOptions) {
  std::string data = "GET / HTTP/1.1\r\nHost: h\r\nConnection: ";
  for (size_t i = 0; i <= kMaxConnectionTokens; ++i) data += "x" + std::to_string(i) + ",";
  data += "\r\n\r\n";
  ExpectReqError(data, 400);
}

TEST(Http1Request, Limits) {
  Limits limits;
  limits.max_head_bytes = 64;
  limits.max_headers = 2;
  std::string ok = "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n";
  EXPECT_EQ(Req(ok, limits).st, ParseStatus::kComplete);

  Parsed p = Req("GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nC: d\r\n\r\n", limits);
  EXPECT_EQ(p.st, ParseStatus::kError);
  EXPECT_EQ(p.err.status, 431);

  // A head exactly at the limit passes; one byte more is too large, complete or not.
  std::string exact = "GET / HTTP/1.1\r\nHost: h\r\nA: ";
  exact += std::string(64 - exact.size() - 4, 'x') + "\r\n\r\n";
  ASSERT_EQ(exact.size(), 64u);
  EXPECT_EQ(Req(exact, limits).st, ParseStatus::kComplete);
  std::string over = exact;
  over.insert(over.size() - 4, "x");
  p = Req(over, limits);
  EXPECT_EQ(p.st, ParseStatus::kError);
  EXPECT_EQ(p.err.status, 431);
  p = Req(over.substr(0, 64), limits);
  EXPECT_EQ(p.st, ParseStatus::kError);
  EXPECT_EQ(p.err.status, 431);
  EXPECT_EQ(Req(over.substr(0, 63), limits).st, ParseStatus::kIncomplete);

  // max_headers is capped at kMaxHeaders.
  limits = Limits{};
  limits.max_headers = 100000;
  std::string many = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (size_t i = 0; i < kMaxHeaders; ++i) many += "X: y\r\n";
  many += "\r\n";
  p = Req(many, limits);
  EXPECT_EQ(p.st, ParseStatus::kError);
  EXPECT_EQ(p.err.status, 431);
}

// Every prefix of a head is kIncomplete (or an error the full head also has), and the full head
// gives the same answer whatever came before.
TEST(Http1Request, SplitAtEveryByte) {
  const std::string heads[] = {
      "POST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 12\r\n"
      "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nExpect: 100-continue\r\n\r\n",
      "\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
  };
  for (const std::string& full : heads) {
    Parsed whole = Req(full);
    ASSERT_EQ(whole.st, ParseStatus::kComplete) << whole.err.message;
    for (size_t n = 0; n < full.size(); ++n) {
      EXPECT_EQ(Req(full.substr(0, n)).st, ParseStatus::kIncomplete) << n;
    }
    Parsed again = Req(full + "GET / HTTP/1.1\r\n");
    ASSERT_EQ(again.st, ParseStatus::kComplete);
    EXPECT_EQ(again.head.head_bytes, whole.head.head_bytes);
    EXPECT_EQ(again.head.headers.size(), whole.head.headers.size());
    EXPECT_EQ(again.head.content_length, whole.head.content_length);
    EXPECT_EQ(again.head.keep_alive, whole.head.keep_alive);
    EXPECT_EQ(again.head.expect_continue, whole.head.expect_continue);
  }
  // A bad head: each prefix is incomplete or already the same error.
  std::string bad = "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\nA: b\r\n\r\n";
  Parsed whole = Req(bad);
  ASSERT_EQ(whole.st, ParseStatus::kError);
  for (size_t n = 0; n < bad.size(); ++n) {
    Parsed p = Req(bad.substr(0, n));
    if (p.st == ParseStatus::kError) {
      EXPECT_EQ(p.err.message, whole.err.message) << n;
    }
  }
}

TEST(Http1Request, ReusedHeadIsReset) {
  RequestHead head;
  ParseError err;
  ASSERT_EQ(ParseRequestHead("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                             "Connection: close\r\n\r\n",
                             {}, &head, &err),
            ParseStatus::kComplete);
  const Header* storage = head.headers.data();
  ASSERT_EQ(ParseRequestHead("GET / HTTP/1.1\r\nHost: h\r\n\r\n", {}, &head, &err),
            ParseStatus::kComplete);
  EXPECT_EQ(head.headers.size(), 1u);
  EXPECT_EQ(head.body, BodyKind::kNone);
  EXPECT_EQ(head.content_length, 0u);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_EQ(head.headers.data(), storage);  // capacity kept: no allocation once warm
}

// Random bytes and mutated heads never crash and never claim more bytes than they were given.
TEST(Http1Request, RandomInputNeverCrashes) {
  std::mt19937 rng(12345);
  const std::string base =
      "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
      "Connection: close, X\r\n\r\n";
  const std::string alphabet =
      "\r\n :,;\t\x01\x7f"
      "aZ09/-HTTP.1chunked";
  RequestHead req;
  ResponseHead res;
  ParseError err;
  Limits limits;
  limits.max_head_bytes = 512;
  std::string data;
  for (int iter = 0; iter < 20000; ++iter) {
    data = base;
    const int mutations = 1 + static_cast<int>(rng() % 6);
    for (int m = 0; m < mutations; ++m) {
      const size_t at = rng() % data.size();
      switch (rng() % 3) {
        case 0:
          data[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          data.erase(at, 1 + rng() % 4);
          break;
        default:
          data.insert(at, 1, static_cast<char>(rng() % 256));
      }
      if (data.empty()) data = "x";
    }
    if (iter % 4 == 0) {
      data.resize(rng() % 600);
      for (char& c : data) c = static_cast<char>(rng() % 256);
    }
    if (ParseRequestHead(data, limits, &req, &err) == ParseStatus::kComplete) {
      EXPECT_LE(req.head_bytes, data.size());
      EXPECT_NE(req.body, BodyKind::kUntilClose);
    }
    if (ParseResponseHead(data, limits, false, &res, &err) == ParseStatus::kComplete) {
      EXPECT_LE(res.head_bytes, data.size());
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Responses

TEST(Http1Response, ParsesStatusLineAndFraming) {
  ParsedRes p = Res("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.status, 200);
  EXPECT_EQ(p.head.reason, "OK");
  EXPECT_EQ(p.head.body, BodyKind::kLength);
  EXPECT_EQ(p.head.content_length, 5u);
  EXPECT_TRUE(p.head.keep_alive);
  EXPECT_EQ(p.head.head_bytes, 38u);
  EXPECT_EQ(p.head.Find("content-length"), "5");

  p = Res("HTTP/1.1 404 Not Found Here\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.reason, "Not Found Here");
  EXPECT_EQ(p.head.body, BodyKind::kChunked);

  p = Res("HTTP/1.1 200\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.reason, "");
  EXPECT_EQ(p.head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(p.head.keep_alive);

  p = Res("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_FALSE(p.head.keep_alive);
  p = Res("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_TRUE(p.head.keep_alive);
  p = Res("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_FALSE(p.head.keep_alive);
}

TEST(Http1Response, BareLfTolerated) {
  ParsedRes p = Res("HTTP/1.1 200 OK\nContent-Length: 2\n\nhi");
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.head_bytes, 35u);
  EXPECT_EQ(p.head.content_length, 2u);
  p = Res("HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
}

TEST(Http1Response, NoBodyStatuses) {
  for (int status : {100, 101, 103, 204, 304}) {
    std::string data = "HTTP/1.1 " + std::to_string(status) +
                       " X\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n";
    ParsedRes p = Res(data);
    ASSERT_EQ(p.st, ParseStatus::kComplete) << status;
    EXPECT_EQ(p.head.body, BodyKind::kNone) << status;
    EXPECT_TRUE(p.head.keep_alive) << status;
  }
  ParsedRes p = Res("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", /*head_request=*/true);
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kNone);
  EXPECT_TRUE(p.head.keep_alive);
  p = Res("HTTP/1.1 200 OK\r\n\r\n", /*head_request=*/true);
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kNone);
  EXPECT_TRUE(p.head.keep_alive);
}

TEST(Http1Response, TransferEncodingRules) {
  ParsedRes p = Res("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kChunked);
  p = Res("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 10\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(p.head.keep_alive);
  p = Res("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.body, BodyKind::kChunked);
  EXPECT_FALSE(p.head.keep_alive);
  EXPECT_EQ(Res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n").st,
            ParseStatus::kError);
}

TEST(Http1Response, Errors) {
  const char* bad[] = {
      "HTTP/1.1 99 Low\r\n\r\n",
      "HTTP/1.1 600 High\r\n\r\n",
      "HTTP/1.1 20 Short\r\n\r\n",
      "HTTP/1.1 2000 Long\r\n\r\n",
      "HTTP/1.1 2x0 X\r\n\r\n",
      "HTTP/2.0 200 OK\r\n\r\n",
      "HTTP/1.1  200 OK\r\n\r\n",
      "ICY 200 OK\r\n\r\n",
      "HTTP/1.1 200 O\x01K\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
  };
  for (const char* data : bad) {
    ParsedRes p = Res(data);
    EXPECT_EQ(p.st, ParseStatus::kError) << data;
    EXPECT_EQ(p.err.status, 502) << data;
  }
  Limits limits;
  limits.max_head_bytes = 32;
  EXPECT_EQ(Res("HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaa", false, limits).st,
            ParseStatus::kError);
  EXPECT_EQ(Res("HTTP/1.1 200 OK\r\nX-Long: aaa", false, limits).st, ParseStatus::kIncomplete);
  limits = Limits{};
  limits.max_headers = 1;
  EXPECT_EQ(Res("HTTP/1.1 200 OK\r\nA: b\r\nC: d\r\n\r\n", false, limits).st, ParseStatus::kError);
}

TEST(Http1Response, SplitAtEveryByte) {
  const std::string full =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
  ParsedRes whole = Res(full);
  ASSERT_EQ(whole.st, ParseStatus::kComplete);
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_EQ(Res(full.substr(0, n)).st, ParseStatus::kIncomplete) << n;
  }
  ParsedRes again = Res(full + "5\r\nhello\r\n");
  ASSERT_EQ(again.st, ParseStatus::kComplete);
  EXPECT_EQ(again.head.head_bytes, full.size());
  EXPECT_EQ(again.head.body, BodyKind::kChunked);
}

// ----------------------------------------------------------------------------------------------
// Writers

std::string Upstream(std::string_view request, std::string_view ip = "10.0.0.9",
                     std::string_view host = "svc:8080") {
  Parsed p = Req(request);
  EXPECT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  std::string out = "prefix|";
  AppendUpstreamRequestHead(p.head, ip, host, &out);
  return out;
}

TEST(Http1Write, UpstreamRequestStripsHopByHop) {
  std::string out = Upstream(
      "POST /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, Upgrade\r\n"
      "Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X-T\r\n"
      "Upgrade: websocket\r\nx-secret: 1\r\nTransfer-Encoding: chunked\r\nX-Kept: 2\r\n\r\n");
  EXPECT_EQ(out,
            "prefix|POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Kept: 2\r\n"
            "X-Forwarded-For: 10.0.0.9\r\n\r\n");
  // The rewritten head parses again.
  Parsed p = Req(std::string_view(out).substr(7));
  ASSERT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  EXPECT_EQ(p.head.body, BodyKind::kChunked);
}

TEST(Http1Write, ConnectionCannotStripFraming) {
  std::string out = Upstream(
      "POST /p HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, Host, Transfer-Encoding\r\n"
      "Content-Length: 3\r\n\r\n");
  EXPECT_EQ(out,
            "prefix|POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            "X-Forwarded-For: 10.0.0.9\r\n\r\n");
}

TEST(Http1Write, ForwardedForAppended) {
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: h\r\n\r\n"),
            "prefix|GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nHost: h\r\n\r\n");
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: h\r\n"
                     "X-Forwarded-For: 2.2.2.2\r\n\r\n"),
            "prefix|GET / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: h\r\n"
            "X-Forwarded-For: 2.2.2.2, 10.0.0.9\r\n\r\n");
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\nX-Forwarded-For:\r\nHost: h\r\n\r\n"),
            "prefix|GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.9\r\nHost: h\r\n\r\n");
  // A client may not hide the chain by naming it in Connection: the new header carries the hop.
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\nConnection: X-Forwarded-For\r\n"
                     "X-Forwarded-For: 6.6.6.6\r\nHost: h\r\n\r\n"),
            "prefix|GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n");
}

TEST(Http1Write, HostAddedForHttp10) {
  EXPECT_EQ(Upstream("GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "::1", "up:80"),
            "prefix|GET /x HTTP/1.1\r\nX-Forwarded-For: ::1\r\nHost: up:80\r\n\r\n");
  EXPECT_EQ(Upstream("GET /x HTTP/1.0\r\nHost: mine\r\n\r\n", "::1", "up:80"),
            "prefix|GET /x HTTP/1.1\r\nHost: mine\r\nX-Forwarded-For: ::1\r\n\r\n");
}

std::string Client(std::string_view response, int minor, bool keep_alive) {
  ParsedRes p = Res(response);
  EXPECT_EQ(p.st, ParseStatus::kComplete) << p.err.message;
  std::string out;
  AppendClientResponseHead(p.head, minor, keep_alive, &out);
  return out;
}

TEST(Http1Write, ClientResponseKeepAliveMatrix) {
  const std::string res =
      "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
      "X-Hop: 1\r\nContent-Length: 2\r\n\r\n";
  EXPECT_EQ(Client(res, 1, true), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
  EXPECT_EQ(Client(res, 1, false),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(Client(res, 0, true),
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_EQ(Client(res, 0, false),
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
}

TEST(Http1Write, ClientResponseFraming) {
  EXPECT_EQ(
      Client("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n", 1, true),
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_EQ(Client("HTTP/1.0 204\nX: y\n\n", 1, true), "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n");
  EXPECT_EQ(Client("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", 1, true),
            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
}

TEST(Http1Write, ErrorResponse) {
  std::string out;
  AppendErrorResponse(503, "no healthy instance for service web", 1, false, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            "Content-Length: 36\r\nConnection: close\r\n\r\n"
            "no healthy instance for service web\n");
  ParsedRes p = Res(out);
  ASSERT_EQ(p.st, ParseStatus::kComplete);
  EXPECT_EQ(p.head.content_length, out.size() - p.head.head_bytes);

  out.clear();
  AppendErrorResponse(400, "bad", 0, true, &out);
  EXPECT_EQ(out,
            "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
            "Connection: keep-alive\r\n\r\nbad\n");
  out.clear();
  AppendErrorResponse(431, "", 1, true, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
            "Content-Length: 1\r\n\r\n\n");
}

TEST(Http1Write, ReasonAndIEquals) {
  EXPECT_EQ(ReasonPhrase(503), "Service Unavailable");
  EXPECT_EQ(ReasonPhrase(505), "HTTP Version Not Supported");
  EXPECT_EQ(ReasonPhrase(299), "Unknown");
  EXPECT_TRUE(IEquals("Content-Length", "content-LENGTH"));
  EXPECT_FALSE(IEquals("Content-Length", "Content-Lengt"));
  EXPECT_FALSE(IEquals("a", "b"));
  EXPECT_TRUE(IEquals("", ""));
  EXPECT_FALSE(IEquals("[", "{"));  // only letters fold
}

// ----------------------------------------------------------------------------------------------
// ChunkedScanner

struct ScanResult {
  bool ok = false;
  bool done = false;
  size_t consumed = 0;
  uint64_t body_bytes = 0;
  int error_status = 0;
};

ScanResult ScanAll(std::string_view data, uint64_t max_body = 1 << 20, size_t max_trailer = 256) {
  ChunkedScanner s(max_body, max_trailer);
  ScanResult r;
  Result<size_t> n = s.Feed(data);
  r.ok = n.ok();
  r.consumed = n.ok() ? *n : 0;
  r.done = s.done();
  r.body_bytes = s.body_bytes();
  r.error_status = s.error_status();
  return r;
}

ScanResult ScanBytewise(std::string_view data, uint64_t max_body = 1 << 20,
                        size_t max_trailer = 256) {
  ChunkedScanner s(max_body, max_trailer);
  ScanResult r;
  r.ok = true;
  for (char c : data) {
    Result<size_t> n = s.Feed(std::string_view(&c, 1));
    if (!n.ok()) {
      r.ok = false;
      break;
    }
    r.consumed += *n;
    if (s.done()) break;
  }
  r.done = s.done();
  r.body_bytes = s.body_bytes();
  r.error_status = s.error_status();
  return r;
}

void ExpectSameScan(std::string_view data, uint64_t max_body = 1 << 20, size_t max_trailer = 256) {
  ScanResult a = ScanAll(data, max_body, max_trailer);
  ScanResult b = ScanBytewise(data, max_body, max_trailer);
  EXPECT_EQ(a.ok, b.ok) << data;
  EXPECT_EQ(a.done, b.done) << data;
  EXPECT_EQ(a.body_bytes, b.body_bytes) << data;
  EXPECT_EQ(a.error_status, b.error_status) << data;
  if (a.ok) {
    EXPECT_EQ(a.consumed, b.consumed) << data;
  }
}

TEST(Http1Chunked, FindsTheEnd) {
  const std::string body =
      "5\r\nhello\r\n1A;name=value;x=\"q\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
      "0 ;last\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
  ScanResult r = ScanAll(body + "GET / HTTP/1.1\r\n");
  EXPECT_TRUE(r.ok);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, body.size());
  EXPECT_EQ(r.body_bytes, 31u);
  ExpectSameScan(body + "NEXT");
  ExpectSameScan("0\r\n\r\n");
  ExpectSameScan("000\r\n\r\n");
  ExpectSameScan("a\r\n0123456789\r\n0\r\n\r\n");
}

TEST(Http1Chunked, IncompleteConsumesEverything) {
  const std::string body = "5\r\nhello\r\n0\r\n\r\n";
  for (size_t n = 0; n < body.size(); ++n) {
    ScanResult r = ScanAll(body.substr(0, n));
    EXPECT_TRUE(r.ok);
    EXPECT_FALSE(r.done);
    EXPECT_EQ(r.consumed, n);
  }
  // After the end, nothing more is taken.
  ChunkedScanner s(100);
  ASSERT_TRUE(s.Feed(body).ok());
  ASSERT_TRUE(s.done());
  Result<size_t> more = s.Feed("xyz");
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(*more, 0u);
  s.Reset();
  EXPECT_FALSE(s.done());
  EXPECT_EQ(s.body_bytes(), 0u);
  ASSERT_TRUE(s.Feed("0\r\n\r\n").ok());
  EXPECT_TRUE(s.done());
}

TEST(Http1Chunked, Errors) {
  const char* bad[] = {
      "x\r\n",                    // not hex
      "\r\n",                     // no size
      ";ext\r\n",                 // no size
      "5\nhello\r\n",             // bare LF after size
      "5\r\nhelloX\r\n",          // data not followed by CRLF
      "5\r\nhello\r\r",           //
      "5\r\nhello\n0\r\n\r\n",    // bare LF after data
      "0\r\nX: y\n\r\n",          // bare LF in trailer
      "0\r\n\n",                  // bare LF at end
      "0\r\n X: folded\r\n\r\n",  // obs-fold in trailer
      "0\r\nX: \x01\r\n\r\n",     // control byte in trailer
      "5;a=\x01\r\nhello\r\n",    // control byte in extension
      "-5\r\n",                   //
      "0x5\r\n",                  //
      "11111111111111111\r\n",    // 17 hex digits
  };
  for (const char* data : bad) {
    ScanResult r = ScanAll(data);
    EXPECT_FALSE(r.ok) << data;
    EXPECT_EQ(r.error_status, 400) << data;
    ExpectSameScan(data);
  }
  // Sum of chunk sizes over the limit: 413, even before the data arrives.
  ScanResult r = ScanAll("8\r\n12345678\r\n3\r\n", 10);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error_status, 413);
  ExpectSameScan("8\r\n12345678\r\n3\r\n", 10);
  EXPECT_TRUE(ScanAll("8\r\n12345678\r\n2\r\nab\r\n0\r\n\r\n", 10).done);
  r = ScanAll("ffffffffffffffff\r\n");
  EXPECT_EQ(r.error_status, 413);
  // Trailers over their limit: 431.
  r = ScanAll("0\r\nX-Big: " + std::string(300, 'a') + "\r\n\r\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error_status, 431);
  // A size line that never ends is bounded.
  r = ScanAll("5;" + std::string(5000, 'e'));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error_status, 400);
}

TEST(Http1Chunked, ErrorIsSticky) {
  ChunkedScanner s(100);
  Result<size_t> r = s.Feed("zz\r\n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(s.Feed("0\r\n\r\n").ok());
  EXPECT_EQ(s.error_status(), 400);
  s.Reset();
  EXPECT_EQ(s.error_status(), 0);
  EXPECT_TRUE(s.Feed("0\r\n\r\n").ok());
  EXPECT_TRUE(s.done());
}

TEST(Http1Chunked, RandomSplitsAgree) {
  std::mt19937 rng(7);
  const std::string body =
      "4\r\nWiki\r\n5;foo=bar\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\nNEXT";
  const size_t end = body.size() - 4;
  for (int iter = 0; iter < 500; ++iter) {
    ChunkedScanner s(1000);
    size_t pos = 0, consumed = 0;
    while (pos < body.size() && !s.done()) {
      const size_t n = std::min(body.size() - pos, size_t{1} + rng() % 9);
      Result<size_t> r = s.Feed(std::string_view(body).substr(pos, n));
      ASSERT_TRUE(r.ok()) << r.status().message();
      consumed += *r;
      pos += n;
    }
    EXPECT_TRUE(s.done());
    EXPECT_EQ(consumed, end);
    EXPECT_EQ(s.body_bytes(), 23u);
  }
  // Random garbage never crashes and never claims more than it was given.
  for (int iter = 0; iter < 2000; ++iter) {
    std::string data(rng() % 64, '\0');
    for (char& c : data) c = "0123456789abcdefXx;=\r\n \t"[rng() % 25];
    ChunkedScanner s(1 << 20, 64);
    Result<size_t> r = s.Feed(data);
    if (r.ok()) {
      EXPECT_LE(*r, data.size());
    }
  }
}

}  // namespace
}  // namespace haven::proxy::http1
