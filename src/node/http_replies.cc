#include "node/http_replies.h"

namespace haven::node {

int HttpCode(const Status& s) {
  switch (s.code()) {
    case Code::kOk:
      return 200;
    case Code::kInvalidArgument:
      return 400;
    case Code::kPermissionDenied:
      return 403;
    case Code::kNotFound:
      return 404;
    case Code::kMethodNotAllowed:
      return 405;
    case Code::kConflict:
      return 409;
    case Code::kTooLarge:
      return 413;
    case Code::kUnavailable:
      return 503;
    case Code::kIoError:
    case Code::kInternal:
      return 500;
  }
  return 500;
}

net::HttpResponse Text(int status, std::string body) {
  net::HttpResponse r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  if (!body.empty() && body.back() != '\n') body += '\n';
  r.body = std::move(body);
  return r;
}

net::HttpResponse Error(const Status& s) { return Text(HttpCode(s), s.message()); }

}  // namespace haven::node
