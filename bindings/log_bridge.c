// log_bridge.c: the C function installed as polyview's log callback; it
// forwards each line to the Go logger (pvGoLog in log.go).
#include "_cgo_export.h"

void pvLogBridge(int level, const char *msg, void *user) {
  (void)user;
  pvGoLog(level, (char *)msg);
}
