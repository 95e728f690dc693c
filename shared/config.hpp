// config.hpp: the one configuration of every dynmx program, loaded from one TOML file.
//
// Contract: loadConfig() turns the file into plain, validated structs or into a list of every error
// found, each naming file:line:col, the key path and what was expected. Unknown keys, wrong types,
// bad durations, sizes and socket specs, duplicate client names, a domain claimed by two clients and
// an identity file readable by group or others are errors. Every key has an embedded default, so an
// empty file is a valid configuration (with no clients). Nothing here opens sockets or starts work.
//
// Every section is two types: its *Startup part holds the keys read once at start-up (sockets,
// users, the spool directory, programs started with the daemon), which a reload cannot change;
// its *Reloadable part holds the rest. A reload takes the new file through planReload(), which
// keeps every Startup part as running, so no daemon copies keys back by hand and no key can be
// "needs a restart" in the log while the code already uses the new value.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/inet_addr.hpp"

namespace dynmx {

using Seconds = std::chrono::seconds;

inline constexpr const char* kDefaultConfigPath = "/etc/dynmx/dynmx.toml";

// Where a value came from, for messages that point into the file.
struct SourceLoc {
  std::string file;
  uint32_t line = 0;
  uint32_t col = 0;
};

struct ConfigError {
  SourceLoc where;
  std::string key;      // full key path, e.g. "client[2].domains[0]" or "tunneld.keepalive"
  std::string message;  // what was wrong and what was expected
  // "file:line:col: key: message" (line:col omitted when unknown, e.g. for a missing file)
  std::string str() const;
};

// A milter socket as sendmail and libmilter spell it: "unix:/path" or "local:/path" (same thing),
// "inet:port@host", "inet6:port@host". `text` is the libmilter form ("unix:/path", ...).
struct SocketSpec {
  enum class Kind { Unix, Inet, Inet6 };
  Kind kind = Kind::Unix;
  std::string path;  // Unix
  std::string host;  // Inet/Inet6; may be empty meaning any address
  uint16_t port = 0;
  std::string text;
};

// Parses a socket spec; on error returns nullopt and sets *why to what was expected.
std::optional<SocketSpec> parseSocketSpec(std::string_view s, std::string* why);
// "30s", "5m", "2h", "5d", "1w", and sums such as "1h30m". Returns nullopt when malformed.
std::optional<Seconds> parseDuration(std::string_view s);
// "50M", "512K", "1G", "1000" (bytes); K/M/G are powers of 1024. nullopt when malformed/overflow.
std::optional<uint64_t> parseSize(std::string_view s);
// The inverse of parseDuration, for messages and status output: 5400s -> "1h30m", 0 -> "0s".
std::string formatDuration(Seconds d);

enum class OnError { Tempfail, Accept };

// ---- [spool]
struct SpoolStartup {
  std::string dir = "/var/spool/dynmx";
};
struct SpoolReloadable {
  uint64_t max_message_size = 50ull * 1024 * 1024;  // a message in progress keeps its limit
  // Free space (bytes) the spool's file system keeps: below it new mail for clients is tempfailed
  // (452 4.3.1). Unset: 1.5 x max_message_size, Postfix's floor (minFreeThreshold in
  // shared/storage_limits.hpp); 0: no check.
  std::optional<uint64_t> min_free;
};
struct SpoolConfig : SpoolStartup, SpoolReloadable {};

// ---- [milter]
struct MilterStartup {
  SocketSpec socket;  // default unix:/run/dynmx/milter.sock
  mode_t socket_mode = 0660;
  std::string socket_group;  // empty: leave the group as created
  std::string user;          // empty: do not change user
};
struct MilterReloadable {
  OnError on_error = OnError::Tempfail;
};
struct MilterConfig : MilterStartup, MilterReloadable {};

// Retry and lifetime policy; [tunneld] holds the defaults, a [[client]] may override each key.
struct RetryPolicy {
  Seconds retry_min{300};
  Seconds retry_max{4000};
  Seconds queue_lifetime{5 * 86400};
  Seconds delay_warning{4 * 3600};  // 0 disables delay warnings
};

// ---- [tunneld]
// An address and port to listen on, "127.0.0.1:9187" or "[::1]:9187" (inet_pton forms only).
struct ListenAddress {
  InetAddr addr;
  uint16_t port = 0;
  static std::optional<ListenAddress> parse(std::string_view text);
  std::string str() const;  // as parse() takes it
  bool operator==(const ListenAddress&) const = default;
};

struct TunneldStartup {
  std::string control_socket = "/run/dynmx/tunneld.sock";
  std::string control_group;  // empty: leave the group as created
  mode_t control_mode = 0660;
  std::string user;      // empty: do not change user
  std::string pid_file;  // empty: none
  // argv prefix for bounces; the bounce sender is built with it at start-up
  std::vector<std::string> sendmail = {"/usr/sbin/sendmail"};
  // HTTP endpoint for a Prometheus scrape (GET /metrics); unset: none.
  std::optional<ListenAddress> metrics_listen;
};
struct TunneldReloadable {
  std::string identity = "/etc/dynmx/id_ed25519";  // private key used for every client by default
  // Key rotation: identity = ["NEW", "OLD"] puts NEW in identity (tried first) and OLD here
  // (tried when NEW is refused); "" when identity names one key.
  std::string identity_old;
  std::string known_hosts = "/etc/dynmx/known_hosts";
  Seconds keepalive{30};
  Seconds connect_timeout{30};
  Seconds reconnect_min{5};
  Seconds reconnect_max{600};
  RetryPolicy retry;
  Seconds idle_close{60};            // QUIT an idle SMTP session after this; SSH stays up
  uint32_t max_transactions = 1000;  // per SMTP session, then QUIT and start a new one
  // SMTP channels open at once across every client and connection (fair shares when reached);
  // 0: no cap
  uint32_t max_channels = 64;
  std::string bounce_from = "MAILER-DAEMON";  // header From: of bounces (envelope is always <>)
  std::string remote_command = "/usr/sbin/sendmail -bs";  // exec request; authorized_keys forces it
  std::string hostname;  // EHLO name and bounce host; empty: the system's (hostNameOr)
};
struct TunneldConfig : TunneldStartup, TunneldReloadable {};

// [relay]: leases that let the MTA on this host relay for a client's current address, and the
// socketmap server the MTA asks (man/dynmx-relay.7). A reload applies the lease settings
// (lease_grace, lease_lifetime, revoke_hold, mx_addresses, checkin_user) and every client's
// relay and relay_networks; the socket, its mode and group, user and lease_file need a restart.
struct RelayStartup {
  std::string socket = "/run/dynmx/relay.sock";  // the socketmap server's Unix socket
  mode_t socket_mode = 0660;
  std::string socket_group;  // empty: leave the group as created
  std::string user;          // the socketmap process's user; empty: the daemon's own
  std::string lease_file = "/var/lib/dynmx/leases";  // where leases survive a restart
};
struct RelayReloadable {
  Seconds lease_grace{120};            // a tunnel lease outlives its connection this long
  Seconds lease_lifetime{1200};        // a check-in lease lasts this long after the last check-in
  Seconds revoke_hold{3600};           // dynmxctl revoke holds the address down this long
  std::vector<InetAddr> mx_addresses;  // this MX's addresses as clients see them (behind NAT)
  // The account whose authorized_keys runs dynmx-checkin: on the admin socket it may check in
  // and nothing else. Empty: no check-in account (only root and the daemon's user check in).
  std::string checkin_user;
};
struct RelayConfig : RelayStartup, RelayReloadable {};

// ---- [[client]]: every key of a client is reloadable (a changed client reconnects).
struct ClientConfig {
  std::string name;
  std::string host;
  uint16_t port = 22;
  std::string user = "dynmx";
  std::vector<std::string> domains;  // lower case; ".example.org" means every subdomain of it
  std::string host_key;  // "" | "ssh-ed25519 AAAA..." (pinned line) | "SHA256:base64"
  std::string identity;  // "" means [tunneld] identity
  std::string identity_old;  // the second key of identity = ["NEW", "OLD"]; "" when none
  uint32_t concurrency = 8;  // SMTP channels per SSH connection, at most
  // SSH connections while a backlog fills the open ones; one when idle
  uint32_t max_connections = 2;
  RetryPolicy retry;  // [tunneld] values unless overridden
  bool relay = false;                       // may hold relay leases ([relay])
  std::vector<InetNetwork> relay_networks;  // leases only inside these; empty: anywhere
  // Envelope senders allowed for mail relayed from this client's leased addresses (checked by
  // dynmx-milter): its own domains and these, "user@example.org" or "@example.org", lower case.
  // nullopt: no check (the key left out or false); true in the file: the client's domains only.
  std::optional<std::vector<std::string>> relay_senders;
  uint64_t max_queue_messages = 0;  // spool files of this client before new mail waits; 0: no limit
  uint64_t max_queue_bytes = 0;     // their bytes on disk before new mail waits; 0: no limit
  // The recipients it accepts (shared/recipient_list.hpp): "user@domain" or "@domain", lower case,
  // plus the entries of recipient_file (absolute path, "" none). Neither: every address.
  std::vector<std::string> recipients;
  std::string recipient_file;
  // Verification through the tunnel (dynmx-milter asks dynmx-tunneld, which asks the client's MTA).
  bool verify_recipients = false;
  OnError verify_default = OnError::Accept;  // when no answer comes: Accept, or Tempfail (450)
  Seconds verify_positive_ttl{24 * 3600};    // a valid answer is kept this long
  Seconds verify_negative_ttl{30 * 60};      // an invalid one this long
  Seconds verify_timeout{5};                 // the milter waits at most this long at RCPT
  SourceLoc loc;      // where the [[client]] table starts

  bool hasRecipientList() const { return !recipients.empty() || !recipient_file.empty(); }

  // The private key this client logs in with: its own identity, else [tunneld] identity.
  const std::string& identityFile(const TunneldConfig& t) const {
    return identity.empty() ? t.identity : identity;
  }
  // Every key this client may log in with, in the order they are tried: the client's own
  // identity (one or two keys), else [tunneld] identity's.
  std::vector<std::string> identityFiles(const TunneldConfig& t) const {
    const std::string& first = identity.empty() ? t.identity : identity;
    const std::string& old = identity.empty() ? t.identity_old : identity_old;
    if (old.empty()) return {first};
    return {first, old};
  }
};

struct Config {
  std::string path;  // the file it was loaded from
  SpoolConfig spool;
  MilterConfig milter;
  TunneldConfig tunneld;
  RelayConfig relay;
  std::vector<ClientConfig> clients;

  const ClientConfig* findClient(std::string_view name) const;
};

// Which program loads the file: each checks what it needs (tunneld: the identity file exists and
// is private, every client can be verified by host_key or by an existing known_hosts file).
enum class ConfigRole { Any, Enqueue, Milter, Tunneld };

struct LoadResult {
  std::optional<Config> config;     // set only when errors is empty
  std::vector<ConfigError> errors;  // every error found, in file order
};

LoadResult loadConfig(const std::string& path, ConfigRole role = ConfigRole::Any);
// Same, from text already in memory; `path` is used in messages (and for relative-path checks).
LoadResult parseConfig(std::string_view text, const std::string& path,
                       ConfigRole role = ConfigRole::Any);

// A reload: the configuration to run with from now on (the new file, with every Startup part kept
// as running) and the key paths that changed, in file order: `taken` are in effect now
// ("spool.max_message_size", "client beta added", "client home: host, port"), `waiting` need a
// restart ("spool.dir"). Only keys the role's program reads are listed (ConfigRole::Any: all).
struct ReloadPlan {
  Config config;
  std::vector<std::string> taken;
  std::vector<std::string> waiting;
};
ReloadPlan planReload(const Config& running, Config next, ConfigRole role);

// "a, b, c", for log lines about a ReloadPlan.
std::string joinKeys(const std::vector<std::string>& keys);

// The restart-only keys that differ between two configs, e.g. {"spool.dir", "milter.socket"}:
// planReload(running, next, ConfigRole::Any).waiting.
std::vector<std::string> restartOnlyDifferences(const Config& running, const Config& next);

}  // namespace dynmx

namespace dynmx {
// The --check-config behaviour every program shares: prints "config OK" to `out` (exit 0) or every
// error, one per line, to `err` (exit 78, EX_CONFIG).
int checkConfigCommand(const std::string& path, ConfigRole role, std::FILE* out, std::FILE* err);
}  // namespace dynmx
