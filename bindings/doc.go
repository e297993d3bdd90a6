// Package bindings is polyview's Go layer over its C ABI (csrc/polyview.h):
// devices, tensors and ops, with C status codes returned as *Error values.
//
// The CPU backend is compiled into every binary. The CUDA backend is a
// shared library built by CMake and loaded at run time (see LoadCUDA and
// Open), so one binary serves machines with and without a GPU.
//
// A loss evaluation on the CPU:
//
//	dev, _ := bindings.Open("cpu")
//	defer dev.Close()
//	h, _ := dev.FromFloat32(data, n, m, d) // [N, M, d], sample-major
//	defer h.Close()
//	grad, _ := dev.NewTensor(bindings.Float32, n, m, d)
//	defer grad.Close()
//	loss := bindings.Loss{Objective: bindings.GPVC, Tau: 0.2}
//	value, err := loss.ForwardBackward(h, grad)
package bindings

/*
#cgo CFLAGS: -I${SRCDIR}/../csrc
#include "polyview.h"
*/
import "C"

import (
	"runtime"

	_ "github.com/polyview/polyview/csrc" // the C ABI and CPU backend
)

// call runs one C call on a locked OS thread and turns its status into an
// error, reading the thread-local message before the thread can change.
func call(op string, f func() C.pv_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.PV_OK {
		return nil
	}
	return &Error{Op: op, Code: Status(st), Msg: C.GoString(C.pv_last_error())}
}
