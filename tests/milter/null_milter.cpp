// null_milter.cpp: a milter that does nothing, for tests/bench/milter_bench.
//
// It asks for every stage dynmx-milter uses (connect, MAIL, RCPT, DATA, headers, body, end of
// message) and answers "continue" to each, so that the benchmark compares dynmx-milter's work
// against the cost of the milter protocol itself.
//   null-milter unix:/path/to/socket
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <libmilter/mfapi.h>
#include <string>

namespace {
sfsistat cont(SMFICTX*) {
  return SMFIS_CONTINUE;
}
sfsistat contConnect(SMFICTX*, char*, _SOCK_ADDR*) {
  return SMFIS_CONTINUE;
}
sfsistat contArgv(SMFICTX*, char**) {
  return SMFIS_CONTINUE;
}
sfsistat contHeader(SMFICTX*, char*, char*) {
  return SMFIS_CONTINUE;
}
sfsistat contBody(SMFICTX*, unsigned char*, size_t) {
  return SMFIS_CONTINUE;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: null-milter unix:/path\n");
    return 64;
  }
  static struct smfiDesc desc = {const_cast<char*>("null-milter"),
                                 SMFI_VERSION,
                                 0,
                                 contConnect,
                                 nullptr,
                                 contArgv,
                                 contArgv,
                                 contHeader,
                                 cont,
                                 contBody,
                                 cont,
                                 cont,
                                 cont,
                                 nullptr,
                                 cont,
                                 nullptr};
  std::string conn = argv[1];
  if (conn.rfind("unix:", 0) == 0) unlink(conn.c_str() + 5);
  if (smfi_setconn(conn.data()) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS ||
      smfi_opensocket(true) != MI_SUCCESS) {
    std::fprintf(stderr, "null-milter: cannot listen on %s\n", argv[1]);
    return 73;
  }
  return smfi_main() == MI_SUCCESS ? 0 : 70;
}
