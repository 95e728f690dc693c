// filter.hpp: the libmilter side of dynmx-milter: callbacks, negotiation and the shared state
// they read.
//
// Contract: install() is called once before smfi_main() with the spool and the first snapshot;
// setSnapshot() swaps in a reloaded configuration at any time (connections in progress keep the
// snapshot their message started with). Every callback runs through one wrapper that turns an
// exception into SMFIS_TEMPFAIL (or, with on_error = "accept", lets the mail pass) and a log line:
// nothing ever unwinds into libmilter.
//
// Stopping: closeGate() makes every later callback return at once (tempfail where the stage has a
// reply) without touching its connection; waitIdle() waits for the callbacks already running (an
// end of message finishes its spool commit); discardOpenMessages() then removes the temporary
// files of messages still in the middle of their DATA, so that exiting leaves nothing half-written.
#pragma once

#include <chrono>
#include <cstddef>
#include <libmilter/mfapi.h>
#include <memory>

#include "milter/session.hpp"
#include "shared/spool.hpp"

namespace dynmx::milter {

// The filter description handed to smfi_register (name "dynmx-milter").
struct smfiDesc& filterDescription();

// Shared state of the callbacks. The spool lives as long as the process.
void install(Spool* spool, std::shared_ptr<const Snapshot> snap);
void setSnapshot(std::shared_ptr<const Snapshot> snap);
std::shared_ptr<const Snapshot> currentSnapshot();

// Stopping (see above); main() calls them in this order from its signal thread, then exits.
void closeGate();
// Returns false when callbacks were still running at `deadline` (it keeps waiting when asked to).
bool waitIdle(std::chrono::steady_clock::time_point deadline);
void waitIdle();
size_t discardOpenMessages();

// The macros requested from the MTA per stage (smfi_setsymlist), also used in the man page.
inline constexpr const char* kConnectMacros = "j {daemon_name} {client_addr}";
inline constexpr const char* kEnvfromMacros = "i {mail_addr}";
inline constexpr const char* kEnvrcptMacros = "i {rcpt_addr} {rcpt_mailer}";
inline constexpr const char* kDataMacros = "i";
inline constexpr const char* kEohMacros = "i";
inline constexpr const char* kEomMacros = "i";

}  // namespace dynmx::milter
