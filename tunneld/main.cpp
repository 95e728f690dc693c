// main.cpp: dynmx-tunneld, the delivery daemon. Only wiring: see daemon.hpp for the contract.
#include "tunneld/daemon.hpp"

int main(int argc, char** argv) {
  return dynmx::tunneld::tunneldMain(argc, argv);
}
