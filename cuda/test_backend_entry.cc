// test_backend_entry.cc: loads libpolyview_cuda.so the way the core does
// (dlopen, RTLD_LOCAL) and checks its contract on any machine, GPU or not:
// one exported entry point, the ABI check, a table with every op filled,
// and device queries that return a status instead of crashing when there
// is no driver or no GPU. Usage: test_backend_entry <path to the library>.
// Prints "N passed, N failed" and exits non-zero on a failure.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "backend.h"

namespace {

std::string g_error;
int g_passed = 0, g_failed = 0;

void set_error(const char *msg) { g_error = msg ? msg : ""; }
void log_line(int, const char *msg) { std::printf("  log: %s\n", msg); }

void check(bool ok, const char *what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  (ok ? g_passed : g_failed)++;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <libpolyview_cuda.so>\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::printf("FAIL dlopen %s: %s\n0 passed, 1 failed\n", argv[1], dlerror());
    return 1;
  }
  auto entry = reinterpret_cast<pv_backend_entry_fn>(dlsym(lib, PV_BACKEND_ENTRY_SYMBOL));
  check(entry != nullptr, "exports pv_backend_entry");
  if (!entry) return 1;
  check(dlsym(lib, "cudaMalloc") == nullptr, "keeps the CUDA runtime's symbols hidden");

  const pv_host_services host = {set_error, log_line};
  pv_backend table;
  std::memset(&table, 0, sizeof table);
  check(entry(PV_ABI_VERSION + 1, &host, &table) == PV_ERR_INVALID_ARGUMENT &&
            g_error.find("ABI version") != std::string::npos,
        "refuses another ABI version, saying so");

  check(entry(PV_ABI_VERSION, &host, &table) == PV_OK, "accepts its ABI version");
  check(table.abi_version == PV_ABI_VERSION && table.name && std::strcmp(table.name, "cuda") == 0,
        "names itself cuda with the right version");
  check(table.device_count && table.device_init && table.device_release && table.synchronize &&
            table.memory && table.reset_peak && table.alloc && table.free && table.copy_h2d &&
            table.copy_d2h && table.copy_d2d && table.loss && table.augment,
        "fills every op it implements (copies, loss, augment)");
#ifdef POLYVIEW_TEST_NN
  check(table.conv2d_forward && table.conv2d_backward && table.batchnorm_forward &&
            table.batchnorm_backward && table.batchnorm_stats &&
            table.batchnorm_forward_stats && table.batchnorm_backward_stats &&
            table.batchnorm_backward_input && table.relu_forward && table.relu_backward &&
            table.maxpool_forward && table.maxpool_backward && table.avgpool_forward &&
            table.avgpool_backward && table.add && table.linear_forward &&
            table.linear_backward && table.optimizer_step,
        "fills every encoder op (built with cuDNN)");
#endif
#ifdef POLYVIEW_TEST_COMM
  check(table.comm_unique_id && table.comm_init && table.comm_all_reduce &&
            table.comm_all_gather && table.comm_broadcast && table.comm_abort &&
            table.comm_destroy,
        "fills every collective (built with NCCL)");
  // An id needs NCCL and a network interface (loopback will do), no GPU:
  // this runs NCCL code on every machine that builds the library.
  {
    uint8_t id[PV_COMM_ID_BYTES] = {};
    g_error.clear();
    pv_status st = table.comm_unique_id(nullptr, id);
    bool nonzero = false;
    for (uint8_t b : id) nonzero = nonzero || b != 0;
    std::printf("  comm_unique_id: status %d %s\n", st, g_error.c_str());
    check(st == PV_OK && nonzero, "makes an NCCL unique id");
  }
#endif

  int count = -1;
  g_error.clear();
  pv_status st = table.device_count(&count);
  std::printf("  device_count: status %d, %d GPUs (%s)\n", st, count, g_error.c_str());
  check((st == PV_OK && count >= 0) || (st == PV_ERR_UNAVAILABLE && count == 0),
        "counts devices without crashing");
  if (st == PV_OK && count == 0) {
    void *ctx = nullptr;
    char name[160] = "";
    g_error.clear();
    st = table.device_init(0, &ctx, name, sizeof name);
    std::printf("  device_init(0) without a GPU: status %d: %s\n", st, g_error.c_str());
    check(st == PV_ERR_UNAVAILABLE && !g_error.empty() && ctx == nullptr,
          "fails to open a missing GPU with a message");
  }
  if (st == PV_OK && count > 0) {
    void *ctx = nullptr;
    char name[160] = "";
    st = table.device_init(0, &ctx, name, sizeof name);
    std::printf("  device_init(0): status %d, %s %s\n", st, name, g_error.c_str());
    check(st == PV_OK && ctx != nullptr && name[0] != 0, "opens GPU 0 and names it");
    if (st == PV_OK) {
      void *p = nullptr;
      int64_t in_use = -1, peak = -1;
      check(table.alloc(ctx, 1 << 20, &p) == PV_OK && p, "allocates 1 MiB");
      check(table.memory(ctx, &in_use, &peak) == PV_OK && in_use == (1 << 20) &&
                peak >= in_use,
            "counts the allocation");
      unsigned char out[16] = {}, in[16];
      for (int i = 0; i < 16; i++) in[i] = (unsigned char)(3 * i + 1);
      check(table.copy_h2d(ctx, p, in, 16) == PV_OK && table.copy_d2h(ctx, out, p, 16) == PV_OK &&
                std::memcmp(in, out, 16) == 0,
            "copies bytes there and back");
      unsigned char moved[8] = {};
      char *bytes = static_cast<char *>(p);
      check(table.copy_d2d(ctx, bytes + 8, bytes, 8) == PV_OK &&
                table.copy_d2h(ctx, moved, bytes + 8, 8) == PV_OK &&
                std::memcmp(moved, in, 8) == 0,
            "copies bytes within the device");
      table.free(ctx, p);
      check(table.memory(ctx, &in_use, &peak) == PV_OK && in_use == 0 && peak == (1 << 20),
            "frees it and keeps the peak");
      check(table.synchronize(ctx) == PV_OK, "synchronizes");
      table.device_release(ctx);
    }
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
