// sysexits.hpp: the exit codes sendmail and Postfix understand from a mailer or pipe program.
#pragma once

#include <sysexits.h>

namespace dynmx {
inline constexpr int kExitOk = EX_OK;
inline constexpr int kExitUsage = EX_USAGE;
inline constexpr int kExitDataErr = EX_DATAERR;
inline constexpr int kExitNoUser = EX_NOUSER;
inline constexpr int kExitSoftware = EX_SOFTWARE;
inline constexpr int kExitOsErr = EX_OSERR;
inline constexpr int kExitCantCreat = EX_CANTCREAT;
inline constexpr int kExitIoErr = EX_IOERR;
inline constexpr int kExitTempFail = EX_TEMPFAIL;
inline constexpr int kExitNoPerm = EX_NOPERM;
inline constexpr int kExitConfig = EX_CONFIG;
}  // namespace dynmx
