// enqueue.cpp: dynmx-enqueue's work (see enqueue.hpp). The main program only wires this up.
#include "milter/enqueue.hpp"

#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <map>
#include <memory>
#include <optional>

#include "shared/crlf.hpp"
#include "shared/log.hpp"
#include "shared/recipient_list.hpp"
#include "shared/routing.hpp"
#include "shared/spool.hpp"
#include "shared/storage_limits.hpp"
#include "shared/sysexits.hpp"

namespace dynmx {

EnqueueArgs parseEnqueueArgs(const std::vector<std::string>& args) {
  EnqueueArgs a;
  bool have_sender = false;
  auto usage = [&](std::string why) {
    a.exit_code = kExitUsage;
    a.reason = std::move(why) +
               "; usage: " + std::string(kEnqueueUsage);
    return a;
  };
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& s = args[i];
    auto value = [&](const char* opt) -> const std::string* {
      if (i + 1 >= args.size()) return nullptr;
      (void)opt;
      return &args[++i];
    };
    if (s == "--") {
      ++i;
      break;
    } else if (s == "-c" || s == "--config") {
      auto v = value("-c");
      if (!v) return usage("-c needs a file");
      a.config_path = *v;
    } else if (s == "-f") {
      auto v = value("-f");
      if (!v) return usage("-f needs a sender (use \"<>\" or \"\" for the null sender)");
      a.req.sender = *v;
      have_sender = true;
    } else if (s == "--client") {
      auto v = value("--client");
      if (!v) return usage("--client needs a client name");
      a.req.client = *v;
    } else if (s == "--queue-id") {
      auto v = value("--queue-id");
      if (!v) return usage("--queue-id needs a value");
      a.req.queue_id = *v;
    } else if (s == "--check-config") {
      a.check_config = true;
    } else if (s == "-h" || s == "--help") {
      a.help = true;
      return a;
    } else if (s == "--version") {
      a.version = true;
      return a;
    } else if (!s.empty() && s[0] == '-') {
      return usage("unknown option " + s);
    } else {
      break;  // recipients without "--"
    }
  }
  for (; i < args.size(); ++i) a.req.recipients.push_back(args[i]);
  if (a.check_config) return a;
  if (!have_sender) return usage("-f SENDER is required");
  if (a.req.recipients.empty()) return usage("no recipients");
  return a;
}

namespace {

struct Target {
  std::unique_ptr<MessageWriter> writer;
  Envelope env;
};

EnqueueResult fail(int code, std::string reason) {
  EnqueueResult r;
  r.exit_code = code;
  r.reason = std::move(reason);
  return r;
}

using ByClient = std::map<std::string, std::vector<std::string>>;

// The clients' recipient lists: an unlisted address of a client's domains is EX_NOUSER, an
// unreadable list EX_TEMPFAIL (with --client, addresses outside its domains are not looked up).
std::optional<EnqueueResult> checkRecipientLists(const Config& cfg, const Router& router,
                                                 const ByClient& by_client) {
  for (const auto& [name, rcpts] : by_client) {
    std::unique_ptr<RecipientTable> table = makeRecipientTable(*cfg.findClient(name));
    for (const std::string& rcpt : rcpts) {
      auto idx = router.route(rcpt);
      if (!table || !idx || router.clientName(*idx) != name) continue;
      std::string why;
      switch (table->lookup(rcpt, &why)) {
        case RecipientTable::Answer::Listed:
          break;
        case RecipientTable::Answer::Unlisted:
          return fail(kExitNoUser, "<" + rcpt + ">: Recipient address rejected: User unknown (not "
                                       "in client " + name + "'s recipient list)");
        case RecipientTable::Answer::Unavailable:
          return fail(kExitTempFail,
                      "<" + rcpt + ">: Temporary lookup failure: " + why.substr(0, why.find('\n')));
      }
    }
  }
  return std::nullopt;
}

// Routes every recipient (or gives them all to --client); a failure names the first that has none.
std::optional<EnqueueResult> routeRecipients(const Config& cfg, const EnqueueRequest& req,
                                             ByClient& by_client) {
  Router router(cfg.clients);
  for (const auto& raw : req.recipients) {
    std::string rcpt = bareAddress(raw);
    if (rcpt.empty()) return fail(kExitNoUser, "empty recipient address");
    if (!req.client.empty()) {
      if (!cfg.findClient(req.client))
        return fail(kExitConfig, "--client " + req.client + ": no such client in " + cfg.path);
      by_client[req.client].push_back(rcpt);
      continue;
    }
    auto idx = router.route(rcpt);
    if (!idx) {
      std::string dom = addressDomain(rcpt);
      return fail(kExitNoUser, "<" + rcpt + ">: " +
                                   (dom.empty() ? std::string("address has no domain")
                                                : "no client claims domain " + dom) +
                                   " in " + cfg.path);
    }
    by_client[router.clientName(*idx)].push_back(rcpt);
  }
  return checkRecipientLists(cfg, router, by_client);
}

// Streams the input into every file; a failing write discards them all (the writers'
// destructors). `total` is the number of bytes written to each.
std::optional<EnqueueResult> copyInput(const Config& cfg, int input_fd,
                                       std::vector<Target>& targets, uint64_t& total) {
  CrlfNormalizer norm;
  std::string out;
  std::string buf(65536, '\0');
  for (bool eof = false; !eof;) {
    ssize_t n = ::read(input_fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(kExitIoErr, sysError(errno, "read standard input").message);
    }
    out.clear();
    if (n == 0) {
      eof = true;
      norm.finish(out);
    } else {
      norm.feed(std::string_view(buf.data(), static_cast<size_t>(n)), out);
    }
    total += out.size();
    if (total > cfg.spool.max_message_size)
      return fail(kExitDataErr, "message larger than spool.max_message_size (" +
                                    std::to_string(cfg.spool.max_message_size) + " bytes)");
    for (auto& t : targets)
      if (auto st = t.writer->write(out); !st) return fail(kExitTempFail, st.error().message);
  }
  return std::nullopt;
}

// The storage limits (shared/storage_limits.hpp): spool.min_free, and each client's queue limits
// when `with_quota` (before the copy; after it only the space is asked again). EX_TEMPFAIL, so
// that the MTA keeps the message and tries again once delivery has made room.
std::optional<EnqueueResult> storageRefusal(const Config& cfg, const Spool& spool,
                                            const ByClient& by_client, bool with_quota) {
  if (auto r = checkSpace(cfg.spool, freeBytes(spool.dir()), 0))
    return fail(kExitTempFail, r->code + " " + r->xcode + " " + r->text + ": " + r->why);
  if (!with_quota) return std::nullopt;
  std::optional<SpoolUsage> usage;
  for (const auto& [name, rcpts] : by_client) {
    const ClientConfig* c = cfg.findClient(name);
    if (!c || (!c->max_queue_messages && !c->max_queue_bytes)) continue;
    if (!usage) usage.emplace(spool, std::chrono::milliseconds(0));
    if (auto r = checkClientQuota(*c, usage->of(name)))
      return fail(kExitTempFail, r->code + " " + r->xcode + " " + r->text + ": " + r->why);
  }
  return std::nullopt;
}

}  // namespace

EnqueueResult enqueueMessage(const Config& cfg, const EnqueueRequest& req, int input_fd) {
  std::string sender = bareAddress(req.sender);
  const std::string qid = req.queue_id.empty() ? std::string("NOQUEUE") : req.queue_id;

  // Route every recipient first: nothing is written unless all of them have a client.
  ByClient by_client;
  if (auto failed = routeRecipients(cfg, req, by_client)) return std::move(*failed);

  Spool spool(cfg.spool.dir);
  // Creates missing state directories (the MTA may run us before any daemon ever ran).
  if (auto st = spool.prepareExisting(); !st) return fail(kExitTempFail, st.error().message);
  if (auto refused = storageRefusal(cfg, spool, by_client, true)) return std::move(*refused);

  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  std::vector<Target> targets;
  for (auto& [client, rcpts] : by_client) {
    auto w = spool.create();
    if (!w) return fail(kExitTempFail, w.error().message);
    Target t;
    t.writer = std::move(w.value());
    t.env.client = client;
    t.env.sender = sender;
    t.env.mta_queue_id = req.queue_id;
    t.env.origin = "dynmx-enqueue";
    t.env.arrival = now;
    for (auto& r : rcpts) {
      SpoolRecipient sr;
      sr.address = r;
      t.env.rcpts.push_back(std::move(sr));
    }
    targets.push_back(std::move(t));
  }

  uint64_t total = 0;
  if (auto failed = copyInput(cfg, input_fd, targets, total)) return std::move(*failed);
  if (auto refused = storageRefusal(cfg, spool, by_client, false)) return std::move(*refused);

  EnqueueResult result;
  for (size_t i = 0; i < targets.size(); ++i) {
    auto& t = targets[i];
    std::string id = t.writer->id();
    if (auto st = t.writer->commit(t.env); !st) {
      for (const auto& done : result.spool_ids)
        logf(LogLevel::Warning, "%s: spool=%s committed before a later failure: possible duplicate when retried",
             qid.c_str(), done.c_str());
      return fail(kExitTempFail, st.error().message);
    }
    result.spool_ids.push_back(id);
    for (const auto& r : t.env.rcpts)
      logf(LogLevel::Info, "%s: enqueue: from=<%s>, to=<%s>, client=%s, spool=%s, size=%llu",
           qid.c_str(), sender.c_str(), r.address.c_str(), t.env.client.c_str(), id.c_str(),
           static_cast<unsigned long long>(total));
  }
  return result;
}

}  // namespace dynmx
