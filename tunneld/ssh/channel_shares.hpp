// channel_shares.hpp: how many SMTP channels each client may hold when [tunneld] max_channels
// caps the total across every client and connection, and when a client opens one more SSH
// connection (pure policies, plus the tally the connections report to).
//
// Contract: every connection (SshClient) reports after each change the channels it holds open
// (any state: they hold a session at the far end until they are gone), how many of them go on
// taking jobs ("keeping"), and whether it would open one more now (mail due, under its own
// limits). A client's demand is its keeping channels, plus one when a connection of it wants
// one more; the cap is shared out max-min fair (fairShares): a client that asks for little gets
// all of it, the rest is split equally among the others, and an idle client's part goes to those
// that have mail. A connection opens a channel only while the total is under the cap and its
// client under its share (mayOpen); a client above its share stops taking jobs on that many
// channels and closes them when their transactions end (excess). So the cap is never exceeded,
// and one client's backlog holds a small client's new message back only until one session of the
// big client has ended the transactions it has open.
// Failure behaviour: none (pure bookkeeping); a connection that goes reports nothing more
// (forget()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dynmx::tunneld {

// Pure: max-min fair shares of `cap` among `demands` (same order). Each demand d gets min(d, L)
// with the level L as high as the cap allows; what integer division leaves over goes one each to
// the unsatisfied demands in index order, rotated by `turn` (modulo their number), so that a
// caller that advances `turn` now and then lets each have the extra channel in turn. With cap 0 (no
// cap) every demand is met.
std::vector<size_t> fairShares(size_t cap, const std::vector<size_t>& demands, size_t turn = 0);

// Pure: one more SSH connection for a client? Only when each of its `connections` is up and
// `saturated` (every channel it may run is working and mail is still due), none is being set up,
// it has fewer than `max_connections`, and the cap leaves the client a channel (`may_open`).
bool wantAnotherConnection(size_t connections, size_t saturated, size_t setting_up,
                           uint32_t max_connections, bool may_open);

class ChannelShares {
 public:
  explicit ChannelShares(size_t cap = 0) : cap_(cap) {}
  void setCap(size_t cap);
  size_t cap() const { return cap_; }
  // The channels left over by an even split go to the next clients in turn (fairShares' `turn`).
  void rotate();

  // One connection's tally (`conn` identifies it; `client` its client's name).
  void report(const void* conn, const std::string& client, size_t open, size_t keeping, bool wants);
  void forget(const void* conn);

  size_t open() const;                           // every channel, every client
  size_t open(const std::string& client) const;  // the client's, all its connections
  // The channels the client may hold now (SIZE_MAX without a cap).
  size_t share(const std::string& client) const;
  // May a connection of `client` open one more channel now?
  bool mayOpen(const std::string& client) const;
  // Keeping channels of the client above its share: that many must stop taking jobs.
  size_t excess(const std::string& client) const;
  // A channel was freed while some client waited for one, or a client began to wait: the
  // connections should be stepped (to open, or to give channels back). Clears the flag.
  bool takeWake();

 private:
  struct Tally {
    std::string client;
    size_t open = 0;
    size_t keeping = 0;
    bool wants = false;
  };
  struct ClientSum {
    size_t open = 0;
    size_t keeping = 0;
    bool wants = false;
    size_t share = 0;
  };
  const std::map<std::string, ClientSum>& sums() const;
  size_t blocked() const;  // clients that want a channel and may not open one

  size_t cap_;
  size_t turn_ = 0;
  std::map<const void*, Tally> conns_;
  mutable std::map<std::string, ClientSum> sums_;
  mutable size_t total_ = 0;  // open channels of every connection (with sums_)
  mutable bool dirty_ = true;
  bool wake_ = false;
};

}  // namespace dynmx::tunneld
