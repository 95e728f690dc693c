// stale_socket.hpp: what a daemon does with a Unix socket path before it binds there.
//
// Contract: clearStaleSocket(path, label, listener) leaves `path` free for bind(2) or says why
// it cannot: nothing there is fine; a socket nobody listens on (connect refused: left by a crash)
// is removed and the removal logged; a socket that accepts means another daemon runs there, and
// anything that is not a socket is never touched (the path is wrong). `label` begins every message
// ("control_socket /run/dynmx/tunneld.sock"); `listener` names who would be listening
// ("dynmx-tunneld").
// Failure behaviour: returns an Error naming the path and the cause; the caller does not start.
#pragma once

#include <string>

#include "shared/result.hpp"

namespace dynmx {

Status clearStaleSocket(const std::string& path, const std::string& label,
                        const std::string& listener);

}  // namespace dynmx
