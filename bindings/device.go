package bindings

/*
#include <stdlib.h>
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// CUDALibraryName is the file name of the CUDA backend that CMake builds.
const CUDALibraryName = "libpolyview_cuda.so"

// CUDALibraryEnv names the environment variable that points at the CUDA
// backend library, overriding the search of FindCUDALibrary.
const CUDALibraryEnv = "POLYVIEW_CUDA_LIB"

// Device is a backend bound to one processor: the CPU or one GPU. A Device
// is safe for concurrent use; Close it when done.
type Device struct {
	ptr  *C.pv_device
	kind string
	once sync.Once
}

// LoadCUDA opens the CUDA backend library at path. It returns an *Error
// with StatusUnavailable, carrying the loader's message, when the library
// is missing or one of its CUDA dependencies does not load.
func LoadCUDA(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return call("load CUDA backend", func() C.pv_status { return C.pv_cuda_load(cpath) })
}

// CUDALoaded reports whether a CUDA backend library is loaded.
func CUDALoaded() bool { return C.pv_cuda_loaded() != 0 }

// CUDADeviceCount is the number of GPUs the loaded CUDA backend sees.
func CUDADeviceCount() (int, error) {
	var n C.int
	err := call("count CUDA devices", func() C.pv_status { return C.pv_cuda_device_count(&n) })
	return int(n), err
}

// FindCUDALibrary returns the first CUDA backend library found, in this
// order: $POLYVIEW_CUDA_LIB, next to the executable, then build/ in the
// working directory, its parents and the module's source tree (where
// CMake puts it). The second result is false when none exists.
func FindCUDALibrary() (string, bool) {
	if p := os.Getenv(CUDALibraryEnv); p != "" {
		return p, true
	}
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, filepath.Join(d, "build"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "..", "build"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, CUDALibraryName)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	return "", false
}

var autoNote sync.Once

// Open opens a device from a spec: "cpu"; "cuda" or "cuda:N" for GPU N,
// which fails with an error saying what is missing; or "auto" (and ""),
// which takes GPU 0 when a CUDA backend and a GPU are there and otherwise
// the CPU, saying so once through log.
func Open(spec string, log *slog.Logger) (*Device, error) {
	switch s := strings.ToLower(strings.TrimSpace(spec)); {
	case s == "cpu":
		return openDevice(C.PV_DEVICE_CPU, 0, "cpu")
	case s == "cuda" || strings.HasPrefix(s, "cuda:"):
		idx := 0
		if s != "cuda" {
			n, err := strconv.Atoi(strings.TrimPrefix(s, "cuda:"))
			if err != nil || n < 0 {
				return nil, fmt.Errorf("device %q: GPU index must be a number >= 0", spec)
			}
			idx = n
		}
		if err := ensureCUDA(); err != nil {
			return nil, fmt.Errorf("device %q: %w", spec, err)
		}
		return openDevice(C.PV_DEVICE_CUDA, idx, s)
	case s == "auto" || s == "":
		why := ensureCUDA()
		if why == nil {
			n, err := CUDADeviceCount()
			if err == nil && n > 0 {
				return openDevice(C.PV_DEVICE_CUDA, 0, "cuda:0")
			}
			why = err
			if why == nil {
				why = fmt.Errorf("the CUDA backend sees no GPU")
			}
		}
		dev, err := openDevice(C.PV_DEVICE_CPU, 0, "cpu")
		if err == nil && log != nil {
			autoNote.Do(func() {
				log.Info("no CUDA backend or GPU found; running on the CPU", "reason", why.Error())
			})
		}
		return dev, err
	default:
		return nil, fmt.Errorf("device %q: want auto, cpu, cuda or cuda:N", spec)
	}
}

// ensureCUDA loads the CUDA backend from FindCUDALibrary's answer.
func ensureCUDA() error {
	if CUDALoaded() {
		return nil
	}
	path, ok := FindCUDALibrary()
	if !ok {
		return fmt.Errorf("no CUDA backend library: build it with CMake " +
			"(cmake -B build && cmake --build build) or set " + CUDALibraryEnv)
	}
	return LoadCUDA(path)
}

func openDevice(kind C.pv_device_kind, index int, name string) (*Device, error) {
	d := &Device{kind: name}
	err := call("open device "+name, func() C.pv_status {
		return C.pv_device_open(kind, C.int(index), &d.ptr)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Close releases the device. Tensors on it must be closed first.
func (d *Device) Close() {
	d.once.Do(func() { C.pv_device_close(d.ptr) })
}

// Name is a readable description, e.g. "cpu (2 threads, avx2+fma)".
func (d *Device) Name() string { return C.GoString(C.pv_device_name(d.ptr)) }

// IsCUDA reports whether the device is a GPU.
func (d *Device) IsCUDA() bool { return C.pv_device_get_kind(d.ptr) == C.PV_DEVICE_CUDA }

// HasOps reports whether the device's backend implements a family of ops:
// "loss", "augment" or "encoder" (every layer op and the optimizer step).
func (d *Device) HasOps(family string) bool {
	c := C.CString(family)
	defer C.free(unsafe.Pointer(c))
	return C.pv_device_has_ops(d.ptr, c) != 0
}

// Synchronize waits for the work queued on the device.
func (d *Device) Synchronize() error {
	return call("synchronize "+d.kind, func() C.pv_status { return C.pv_device_synchronize(d.ptr) })
}

// Memory returns the bytes the device's backend holds now and at most
// since the last ResetPeak (op workspaces included).
func (d *Device) Memory() (inUse, peak int64, err error) {
	var u, p C.int64_t
	err = call("device memory", func() C.pv_status { return C.pv_device_memory(d.ptr, &u, &p) })
	return int64(u), int64(p), err
}

// ResetPeak starts a new high-water mark for Memory.
func (d *Device) ResetPeak() error {
	return call("reset peak memory", func() C.pv_status { return C.pv_device_reset_peak(d.ptr) })
}

// SetCPUThreads sets the threads one CPU op uses; 0 means all hardware
// threads. It applies process-wide.
func SetCPUThreads(n int) error {
	return call("set CPU threads", func() C.pv_status { return C.pv_cpu_set_threads(C.int(n)) })
}

// CPUThreads is the number of threads one CPU op uses.
func CPUThreads() int { return int(C.pv_cpu_threads()) }

// SetProfiling starts (true) or stops a profiler's capture on the device:
// cudaProfilerStart/Stop on a GPU, nothing on the CPU.
func (d *Device) SetProfiling(on bool) error {
	v := C.int(0)
	if on {
		v = 1
	}
	return call("profiler", func() C.pv_status { return C.pv_profiler_set(d.ptr, v) })
}

// Range opens a named range on the profiler's timeline (NVTX on a GPU)
// and returns the function that closes it: defer dev.Range("forward")().
func (d *Device) Range(name string) func() {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if C.pv_range_push(d.ptr, cname) != C.PV_OK {
		return func() {}
	}
	return func() { C.pv_range_pop(d.ptr) }
}
