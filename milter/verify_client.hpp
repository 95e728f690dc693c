// verify_client.hpp: dynmx-milter's question to dynmx-tunneld: is this recipient one the client's
// own MTA takes?
//
// Contract: askTunneld() connects to the admin socket (tunneld.control_socket), sends
// "verify CLIENT ADDRESS" and reads the one answer line (shared/verify_reply.hpp). It never waits
// longer than `timeout` in all (connect, send, answer). The socket must admit the milter's user:
// root, dynmx-tunneld's own user (the package runs both daemons as dynmx) or tunneld.control_group.
// Failure behaviour: any failure (no daemon, refused, timed out, an answer that does not parse, an
// ERR reply) is an "unknown" answer with source "none" and the reason in `reply`, so that the
// client's verify_default decides; nothing throws.
#pragma once

#include <chrono>
#include <string>

#include "shared/verify_reply.hpp"

namespace dynmx::milter {

VerifyAnswer askTunneld(const std::string& socket_path, const std::string& client,
                        const std::string& address, std::chrono::milliseconds timeout);

}  // namespace dynmx::milter
