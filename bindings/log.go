package bindings

/*
#include "polyview.h"
void pvLogBridge(int level, const char *msg, void *user);
*/
import "C"

import (
	"context"
	"log/slog"
	"sync/atomic"
)

var logger atomic.Pointer[slog.Logger]

// SetLogger routes the C library's log lines (both backends) to l. The C
// side has one process-wide callback, so the last logger set wins; nil
// drops the lines.
func SetLogger(l *slog.Logger) {
	logger.Store(l)
	if l == nil {
		C.pv_set_log_callback(nil, nil)
		return
	}
	C.pv_set_log_callback(C.pv_log_fn(C.pvLogBridge), nil)
}

//export pvGoLog
func pvGoLog(level C.int, msg *C.char) {
	l := logger.Load()
	if l == nil {
		return
	}
	lv := slog.LevelInfo
	switch level {
	case C.PV_LOG_DEBUG:
		lv = slog.LevelDebug
	case C.PV_LOG_WARN:
		lv = slog.LevelWarn
	case C.PV_LOG_ERROR:
		lv = slog.LevelError
	}
	l.Log(context.Background(), lv, C.GoString(msg), "source", "polyview-c")
}
