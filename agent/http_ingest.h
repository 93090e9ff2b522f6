// The agent's local HTTP ingest: where the store's systems post observations.
//
//   POST /v1/observations   one JSON object or an array of them
//       200 {"accepted":N,"rejected":[]}                  every item accepted
//       400 {"accepted":N,"rejected":[{"index":I,"reason":"..."}]}
//           some items refused; the valid ones are stored all the same, so a
//           writer must not resend them
//       400 {"error":"malformed JSON: ..."}               nothing stored
//       413 body over the limit, 405 wrong method, 404 unknown path
//       507 {"error":"spool full: ..."}                   nothing stored; retry later
//       503 {"error":"..."}                                shutting down; nothing stored
//   A POST may carry `Idempotency-Key: K` (1..255 printable ASCII): the answer
//   to the first request with K that reached the spool (200 or 400) is
//   remembered for the spool's idempotency window, and a retry with K gets
//   it again (header `Idempotent-Replayed: true`) without storing anything.
//   Items with an `id` already spooled or recently delivered are accepted
//   again and not stored twice.
//   POST /v1/checklists     one checklist submission or an array of them
//       (checklists.h): each passed or failed item becomes a compliance
//       observation; answers as above, "accepted" counting submissions.
//   POST /v1/price_checks   one shelf/POS/list price check or an array
//       (price_check.h); answers as above, "accepted" counting checks.
//   POST /v1/tickets        one queue event or an array (tickets.h), applied
//       in order; answers as above, "accepted" counting events (repeated
//       events and unknown tickets are accepted and change nothing, so a
//       retried request is harmless; Idempotency-Key is accepted and not
//       needed). 404 when the agent has no ticket tracker.
//   GET /healthz            200 {"status":"ok","location":...,"spool_depth":N}
//
// Who may post. POST bodies must be sent as `Content-Type: application/json`
// (415 otherwise: a web page can send text/plain across origins without
// asking). Every request must name the agent in `Host` as the listen host,
// localhost, 127.0.0.1 or [::1] (or a name in allowed_hosts) with the
// listen port, and a request with an `Origin` header must come from such
// an origin (http://HOST:PORT): 403 otherwise, which stops web pages open
// on the store's machine (CSRF, DNS rebinding). A request without Host or
// Origin (curl, store systems) is taken. An `Idempotency-Key` is bound to
// its endpoint and body: the same key with another body or on another
// endpoint is 422 naming the key.
//
// Slow clients: headers and body must arrive within request_timeout; each
// connection holds one of `threads` workers meanwhile, so many idle sockets
// (up to threads - 1) leave a valid POST answered at once.
//
// A 2xx or 400-with-accepted answer is sent only after the accepted items are
// in the spool. Listens on loopback by default (store systems run on the same
// server); civetweb serves requests on its own worker threads.
//
// HttpIngest owns the server. `spool` and `metrics` must outlive it, and
// `on_appended` must be safe to call from any thread until Stop() returns.
// Thread-safe.
#ifndef CONSTANCE_AGENT_HTTP_INGEST_H_
#define CONSTANCE_AGENT_HTTP_INGEST_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/metrics.h"
#include "agent/spool.h"
#include "constance/validate.h"

namespace constance::agent {

class TicketTracker;

struct HttpIngestOptions {
  // HOST:PORT; port 0 picks a free port (read it back with port()).
  std::string listen = "127.0.0.1:8080";
  size_t max_body_bytes = 4 << 20;
  // civetweb worker threads: connections served at once.
  int threads = 64;
  // Headers and body must arrive within this time.
  absl::Duration request_timeout = absl::Seconds(10);
  // Host names accepted in Host and Origin besides the listen host,
  // localhost, 127.0.0.1 and [::1] (lower case, no port).
  std::vector<std::string> allowed_hosts;
  Limits limits;
  // The most a request may ask for with a Max-Lateness header (`400d`,
  // sent by `constance-agent import` for a mapping with max_lateness): the
  // largest max_lateness of the agent's own drop_directory.files, so an
  // import is judged as the same file dropped would be. Zero: none allowed
  // beyond limits.max_lateness. Observations only; queue events keep the
  // tracker's limits.
  absl::Duration max_requested_lateness = absl::ZeroDuration();
  // Reported by /healthz.
  std::string location;
  // Where /v1/tickets events go; must outlive the HttpIngest. Null: no
  // /v1/tickets.
  TicketTracker* tickets = nullptr;
};

class HttpIngest {
 public:
  // Called after each successful append with the last sequence appended, so
  // the sender learns about new data without polling the spool.
  using AppendedCallback = std::function<void(uint64_t last_sequence)>;

  // Starts serving. Unavailable (with civetweb's reason) if it cannot listen.
  static absl::StatusOr<std::unique_ptr<HttpIngest>> Start(HttpIngestOptions options, Spool* spool,
                                                           AgentMetrics* metrics,
                                                           AppendedCallback on_appended);
  ~HttpIngest();
  HttpIngest(const HttpIngest&) = delete;
  HttpIngest& operator=(const HttpIngest&) = delete;

  // The port actually listened on.
  int port() const;

  // Changes the largest accepted body from the next request on (reload).
  void SetMaxBodyBytes(size_t max_body_bytes);

  // Refuses further observations (503) and waits until no request is
  // between parsing and appending, so that nothing reaches the spool after
  // it returns. Fast (no network wait). Idempotent.
  void Close();

  // Close(), then stops the server and waits for its threads. civetweb
  // notices a stop only when its accept poll times out, so this can take up
  // to about 2 s. Idempotent; the destructor calls it.
  void Stop();

  // Opaque server state, defined in the .cc (public only so that civetweb's
  // C callbacks there can name it).
  struct Impl;

 private:
  explicit HttpIngest(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_HTTP_INGEST_H_
